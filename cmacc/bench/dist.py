"""``cmacc bench dist``: training throughput on 1 rank vs W ranks of this machine, side by side
(CPU processes with Gloo, or one GPU per rank with NCCL: ``--device cuda``).

Each configuration is a real pretraining run (``torchrun --standalone --nproc_per_node=W -m cmacc
pretrain``; plain ``python -m cmacc pretrain`` for one rank) with the probe off, repeated
``--repeats`` times in turn (1, W, 1, W, ...) so that load drifts hit both. From metrics.jsonl,
after ``--warmup`` steps: steps/s (1 / mean wall time of a step, pool refreshes included), the
mean time in collectives (``time_comm``), the sampler and the data. Every configuration uses the
same global BatchNorm groups (``model.bn_splits`` = the largest W), so every one computes the same
training run and only the work's split differs.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ..system import provenance


def _command(world: int, out: Path, sets: list[str]) -> list[str]:
    args = [a for kv in sets for a in ("--set", kv)]
    if world == 1:
        return [sys.executable, "-m", "cmacc", "pretrain", "--out", str(out), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
            "-m", "cmacc", "pretrain", "--out", str(out), *args]


def one_run(world: int, threads: int, sets: list[str], warmup: int, tmp: Path, k: int) -> dict:
    out = tmp / f"w{world}-t{threads}-{k}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run(_command(world, out, sets + [f"run.threads={threads}"]), env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"world {world}: exit {res.returncode}\n{res.stderr[-2000:]}")
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()][warmup:]
    mean = lambda key: statistics.fmean(r.get(key, 0.0) for r in recs)  # noqa: E731
    return {"world": world, "threads_per_rank": threads, "steps_timed": len(recs),
            "steps_per_s": 1.0 / mean("time_step"), "time_step": mean("time_step"),
            "time_comm": mean("time_comm"), "time_sampler": mean("time_sampler"), "time_data": mean("time_data"),
            "time_compute": mean("time_compute"), "time_picks": mean("time_picks"),
            "final_loss": recs[-1]["loss"], "picks_digest_last": recs[-1]["picks_digest"]}


def main(args) -> int:
    worlds = [int(w) for w in args.world.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    if len(threads) == 1:
        threads = threads * len(worlds)
    if len(threads) != len(worlds) or min(worlds) < 1 or min(threads) < 1:
        print("error: --world and --threads must be lists of positive integers of the same length", file=sys.stderr)
        return 2
    sets = [f"method={args.method}", f"steps={args.steps}", "probe.enabled=false", "run.progress=false",
            f"run.device={args.device}", f"model.bn_splits={max(worlds) if args.bn_splits is None else args.bn_splits}",
            *args.set]
    prov = provenance.collect("cuda" if args.device.startswith("cuda") else "cpu")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            for w, t in zip(worlds, threads):
                r = one_run(w, t, sets, args.warmup, Path(tmp), k)
                rows.append({"bench": "dist", "repeat": k, **r, "config": sets, "device_name": prov["device_name"].split(" (")[0],  # threads: per rank
                             "host": prov["host"], "versions": prov["versions"], "git": prov["git"]})
                print(f"repeat {k}: W={w} x {t} thread(s): {r['steps_per_s']:.2f} steps/s, step {1e3 * r['time_step']:.0f} ms "
                      f"(comm {1e3 * r['time_comm']:.1f}, sampler {1e3 * r['time_sampler']:.0f}, data "
                      f"{1e3 * r['time_data']:.0f}, compute {1e3 * r['time_compute']:.0f}), loss {r['final_loss']:.4f}",
                      flush=True)
    for w, t in zip(worlds, threads):
        sp = [r["steps_per_s"] for r in rows if r["world"] == w and r["threads_per_rank"] == t]
        print(f"W={w} x {t} thread(s): steps/s {' / '.join(f'{x:.2f}' for x in sp)} (median {statistics.median(sp):.2f})")
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(f"appended {len(rows)} rows to {args.json}")
    return 0
