"""What ``cmacc eval`` writes: OUT/<task>.json, a printed table, OUT/<task>.png (per-class accuracy).

Accuracies are fractions in the JSON (percent in the table). ``folds`` holds the headline number
per fold or split -- the best stage's for ``linear`` (the stage with the best mean over folds),
the fine-tuned model's otherwise -- and ``stages`` the whole table.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..system import provenance
from ..system.checkpoint import write_atomic


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def _per_class(preds: list[np.ndarray], labels_of: list[np.ndarray], classes: list[str]) -> dict:
    """Accuracy per class over the test items of all folds (None for a class never tested)."""
    pred, true = np.concatenate(preds), np.concatenate(labels_of)
    return {c: float((pred[true == k] == k).mean()) if (true == k).any() else None for k, c in enumerate(classes)}


def summarise(task: str, protocol: str, per_fold: list[dict], labels_of: list[np.ndarray],
              classes: list[str]) -> dict:
    """per_fold[i]["stages"][stage] = {"accuracy", "pred", ...}; labels_of[i]: true labels of fold i's test items."""
    names = list(per_fold[0]["stages"])
    stages = {}
    for s in names:
        accs = [f["stages"][s]["accuracy"] for f in per_fold]
        mean, std = _mean_std(accs)
        stages[s] = {"folds": accs, "mean": mean, "std": std}
    best = max(names, key=lambda s: stages[s]["mean"])
    per_class = _per_class([f["stages"][best]["pred"] for f in per_fold], labels_of, classes)
    folds = [{"name": f["fold"], "accuracy": f["stages"][best]["accuracy"], "n_test": int(len(t)),
              **{k: v for k, v in f["stages"][best].items() if k not in ("accuracy", "pred")}}
             for f, t in zip(per_fold, labels_of)]
    mean, std = stages[best]["mean"], stages[best]["std"]
    return {"task": task, "protocol": protocol, "best_stage": best, "folds": folds, "mean": mean, "std": std,
            "stages": stages, "per_class": per_class, "chance": 1.0 / len(classes)}


def summarise_retrieval(per_split: list[dict], labels_of: list[np.ndarray], classes: list[str], stage: str) -> dict:
    """per_split[i]["stages"][stage][k] = hit rate; the headline is ``stage``'s top-1 (fixed in advance)."""
    names = list(per_split[0]["stages"])
    ks = list(per_split[0]["stages"][names[0]])
    topk = {s: {str(k): dict(zip(("mean", "std"), _mean_std([p["stages"][s][k] for p in per_split])),
                             folds=[p["stages"][s][k] for p in per_split]) for k in ks} for s in names}
    first = ks[0]
    per_class = _per_class([p["pred"] for p in per_split], labels_of, classes)
    folds = [{"name": p["fold"], "accuracy": p["stages"][stage][first], "n_test": p["n_test"], "n_train": p["n_train"],
              "topk": {str(k): p["stages"][stage][k] for k in ks}} for p in per_split]
    return {"task": "retrieval", "protocol": "cosine", "best_stage": stage, "folds": folds,
            "mean": topk[stage][str(first)]["mean"], "std": topk[stage][str(first)]["std"],
            "stages": {s: {"folds": topk[s][str(first)]["folds"], "mean": topk[s][str(first)]["mean"],
                           "std": topk[s][str(first)]["std"]} for s in names},
            "topk": topk, "per_class": per_class, "chance": 1.0 / len(classes), "metric": f"top-{first} hit rate"}


def table(res: dict) -> str:
    if res["task"] == "retrieval":
        return _table_retrieval(res)
    folds = [f["name"] for f in res["folds"]]
    head = f"{'stage':<12}" + "".join(f"{n:>9}" for n in folds) + f"{'mean ± std':>16}"
    lines = [f"{res['task']} ({res['protocol']}), encoder {res['encoder']}: {res['how']}", head]
    for s, v in res["stages"].items():
        mark = " *" if s == res["best_stage"] and len(res["stages"]) > 1 else ""
        lines.append(f"{s:<12}" + "".join(f"{100 * a:>8.1f}%" for a in v["folds"])
                     + f"{100 * v['mean']:>9.1f} ± {100 * v['std']:.1f}%{mark}")
    if "clip_mean" in res:
        lines.append(f"{'clip@1':<12}" + "".join(f"{100 * f['clip_accuracy']:>8.1f}%" for f in res["folds"])
                     + f"{100 * res['clip_mean']:>9.1f}%   (the rows above: video@1, clips' softmax averaged)")
    lines.append(f"chance {100 * res['chance']:.1f}%" + ("; * best stage (chosen on the test folds)"
                                                        if len(res["stages"]) > 1 else ""))
    return "\n".join(lines)


def _table_retrieval(res: dict) -> str:
    ks = list(next(iter(res["topk"].values())))
    lines = [f"retrieval on {res['dataset']}, encoder {res['encoder']}: {res['how']}",
             f"{'stage':<12}" + "".join(f"{'R@' + k:>9}" for k in ks) + "   (mean over splits)"]
    for s, v in res["topk"].items():
        mark = " *" if s == res["best_stage"] else ""
        lines.append(f"{s:<12}" + "".join(f"{100 * v[k]['mean']:>8.1f}%" for k in ks) + mark)
    lines.append(f"* the reported stage (fixed in advance); chance at R@1 about {100 * res['chance']:.1f}%")
    return "\n".join(lines)


def plot_per_class(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    items = sorted(((c, a) for c, a in res["per_class"].items() if a is not None), key=lambda x: x[1])
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.22 * len(items) + 1)))
    ax.barh([c for c, _ in items], [100 * a for _, a in items], color="tab:blue")
    ax.axvline(100 * res["chance"], color="grey", ls="--", lw=1, label="chance")
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%), test items of all folds")
    ax.set_title(f"{res['task']} {res['protocol']} ({res['best_stage']}): {100 * res['mean']:.1f} ± "
                 f"{100 * res['std']:.1f}%\n{res['encoder']}", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(res: dict, out: Path, cfg_dict: dict, device) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    res = {**res, "config": cfg_dict, "provenance": provenance.collect(device)}
    path = out / f"{res['task']}.json"
    write_atomic(path, json.dumps(res, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    plot_per_class(res, out / f"{res['task']}.png")
    return path
