"""``cmacc reproduce mi`` -- CM-ACC Fig. 3a: probe accuracy as the mutual information grows.

For each method, number of used cells k and seed: pretrain on Spatial-MultiOmniglot
(cmacc.reproduce.omniglot; x in the video slot, y in the audio slot, 2-D image encoders), then
probe the frozen x-encoder: per used cell i, a logistic regression of z_i on its pooled last-stage
features (probe_train pairs drawn by the pretraining drawers, probe_test pairs by held-out
drawers); the reported number is the mean accuracy over the used cells, chance mean(1/l_i).

Besides accuracy, every run logs why it might differ: ``false_negatives`` (the share of the
dictionary whose latent label z equals the query's: negatives that are really positives) and
``distinct`` (distinct latent labels among each step's M enqueued negatives).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, load_config
from . import METHODS as EXPERIMENT_METHODS
from . import common
from .omniglot import PAPER_SIZES, mutual_information

METHODS = EXPERIMENT_METHODS["mi"]
REFERENCES = ("supervised",)  # not a --set method: the ceiling of the probe (see supervised())
PROBES = {"held-out": "accuracy", "seen": "accuracy_seen_drawers"}  # a curve point's keys, by probe


@dataclass
class Settings:
    chars: tuple[int, ...] = tuple(range(1, 10))
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 300
    M: int = 32
    K: int = 512
    N: int = 1536
    train_size: int = 10000  # the paper: 50K
    probe_train: int = 2000
    probe_test: int = 1000
    lr: float = 2e-3
    encoder: str = "image_cells"  # model.video / model.audio (cmacc.models.resnet2d)
    probe_every: int = 0  # > 0: a checkpoint every probe_every steps, each probed (the learning curve)
    overrides: list[str] = field(default_factory=list)  # further --set keys for every run


QUICK = dict(chars=(1, 2), methods=("xmoco", "cmacc"), steps=6, M=16, K=64, N=160, train_size=320,
             probe_train=300, probe_test=150)


def run_config(s: Settings, zip_path: str, method: str, k: int, seed: int):
    """The run's config; a reference row (supervised) takes xmoco's encoders and data."""
    keys = [f"method={'xmoco' if method in REFERENCES else method}", "data.name=omniglot",
            f"data.omniglot={zip_path}", f"data.chars={k}",
            f"model.video={s.encoder}", f"model.audio={s.encoder}", f"seed={seed}", f"steps={s.steps}",
            f"M={s.M}", f"K={s.K}", f"N={s.N}", f"lr={s.lr}", f"warmup_steps={max(1, min(30, s.steps // 5))}",
            f"data.train_size={s.train_size}", f"data.probe_train_size={s.probe_train}",
            f"data.probe_test_size={s.probe_test}", "data.num_classes=2", "probe.enabled=false",
            "run.progress=false", *_checkpoints(s)]
    return load_config(overrides=keys + list(s.overrides))


def _checkpoints(s: Settings) -> list[str]:
    """Checkpoints for a learning curve (every probe_every steps, all kept), else every 500 steps
    so that a killed long run resumes (common.cached); none kept besides last.pt."""
    if s.probe_every:
        return [f"run.checkpoint_every={s.probe_every}", f"run.keep_checkpoints={s.steps // s.probe_every + 1}"]
    return ["run.checkpoint_every=500", "run.keep_checkpoints=0"]


def cell_probe(cfg, run_dir: Path, which: Path | None = None) -> dict[str, list[float]]:
    """Per used cell: accuracy of a logistic regression of z_i on the frozen x-encoder's features,
    tested on held-out drawers (``held_out``, the reported number) and on new pairs by the
    pretraining drawers (``seen``); the run's last checkpoint, or checkpoint ``which``."""
    from ..data.build import build_data
    from ..evaluation import features
    from ..evaluation.encoders import from_run
    from .omniglot import SpatialMultiOmniglot
    enc = from_run(run_dir, which)
    data = build_data(cfg, torch.device("cpu"))
    tr, te = data.probe_train, data.probe_test
    seen = SpatialMultiOmniglot(te.glyphs, te.alphabets, te.k, len(te), split="probe_test_seen", seed=te.seed,
                                train_drawers=cfg.data.train_drawers)

    def feats(ds):
        return features.crop_features(enc.f_v, ds, "video", np.arange(len(ds)), 1, train=False,
                                      device=torch.device("cpu"), progress=False)["layer4"]

    x_tr = feats(tr)
    return {name: cell_accuracies(x_tr, tr.cell_labels, feats(ds), ds.cell_labels, C=cfg.probe.C, seed=cfg.seed)
            for name, ds in (("held_out", te), ("seen", seen))}


