"""``cmacc reproduce fig2`` -- CM-ACC Fig. 2: distinct classes among each step's enqueued negatives.

The paper trains on UCF-101 for 300 iterations at M = 32, 64, 128 and counts the ground-truth
categories of the M negatives each step enqueues: random sampling, active sampling with gradient
embeddings (CM-ACC) and with feature embeddings. Its claims: active > random at every M, gradient
> feature, and the share of distinct categories falls with M (random: 37.5% at M=32, 30.8% at 128).

Here: labelled data with a known class structure, Spatial-MultiOmniglot at k = 1 (55 classes,
z of the one used cell), the same number of steps at every M, K = 30 M, pool N = min(2 K, training
pairs). ``random_pool`` (pool, random picks), ``cmacc`` (gradient), ``feature_active`` (feature).
Each run's per-step counts come from metrics.jsonl (``neg_categories``: the mean of the two
modalities' picks); the uniform expectation C (1 - (1 - 1/C)^M) is drawn as a reference.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import METHODS as EXPERIMENT_METHODS
from . import common, mi
from .omniglot import PAPER_SIZES

METHODS = EXPERIMENT_METHODS["fig2"]
PAPER_RANDOM_SHARE = {"32": 0.375, "128": 0.308}  # footnote 1: distinct categories / M, random sampling


@dataclass
class Settings(mi.BatchGrid):
    methods: tuple[str, ...] = METHODS
    steps: int = 100  # the paper: 300 iterations (CPU time: M=128 steps cost 4x)


QUICK = dict(batches=(8, 16), methods=("random_pool", "cmacc"), seeds=(0,), steps=6, dict_ratio=4, train_size=320,
             probe_train=300, probe_test=150)


def check(s: Settings, zip_path: str) -> None:
    mi.check_batches(s, zip_path, lambda M: s.steps)


def uniform_expectation(classes: int, M: int) -> float:
    """E[distinct classes] among M uniform draws over ``classes`` equally likely classes."""
    return classes * (1 - (1 - 1 / classes) ** M)


def run(zip_path: str, out: Path, s: Settings, quick: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    got, per_batch = mi.run_batches(s, zip_path, out, lambda M: s.steps, f"-steps{s.steps}", "fig2 runs")
    classes = int(np.prod(PAPER_SIZES[:s.chars]))
    res = {"experiment": "fig2", "quick": quick,
           "settings": {**asdict(s), "zip": str(zip_path), "classes": classes, "per_batch": per_batch},
           "results": got.get("accuracy", {}),
           **{key: got.get(key, {}) for key in ("distinct", "distinct_per_step", "false_negatives", "final_loss",
                                                "minutes")},
           "uniform_expectation": {str(M): uniform_expectation(classes, M) for M in s.batches},
           "chance": float(np.mean([1 / n for n in PAPER_SIZES[:s.chars]])),
           "paper_random_share": PAPER_RANDOM_SHARE, "total_minutes": (time.perf_counter() - t0) / 60}
    common.write(out, res, plot, "fig2.png", table(res))
    return res


def table(res: dict) -> str:
    Ms = [str(M) for M in res["settings"]["batches"]]
    head = [f"M={M}" for M in Ms]
    ms = lambda xs: "%.2f ± %.2f" % common.mean_std(xs)  # noqa: E731
    share = {m: {f"M={M}": [x / int(M) for x in v] for M, v in by_M.items()} for m, by_M in res["distinct"].items()}
    return "\n".join([
        common.grid_table(f"distinct classes among each step's M negatives (of {res['settings']['classes']}), "
                          f"mean over steps, mean ± std over seeds {res['settings']['seeds']}",
                          common.relabel(res["distinct"], "M="), head, ms),
        f"{'uniform draws':<16}" + "".join(f"{res['uniform_expectation'][M]:>15.2f}" for M in Ms),
        common.grid_table("the same as a share of M (the paper's footnote 1: random 37.5% at M=32, 30.8% at 128)",
                          share, head, common.pct),
        common.grid_table("false negatives (share of D with the query's class)",
                          common.relabel(res["false_negatives"], "M="), head, common.mean_fmt("%.4f")),
        common.grid_table("probe accuracy (held-out drawers)", common.relabel(res["results"], "M="), head, common.pct)])


def _smooth(x: np.ndarray, w: int) -> np.ndarray:
    w = max(1, min(w, len(x)))
    return np.convolve(x, np.ones(w) / w, mode="valid")


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    Ms = [str(M) for M in res["settings"]["batches"]]
    fig, axes = plt.subplots(1, len(Ms), figsize=(4 * len(Ms), 3.4), squeeze=False)
    for ax, M in zip(axes[0], Ms):
        for m, by_M in res["distinct_per_step"].items():
            if M not in by_M:  # --kept-only may leave some M out
                continue
            curves = np.array([[np.nan if v is None else v for v in c] for c in by_M[M]], dtype=float)
            mean, std = np.nanmean(curves, 0), np.nanstd(curves, 0)
            w = max(1, len(mean) // 15)
            x = np.arange(len(mean))[w - 1:] + 1
            line, = ax.plot(x, _smooth(mean, w), label=m)
            ax.fill_between(x, _smooth(mean - std, w), _smooth(mean + std, w), color=line.get_color(), alpha=0.2)
        ax.axhline(res["uniform_expectation"][M], color="k", ls="--", lw=1, label="uniform draws")
        ax.set_title(f"M = {M}", fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel(f"distinct classes among M negatives (of {res['settings']['classes']})")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"CM-ACC Fig. 2 on Spatial-MultiOmniglot k={res['settings']['chars']}: mean ± std over "
                 f"{len(res['settings']['seeds'])} seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
