"""``cmacc bench sampler``: one modality's active selection, several ways, side by side.

  materialised  gradient embeddings N x (M*d) written out, k-means++ over them (BADGE before 2023)
  factorised    the plain-PyTorch reference: rank-1 factors, exact factorised distances
  numba         the CPU fast path: fused rounds with exact pruning (cmacc.sampling.cpu)
  triton        the fused kernels (CUDA only; the CPU interpreter is for tests, not timing)
  badge_numpy   peer: BADGE's factorised init_centers in numpy, inverse-CDF draws (cmacc.bench.peers)
  sklearn       peer: scikit-learn's kmeans_plusplus over the keys (the "feature" embedding)

Each selection = pseudo-posterior + ``num`` (= M) seeding rounds, fp32 maths. cmacc's rows get
the same Exp(1) noise, and the table says whether they picked the same indices; inside training
``select`` draws that noise itself, so its time is measured too and reported with each cmacc
row (the peers draw their own). Times are medians over ``repeats`` after a warm-up, with the
device synchronised, at each torch / numba thread count asked for. "GB/s" divides a traffic
model (bytes a straightforward implementation must move, below) by the time; the device's
bandwidth is measured with a large copy in the same run.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .. import sampling
from ..system import provenance
from ..system.allocator import keep_freed_memory
from . import peers
from ..sampling import exp_noise, gradient_embeddings, gradient_factors, kmeanspp

IMPLS = ("materialised", "factorised", "numba", "triton", "badge_numpy", "sklearn")
OURS = ("materialised", "factorised", "numba", "triton")  # same noise, same picks
SWEEP = (4800, 9600, 19200, 38400, 76800, 153600)  # --sweep: pool sizes N


def traffic_bytes(impl: str, N: int, M: int, d: int, num: int) -> int:
    """Bytes moved per selection (fp32), the floor any implementation of that form must stream.

    factorised / triton: read keys (N d) and write the factor a (N M) once; every round reads
      a, b (N (M + d)), s, D^2, E, the mask (~4 N) and writes D^2 (N).
    materialised: write G (N M d) once, read it every round (N M d), plus the same N-vectors.
    numba (lazy rounds): keys and a once, one full pass over a, b (the first D^2 round), then per
      round only the N-vectors of the bounds (stale D^2, E: 8 N bytes, the mask: N) -- the rows it
      brings up to date are a handful and not counted.
    """
    vec = 5 * N
    if impl == "materialised":
        return 4 * (N * d + N * M * d + num * (N * M * d + vec))
    if impl == "numba":
        return 4 * (N * d + N * M + N * (M + d)) + num * 9 * N
    return 4 * (N * d + N * M + num * (N * (M + d) + vec))


def device_bandwidth(device: torch.device, nbytes: int = 1 << 28) -> float:
    """Measured copy bandwidth in GB/s (read + write counted)."""
    n = nbytes // 4
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    times = []
    for _ in range(5):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / min(times) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run(impl: str, keys, queries, num, noise):
    if impl == "materialised":
        return kmeanspp(num, noise, x=gradient_embeddings(keys, queries))
    if impl == "badge_numpy":
        a, b = gradient_factors(keys, queries)
        return torch.from_numpy(peers.badge_numpy(a.numpy(), b.numpy(), num, np.random.default_rng(0)))
    if impl == "sklearn":
        return torch.from_numpy(peers.sklearn_kmeanspp(keys.float().numpy(), num, 0))
    backend = {"factorised": "torch", "numba": "numba", "triton": "triton"}[impl]
    return sampling.select(keys, queries, num, embedding="gradient", noise=noise, backend=backend)


def set_threads(n: int) -> None:
    """torch's and numba's thread counts (the sampler's CPU paths use one or the other)."""
    torch.set_num_threads(n)
    try:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass


def _timed(f, dev: torch.device, repeats: int) -> tuple[object, list[float]]:
    out = f()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        out = f()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return out, times


def _unavailable(impl: str, dev: torch.device, N: int, M: int, d: int) -> str | None:
    if impl == "triton":
        ok, why = sampling._triton_available(dev) if dev.type == "cuda" else (False, "needs a CUDA device")
        return None if ok else why
    if impl in ("numba", "badge_numpy", "sklearn") and dev.type != "cpu":
        return "CPU only"
    if impl == "numba" and not sampling.cpu.available()[0]:
        return sampling.cpu.available()[1]
    if impl == "materialised" and N * M * d * 4 > 0.5 * _free_bytes(dev):
        return f"N x M*d embeddings need {N * M * d * 4 / 1e9:.1f} GB"
    return None


def bench_sampler(device: str = "cpu", N: int = 4800, M: int = 128, d: int = 128, num: int | None = None,
                  dtype: str = "fp32", repeats: int = 3, impls: tuple[str, ...] = IMPLS, seed: int = 0,
                  threads: tuple[int, ...] = (1,)) -> list[dict]:
    dev = torch.device(device)
    num = M if num is None else num
    tdt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    g = torch.Generator(device=dev).manual_seed(seed)
    keys = F.normalize(torch.randn(N, d, device=dev, generator=g), dim=1).to(tdt)
    queries = F.normalize(torch.randn(M, d, device=dev, generator=g), dim=1).to(tdt)
    noise = exp_noise(num, N, generator=g, device=dev)
    bw = device_bandwidth(dev)
    prov = provenance.collect(dev)
    allocator = keep_freed_memory()  # as training does: every row runs without per-call page faults
    rows = []
    for n_threads in threads:
        set_threads(n_threads)
        _, noise_times = _timed(lambda: exp_noise(num, N, generator=g, device=dev), dev, repeats)
        noise_s = statistics.median(noise_times)
        group, picks = [], {}
        for impl in impls:
            row = {"bench": "sampler", "impl": impl, "device": str(dev), "device_name": prov["device_name"],
                   "threads": n_threads, "N": N, "M": M, "d": d, "num": num, "dtype": dtype, "repeats": repeats,
                   "device_copy_gbps": bw, "allocator": allocator, "versions": prov["versions"],
                   "git": prov["git"]}
            why = _unavailable(impl, dev, N, M, d)
            if why:
                group.append({**row, "skipped": why})
                continue
            out, times = _timed(lambda: _run(impl, keys, queries, num, noise), dev, repeats)
            t = statistics.median(times)
            row.update(time_s=t, times_s=times, candidates_per_s=N / t)
            if impl in OURS:
                picks[impl] = out.cpu()
                nbytes = traffic_bytes(impl, N, M, d, num)
                row.update(noise_s=noise_s, time_with_noise_s=t + noise_s, traffic_bytes=nbytes,
                           gbps=nbytes / t / 1e9, fraction_of_copy_bw=nbytes / t / 1e9 / bw)
            group.append(row)
        _compare(group, picks)
        rows += group
    return rows


def _compare(rows: list[dict], picks: dict) -> None:
    """Speed-ups between the timed rows of one thread count; picks against the reference."""
    timed = {r["impl"]: r for r in rows if "time_s" in r}
    ref = picks.get("factorised")
    for r in timed.values():
        for other, o in timed.items():
            if other != r["impl"]:
                r[f"speedup_vs_{other}"] = o["time_s"] / r["time_s"]
        if ref is not None and r["impl"] in picks:
            r["same_picks_as_factorised"] = bool(torch.equal(picks[r["impl"]], ref))


def _free_bytes(dev: torch.device) -> float:
    if dev.type == "cuda":
        return float(torch.cuda.mem_get_info(dev)[0])
    try:
        import os
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        return 8e9


def format_table(rows: list[dict]) -> str:
    r0 = rows[0]
    head = (f"sampler: one modality, N={r0['N']} M={r0['M']} d={r0['d']} rounds={r0['num']} {r0['dtype']} "
            f"on {r0['device_name'].split(' (')[0]} (copy bandwidth {r0['device_copy_gbps']:.0f} GB/s)")
    lines = [head]
    for n_threads in dict.fromkeys(r["threads"] for r in rows):
        group = [r for r in rows if r["threads"] == n_threads]
        noise = next((r["noise_s"] for r in group if "noise_s" in r), None)
        lines.append(f"{n_threads} thread(s)" + (f"; drawing the noise inside select adds {1e3 * noise:.1f} ms "
                                                 "to cmacc's rows" if noise is not None else ""))
        lines.append(f"{'impl':<13}{'ms/selection':>14}{'Mcand/s':>10}{'GB/s':>9}{'% copy bw':>11}  speedups / picks")
        for r in group:
            lines.append(_format_row(r))
    return "\n".join(lines)


def _format_row(r: dict) -> str:
    if "skipped" in r:
        return f"{r['impl']:<13}  skipped: {r['skipped']}"
    sp = ", ".join(f"{v:.1f}x vs {k[11:]}" if v >= 1 else f"{v:.3f}x vs {k[11:]}"
                   for k, v in r.items() if k.startswith("speedup_vs_"))
    same = "" if "same_picks_as_factorised" not in r else (
        "; same picks" if r["same_picks_as_factorised"] else "; DIFFERENT picks")
    bw = f"{r['gbps']:>9.1f}{100 * r['fraction_of_copy_bw']:>10.1f}%" if "gbps" in r else f"{'-':>9}{'-':>11}"
    return f"{r['impl']:<13}{1e3 * r['time_s']:>14.2f}{r['candidates_per_s'] / 1e6:>10.3f}{bw}  {sp}{same}"


def _check_sizes(args) -> str | None:
    """The first impossible size among --pool, --batch, --dim, --rounds, --repeats, named."""
    rounds = args.batch if args.rounds is None else args.rounds
    for flag, value, low in (("--pool", args.pool, 1), ("--batch", args.batch, 1), ("--dim", args.dim, 1),
                             ("--rounds", rounds, 1), ("--repeats", args.repeats, 1)):
        if value < low:
            return f"{flag} must be >= {low}, got {value}"
    if rounds > args.pool:
        return (f"--rounds {rounds} (default: --batch) distinct picks cannot come from --pool {args.pool} "
                f"candidates; use --pool >= {rounds}")
    return None


def plot_sweep(rows: list[dict], path: Path) -> None:
    """Time per selection vs N (log-log), one line per implementation and thread count, against
    the memory floor: the factorised traffic model over the measured copy bandwidth."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    timed = [r for r in rows if "time_s" in r]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for impl, n_threads in dict.fromkeys((r["impl"], r["threads"]) for r in timed):
        pts = sorted((r["N"], r["time_s"]) for r in timed if (r["impl"], r["threads"]) == (impl, n_threads))
        ax.plot(*zip(*pts), marker="o", label=f"{impl} ({n_threads} thr)")
    r0 = rows[0]
    sizes = sorted({r["N"] for r in rows})
    floor = [traffic_bytes("factorised", n, r0["M"], r0["d"], r0["num"]) / (r0["device_copy_gbps"] * 1e9)
             for n in sizes]
    ax.plot(sizes, floor, "k--", label="eager rounds' memory floor (traffic / copy bandwidth)")
    ax.set(xscale="log", yscale="log", xlabel="pool size N", ylabel="seconds per selection",
           title=f"one selection, M={r0['M']} d={r0['d']}, {r0['device_name'].split(' (')[0]}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args) -> int:
    impls = tuple(args.impl.split(",")) if args.impl else IMPLS
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        print(f"error: --impl {','.join(bad)}: choose from {','.join(IMPLS)}", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    problem = _check_sizes(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        threads = tuple(int(t) for t in str(args.threads).split(","))
    except ValueError:
        threads = (0,)
    if min(threads) < 1:
        print(f"error: --threads must be a comma list of counts >= 1, got {args.threads!r}", file=sys.stderr)
        return 2
    sizes = SWEEP if args.sweep else (args.pool,)
    rows = []
    for n in sizes:
        rows += bench_sampler(args.device, n, args.batch, args.dim, args.rounds, args.dtype, args.repeats, impls,
                              threads=threads)
        print(format_table([r for r in rows if r["N"] == n]), flush=True)
    if args.json:
        path = Path(args.json)
        with open(path, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(f"appended {len(rows)} rows to {path}")
    if args.sweep:
        plot = Path(args.plot or "sampler_sweep.png")
        plot_sweep(rows, plot)
        print(f"wrote {plot}")
    return 0
