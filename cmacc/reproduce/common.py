"""What every reproduction shares: runs kept by config, per-seed statistics, results.json, tables.

A reproduction is a grid of jobs (method x setting x seed). Each job's result is kept in
OUT/runs/<name>/result.json with the run's resolved config, so a rerun with the same settings reads
it instead of training again: a killed reproduction resumes at the first missing job, and
processes running disjoint methods into one OUT are gathered by a last run over all of them.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from ..system import provenance
from ..system.checkpoint import write_atomic

_KEPT_ONLY = contextvars.ContextVar("kept_only", default=False)


@contextlib.contextmanager
def kept_only():
    """Within it, :func:`cached` trains nothing: a job without a kept result is left out of the grid
    (``--kept-only``: gather what parallel or interrupted processes finished, e.g. a subset of k)."""
    token = _KEPT_ONLY.set(True)
    try:
        yield
    finally:
        _KEPT_ONLY.reset(token)


JOB = "job.json"  # the config a run folder is computing, written before it starts


def cached(run_dir: Path, cfg, compute: Callable[[], dict]) -> dict | None:
    """``compute()``'s result, stored in run_dir/result.json with the run's resolved config; reused
    when the config is the same. A folder left by a killed job of the same config (its job.json)
    is kept, so that the job resumes from its last checkpoint (:func:`train_summary`); any other
    folder is cleared first. None under :func:`kept_only` when nothing is kept."""
    path = run_dir / "result.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if same_config(stored.get("config") or {}, cfg.to_dict()):
            return stored["result"]
    if _KEPT_ONLY.get():
        return None
    if run_dir.exists() and not _same_job(run_dir, cfg):
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / JOB, json.dumps({"config": cfg.to_dict()}, indent=1))
    result = compute()
    write_atomic(path, json.dumps({"config": cfg.to_dict(), "result": result}, indent=1))
    return result


def _same_job(run_dir: Path, cfg) -> bool:
    try:
        stored = json.loads((run_dir / JOB).read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return not (run_dir / "result.json").exists() and same_config(stored, cfg.to_dict())


# How a run executes, not what it trains: a kept run (or a killed job's folder) matches a config that
# differs only in these, and its result.json keeps the values it ran with. A different thread count
# can change float rounding (the order of a reduction), so such a run is the same experiment, not a
# bitwise copy; a resume is bitwise exact at the same count.
EXECUTION_KEYS = ("run.threads", "run.progress")


def same_config(stored: dict, current: dict) -> bool:
    """The stored run's config is this one, up to :data:`EXECUTION_KEYS`. A key the stored config lacks
    (an option added since) matches when the current value is that option's default: the run behaved
    as the default does."""
    from ..config import Config, flatten
    as_json = lambda d: {k: v for k, v in flatten(json.loads(json.dumps(d))).items()  # noqa: E731
                         if k not in EXECUTION_KEYS}  # (tuples -> lists, as stored)
    a, b, default = as_json(stored), as_json(current), as_json(Config().to_dict())
    return all(k in b and b[k] == v for k, v in a.items()) and \
        all(k in a or (k in default and default[k] == v) for k, v in b.items())


def run_grid(jobs: list[tuple[str, str, int]], one: Callable[[str, str, int], dict], desc: str) -> dict:
    """``one(method, setting, seed)`` for every job, with a progress bar. Returns
    {field: {method: {setting: [per-seed value, in seed order]}}} over the fields the jobs return,
    plus "seed": which seed each kept value came from (a job that returns None -- not kept, under
    kept_only -- is left out, so positions alone do not name seeds)."""
    by_field: dict = {}
    for method, setting, seed in tqdm(jobs, desc=desc):
        result = one(method, setting, seed)
        if result is None:  # not kept (kept_only)
            continue
        for key, value in {**result, "seed": seed}.items():
            by_field.setdefault(key, {}).setdefault(method, {}).setdefault(setting, []).append(value)
    return by_field


def train_summary(cfg, run_dir: Path) -> tuple[dict, dict]:
    """Pretrain ``cfg`` into run_dir, resuming from its last checkpoint when a killed job of the
    same config left one (see :func:`cached`); (summary.json, the "why" numbers of the run): the
    share of the dictionary with the query's latent label, distinct labels among each step's M
    enqueued negatives (mean and per step), the final loss and the minutes taken (this process's)."""
    from ..engine.train import pretrain
    t0 = time.perf_counter()
    resume = (run_dir / "checkpoints" / "last.pt").exists()
    summary = pretrain(cfg, run_dir, resume=resume)
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    neg = summary["negatives"]
    return summary, {"false_negatives": neg.get("false_negatives"), "distinct": neg.get("mean_categories"),
                     "distinct_per_step": [r.get("neg_categories") for r in recs],
                     "final_loss": summary["final_loss"], "minutes": (time.perf_counter() - t0) / 60,
                     "resumed": resume}


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample std (0 for one seed), Nones dropped."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return float("nan"), float("nan")
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def pct(xs: list[float]) -> str:
    """A table cell: mean ± std over seeds in %; a single seed has no std, and says so."""
    m, s = mean_std(xs)
    if sum(x is not None for x in xs) == 1:
        return f"{100 * m:.1f}% (1 seed)"
    return f"{100 * m:.1f} ± {100 * s:.1f}%"


def relabel(by_method: dict, prefix: str) -> dict:
    """{method: {setting: xs}} -> {method: {prefix + setting: xs}}: table columns such as "k=3", "M=64"."""
    return {m: {prefix + str(k): v for k, v in by_k.items()} for m, by_k in by_method.items()}


def mean_fmt(fmt: str) -> Callable[[list], str]:
    """A table cell: the seeds' mean in ``fmt``."""
    return lambda xs: fmt % mean_std(xs)[0]


def grid_table(title: str, by_method: dict, columns: list[str], fmt: Callable[[list], str], width: int = 15) -> str:
    lines = [title, f"{'method':<16}" + "".join(f"{c:>{width}}" for c in columns)]
    for m, by_col in by_method.items():
        # the leading space keeps a cell wider than the column apart from its neighbour
        lines.append(f"{m:<16}" + "".join(f"{' ' + (fmt(by_col[c]) if c in by_col else '-'):>{width}}"
                                          for c in columns))
    return "\n".join(lines)


def write(out: Path, res: dict, plot: Callable[[dict, Path], None], png: str, text: str) -> None:
    """results.json (with provenance), the PNG, and the table on stdout."""
    res["provenance"] = provenance.collect("cpu")
    write_atomic(out / "results.json", json.dumps(res, indent=1))
    plot(res, out / png)
    print(text)
    print(f"wrote {out / 'results.json'} and {out / png}")


def bar_chart(path: Path, groups: list[str], series: dict[str, list[list[float]]], chance: float, ylabel: str,
              title: str) -> None:
    """Grouped bars with seed error bars: series[label][g] = per-seed fractions for group g."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(5.5, 0.9 * len(groups) + 2), 4))
    width = 0.8 / len(series)
    for j, (label, per_group) in enumerate(series.items()):
        ms = [mean_std(xs) for xs in per_group]
        ax.bar(np.arange(len(groups)) + (j - (len(series) - 1) / 2) * width, [100 * a for a, _ in ms], width,
               yerr=[100 * e for _, e in ms], capsize=3, label=label)
    ax.axhline(100 * chance, color="k", ls="--", lw=1, label="chance")
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