def cell_accuracies(x_tr: np.ndarray, z_tr: np.ndarray, x_te: np.ndarray, z_te: np.ndarray, *, C: float,
                    seed: int) -> list[float]:
    """x: n x 1 x features; z: n x k cell labels. One logistic regression per cell."""
    from ..evaluation import linear
    accs = []
    for i in range(z_tr.shape[1]):
        pred, _, _ = linear.fit_predict(x_tr, z_tr[:, i], x_te, classifier="logreg", C=C, seed=seed)
        accs.append(float((pred == z_te[:, i]).mean()))
    return accs


def supervised(cfg, run_dir: Path) -> dict:
    """The probe's ceiling on this data: the same x-encoder trained with z's labels (one linear head
    and cross-entropy per used cell, Adam, cfg.steps steps of cfg.M training pairs), then probed
    exactly as the self-supervised encoders are. Saved as a run folder, so cell_probe reads it."""
    from ..system import checkpoint
    from ..data import ClipRequest
    from ..data.build import build_data
    from ..models import build_encoder
    from ..engine.assembly import build_encoders
    torch.manual_seed(cfg.seed)
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    data = build_data(cfg, torch.device("cpu"))
    f_v = build_encoder("video", cfg.model.video, d=cfg.model.d, with_fc=cfg.fc != "none", head=cfg.model.head)
    heads = torch.nn.ModuleList(torch.nn.Linear(f_v.backbone.out_dim, int(n)) for n in data.train.sizes)
    opt = torch.optim.Adam(list(f_v.parameters()) + list(heads.parameters()), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    z = torch.from_numpy(data.train.cell_labels)
    losses = []
    for _ in range(cfg.steps):
        idx = torch.randint(len(data.train), (cfg.M,), generator=g)
        x = torch.stack([data.train[ClipRequest(int(i), modality="video")]["video"] for i in idx])
        h = f_v.backbone(x)
        loss = sum(torch.nn.functional.cross_entropy(head(h), z[idx, i]) for i, head in enumerate(heads))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    _, f_a = build_encoders(cfg)  # untrained: the probe reads f_v only
    state = {f"{name}.{k}": v for name, f in (("f_v", f_v), ("f_a", f_a)) for k, v in f.state_dict().items()}
    checkpoint.save(run_dir / "checkpoints" / "last.pt", {"step": cfg.steps, "model": state, "config": cfg.to_dict()})
    return {"final_loss": float(np.mean(losses[-10:]))}


def run_one(s: Settings, zip_path: str, method: str, k: int, seed: int, out: Path, name: str = "") -> dict:
    """One pretraining (or the supervised reference) and its probes, kept in OUT/runs/NAME
    (default <method>-k<k>-seed<seed>; see common.cached)."""
    cfg = run_config(s, zip_path, method, k, seed)
    run_dir = out / "runs" / (name or f"{method}-k{k}-seed{seed}")

    def compute() -> dict:
        t0 = time.perf_counter()
        if method == "supervised":
            why = {**supervised(cfg, run_dir), "false_negatives": None, "distinct": None}
        else:
            _, why = common.train_summary(cfg, run_dir)
        probes = cell_probe(cfg, run_dir)
        curve = learning_curve(cfg, run_dir) if s.probe_every and method not in REFERENCES else None
        return {"accuracy": float(np.mean(probes["held_out"])), "per_cell": probes["held_out"],
                "accuracy_seen_drawers": float(np.mean(probes["seen"])), **why,
                **({"curve": curve} if curve is not None else {}), "minutes": (time.perf_counter() - t0) / 60}

    return common.cached(run_dir, cfg, compute)


def learning_curve(cfg, run_dir: Path) -> dict[str, list]:
    """Every kept step checkpoint probed as the final one is: {"steps", "accuracy" (held-out
    drawers), "accuracy_seen_drawers"}. Each point is kept in run_dir/curve.jsonl as it is
    computed, so a killed job's probes are not repeated."""
    kept = run_dir / "curve.jsonl"
    done = {}
    if kept.exists():
        for line in kept.read_text().splitlines():
            if line.strip():
                p = json.loads(line)
                done[p["step"]] = p
    for path in sorted((run_dir / "checkpoints").glob("step_*.pt")):
        step = int(path.stem.split("_")[1])
        if step not in done:
            probes = cell_probe(cfg, run_dir, path)
            done[step] = {"step": step, "accuracy": float(np.mean(probes["held_out"])),
                          "accuracy_seen_drawers": float(np.mean(probes["seen"]))}
            with open(kept, "a") as f:
                f.write(json.dumps(done[step]) + "\n")
    steps = sorted(done)
    return {"steps": steps, "accuracy": [done[t]["accuracy"] for t in steps],
            "accuracy_seen_drawers": [done[t]["accuracy_seen_drawers"] for t in steps]}


@dataclass
class BatchGrid:
    """What the per-M grids (``reproduce ohem``, ``fig2``) share: one k, K = dict_ratio * M, a pool
    of N = min(pool_ratio * K, train_size) (the paper: K = 30 M, N = 10 K)."""

    batches: tuple[int, ...] = (32, 64, 128)
    methods: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    chars: int = 1
    dict_ratio: int = 30
    pool_ratio: int = 2
    train_size: int = 10000
    probe_train: int = 2000
    probe_test: int = 1000
    lr: float = 2e-3
    overrides: list[str] = field(default_factory=list)


def batch_settings(s: BatchGrid, M: int, steps: int) -> Settings:
    """The MI run at mini-batch M of a per-M grid."""
    K = s.dict_ratio * M
    return Settings(chars=(s.chars,), methods=s.methods, seeds=s.seeds, steps=steps, M=M, K=K,
                    N=min(s.pool_ratio * K, s.train_size), train_size=s.train_size, probe_train=s.probe_train,
                    probe_test=s.probe_test, lr=s.lr, overrides=list(s.overrides))


def check_batches(s: BatchGrid, zip_path: str, steps_of) -> None:
    """Every run's config of a per-M grid resolves (bad keys and values named) before any run starts."""
    for M in s.batches:
        for method in s.methods:
            run_config(batch_settings(s, M, steps_of(M)), zip_path, method, s.chars, s.seeds[0])


def run_batches(s: BatchGrid, zip_path: str, out: Path, steps_of, tag: str, desc: str) -> tuple[dict, dict]:
    """Every (M, method, seed) of a per-M grid: (run_grid's fields, each M's steps / M / K / N)."""
    jobs = [(m, str(M), seed) for M in s.batches for m in s.methods for seed in s.seeds]

    def one(method: str, M: str, seed: int) -> dict:
        return run_one(batch_settings(s, int(M), steps_of(int(M))), zip_path, method, s.chars, seed, out,
                       name=f"{method}-M{M}-k{s.chars}{tag}-seed{seed}")

    per_batch = {str(M): {k: v for k, v in asdict(batch_settings(s, M, steps_of(M))).items()
                          if k in ("steps", "M", "K", "N")} for M in s.batches}
    return common.run_grid(jobs, one, desc), per_batch


def run(zip_path: str, out: Path, s: Settings, quick: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(m, str(k), seed) for m in s.methods for k in s.chars for seed in s.seeds]
    got = common.run_grid(jobs, lambda m, k, seed: run_one(s, zip_path, m, int(k), seed, out), "mi runs")
    if not got.get("accuracy"):  # all of them unless --kept-only
        raise ConfigError(f"no kept runs of {list(s.methods)} in {out / 'runs'} (--kept-only)")
    res = {"experiment": "mi", "quick": quick,
           "settings": {**asdict(s), "zip": str(zip_path), "alphabet_sizes": PAPER_SIZES,
                        "mi_nats": {str(k): mutual_information(PAPER_SIZES, k) for k in s.chars},
                        "exp_mi_vs_train_size": {str(k): math.exp(mutual_information(PAPER_SIZES, k)) / s.train_size
                                                 for k in s.chars},
                        "alphabets": _alphabets_note(zip_path)},
           "results": got.get("accuracy", {}),
           "seeds_kept": got.get("seed", {}),
           **{key: got.get(key, {}) for key in ("per_cell", "accuracy_seen_drawers", "false_negatives", "distinct",
                                        "final_loss", "minutes")},
           "chance": {str(k): float(np.mean([1 / n for n in PAPER_SIZES[:k]])) for k in s.chars},
           "total_minutes": (time.perf_counter() - t0) / 60}
    if s.probe_every:
        res["curve"] = got.get("curve", {})
        for name, fn in (("converged_at", converged_at), ("plateau", plateau), ("peak", peak), ("drift", drift)):
            res[name] = {m: {k: {probe: [fn(c["steps"], c[key]) for c in curves] for probe, key in PROBES.items()}
                             for k, curves in by_k.items()} for m, by_k in res["curve"].items()}
    common.write(out, res, plot, "mi.png", table(res))
    if s.probe_every:
        plot_curves(res, out / "mi_curves.png")
        print(curves_table(res))
        print(plateau_table(res))
        print(seeds_table(res))
        print(paired_table(res))
        print(f"wrote {out / 'mi_curves.png'}")
    return res


def _alphabets_note(zip_path: str) -> str:
    from .omniglot import make_alphabets, read_glyphs
    return make_alphabets(read_glyphs(zip_path), PAPER_SIZES, 0)[1]


def table(res: dict) -> str:
    ks = [str(k) for k in res["settings"]["chars"]]
    cols = ["k=" + k for k in ks]
    seeds = res["settings"]["seeds"]
    return "\n".join([
        common.grid_table(f"probe accuracy, held-out drawers (mean over used cells), mean ± std over seeds {seeds}",
                          common.relabel(res["results"], "k="), cols, common.pct),
        f"{'chance':<16}" + "".join(f"{100 * res['chance'][k]:>14.1f}%" for k in ks),
        f"{'e^I / train set':<16}" + "".join(f"{res['settings']['exp_mi_vs_train_size'][k]:>15.3g}" for k in ks),
        common.grid_table("probe tested on new pairs by the pretraining drawers (no drawer split)",
                          common.relabel(res["accuracy_seen_drawers"], "k="), cols, common.pct),
        common.grid_table("false negatives (share of D with the query's z), mean over seeds",
                          common.relabel(res["false_negatives"], "k="), cols, common.mean_fmt("%.4f")),
        common.grid_table("distinct z among each step's enqueued negatives, mean over seeds",
                          common.relabel(res["distinct"], "k="), cols, common.mean_fmt("%.1f"))])


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ks = res["settings"]["chars"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, by_k in res["results"].items():
        have = [k for k in ks if str(k) in by_k]  # --kept-only may leave some k out
        ms = [common.mean_std(by_k[str(k)]) for k in have]
        ax.errorbar(have, [100 * a for a, _ in ms], yerr=[100 * e for _, e in ms], marker="o", capsize=3, label=m)
    ax.plot(ks, [100 * res["chance"][str(k)] for k in ks], "k--", lw=1, label="chance")
    ax.set_xlabel("number of characters k (MI = sum of log l_i)")
    ax.set_ylabel("probe accuracy (%), mean over cells")
    ax.set_title(f"Spatial-MultiOmniglot (CM-ACC Fig. 3a), {len(res['settings']['seeds'])} seeds, "
                 f"{res['settings']['train_size']} pairs", fontsize=9)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def converged_at(steps: list[int], acc: list[float], tol: float = 0.01, flat: float = 0.25) -> int | None:
    """The first kept step from which the curve never rises more than ``tol`` (absolute accuracy)
    above its value there, seen flat for at least ``flat`` of the curve's span: where the probe has
    stopped improving. None when no such step leaves that much of the run after it (still rising,
    or flat for too short a stretch to tell: train longer)."""
    if len(acc) == 1:
        return steps[0]
    span = steps[-1] - steps[0]
    for i, a in enumerate(acc):
        if steps[-1] - steps[i] < flat * span:
            return None
        if max(acc[i:]) <= a + tol:
            return steps[i]
    return None


def plateau(steps: list[int], acc: list[float], min_probes: int = 3) -> float | None:
    """The mean of the probes in the run's second half (steps after half the last one): the level a
    converged curve sits at, less noisy than its last probe alone. None with fewer than
    ``min_probes`` probes there (too few to average; probe more often)."""
    late = _second_half(steps, acc, min_probes)
    return None if late is None else float(np.mean([a for _, a in late]))


def _second_half(steps: list[int], acc: list[float], min_probes: int) -> list | None:
    """The (step, accuracy) probes after half the last step; None with fewer than ``min_probes``."""
    late = [(t, a) for t, a in zip(steps, acc) if t > steps[-1] / 2]
    return late if len(late) >= min_probes else None


def peak(steps: list[int], acc: list[float]) -> list:
    """The curve's highest probe and the first step it was reached at: [accuracy, step]."""
    i = int(np.argmax(acc))
    return [float(acc[i]), int(steps[i])]


def drift(steps: list[int], acc: list[float], min_probes: int = 3) -> float | None:
    """How far the curve moves across the run's second half (the probes ``plateau`` averages): the
    least-squares line through them, its slope times their span, in accuracy. Near 0 (within the
    probe's noise) the plateau is a level; well below 0 the curve is falling after its peak and the
    plateau understates it. None where ``plateau`` is None."""
    late = _second_half(steps, acc, min_probes)
    if late is None:
        return None
    t, a = np.array(late, dtype=float).T
    return float(np.polyfit(t, a, 1)[0] * (t[-1] - t[0]))


def plateau_table(res: dict) -> str:
    """Fig. 3a's table at the plateau: per seed, the mean probe over the second half of the run;
    mean ± std over seeds (the number of seeds with a plateau in brackets where fewer than all)."""
    ks = sorted({k for by_k in res["plateau"].values() for k in by_k}, key=int)
    out = []
    for probe in PROBES:
        by_m = {m: {f"k={k}": by_k[k][probe] for k in by_k} for m, by_k in res["plateau"].items()}
        out.append(common.grid_table(f"plateau, {probe} drawers: mean probe over the second half of each run, "
                                     f"mean ± std over seeds", by_m, [f"k={k}" for k in ks], _pct_n))
    return "\n".join(out)


def seeds_table(res: dict) -> str:
    """Per method, k, probe and seed: the peak (and its step), the plateau and the drift across the
    second half, so that a curve that falls after its peak is not read as a level."""
    lines = ["per seed: peak @ step, plateau (mean of the second half), drift (the second half's fitted "
             "change, points; a level only where it is within the probe's noise)"]
    for m, by_k in res["plateau"].items():
        for k in by_k:
            for probe in PROBES:
                cells = []
                for sd, pk, pl, dr in zip(res["seeds_kept"][m][k], res["peak"][m][k][probe],
                                          res["plateau"][m][k][probe], res["drift"][m][k][probe]):
                    level = "-" if pl is None else f"{100 * pl:.1f}, drift {100 * dr:+.1f}"
                    cells.append(f"seed {sd}: {100 * pk[0]:.1f} @ {pk[1]}, {level}")
                lines.append(f"{m:<15} k={k:<2} {probe:<9} " + "; ".join(cells))
    return "\n".join(lines)


def paired(res: dict, method: str, k: str, probe: str, baseline: str = "xmoco") -> list[float]:
    """Per seed that both ran: method's plateau minus the baseline's. The seed draws the
    pseudo-alphabets (the data itself), so the paired difference removes the data's share of the
    seed-to-seed spread."""
    def by_seed(m: str) -> dict:
        seeds = res["seeds_kept"].get(m, {}).get(k, [])
        return {sd: x for sd, x in zip(seeds, res["plateau"].get(m, {}).get(k, {}).get(probe, []))
                if x is not None}
    mine, base = by_seed(method), by_seed(baseline)
    return [mine[sd] - base[sd] for sd in sorted(mine) if sd in base]


def paired_table(res: dict, baseline: str = "xmoco") -> str:
    """Each method's plateau minus the baseline's on the same seed (same pseudo-alphabets)."""
    if baseline not in res["plateau"]:
        return f"(no paired differences: {baseline} was not run)"
    ks = sorted({k for by_k in res["plateau"].values() for k in by_k}, key=int)
    out = []
    for probe in PROBES:
        by_m = {m: {f"k={k}": paired(res, m, k, probe, baseline) for k in by_k}
                for m, by_k in res["plateau"].items() if m != baseline}
        out.append(common.grid_table(f"plateau minus {baseline}'s on the same seed, {probe} drawers: mean ± std "
                                     f"over the seeds both ran (their number)", by_m, [f"k={k}" for k in ks],
                                     _diff_n))
    return "\n".join(out)


def _diff_n(xs: list) -> str:
    if not xs:
        return "-"
    m, s = common.mean_std(xs)
    return f"{100 * m:+.1f} ({len(xs)})" if len(xs) == 1 else f"{100 * m:+.1f} ± {100 * s:.1f} ({len(xs)})"


def _pct_n(xs: list) -> str:
    n = sum(x is not None for x in xs)
    return common.pct(xs) + ("" if n in (1, len(xs)) else f" ({n})")  # pct names a single seed itself


def curves_table(res: dict) -> str:
    """Per method, k and probe: the seed-mean curve at every kept step, and where each seed converged."""
    lines = ["learning curves: probe accuracy against steps, mean over seeds, on held-out drawers and on new "
             "pairs by the pretraining drawers (seen); converged at, per seed: the first kept step after which "
             "its curve never rises more than 1 point, over at least the last quarter of the run (None: still "
             "rising, or not flat for that long)"]
    for m, by_k in res["curve"].items():
        for k, curves in by_k.items():
            steps = curves[0]["steps"]
            for probe, key in PROBES.items():
                mean = np.mean([c[key] for c in curves if c["steps"] == steps], axis=0)
                conv = [converged_at(c["steps"], c[key]) for c in curves]
                lines.append(f"{m:<15} k={k:<2} {probe:<9} " + " ".join(f"{t}:{100 * a:.1f}" for t, a in zip(steps, mean))
                             + f"  converged at {conv}")
    return "\n".join(lines)


def plot_curves(res: dict, path: Path) -> None:
    """One column per k; the held-out probe above, the seen-drawer probe below; mean ± std over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ks = sorted({k for by_k in res["curve"].values() for k in by_k}, key=int)
    fig, axes = plt.subplots(len(PROBES), len(ks), figsize=(4 * len(ks), 3.2 * len(PROBES)), squeeze=False)
    for row, (probe, key) in zip(axes, PROBES.items()):
        for ax, k in zip(row, ks):
            for m, by_k in res["curve"].items():
                if k not in by_k:
                    continue
                steps = by_k[k][0]["steps"]
                accs = np.array([c[key] for c in by_k[k] if c["steps"] == steps])
                mean, std = 100 * accs.mean(0), 100 * (accs.std(0, ddof=1) if len(accs) > 1 else 0 * accs[0])
                ax.plot(steps, mean, marker=".", label=f"{m} ({len(accs)} seeds)")
                ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
            ax.axhline(100 * res["chance"][k], color="k", ls="--", lw=1)
            ax.set_title(f"k = {k}, {probe} drawers", fontsize=9)
            ax.set_xlabel("pretraining step")
            ax.set_ylim(0, 100)
        row[0].set_ylabel("probe accuracy (%)")
    for ax in axes[0]:  # the number of seeds may differ per k (runs gathered with --kept-only)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Spatial-MultiOmniglot learning curves, {res['settings']['train_size']} pairs, "
                 f"M = {res['settings']['M']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
