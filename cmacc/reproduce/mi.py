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
from tqdm import tqdm

from .. import provenance
from ..checkpoint import write_atomic
from ..config import load_config
from .omniglot import PAPER_SIZES, mutual_information

METHODS = ("smoco", "xmoco", "cmacc", "random_pool", "feature_active")
REFERENCES = ("supervised",)  # not a --set method: the ceiling of the probe (see supervised())


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
            "run.progress=false", "run.checkpoint_every=100000", "run.keep_checkpoints=0"]
    return load_config(overrides=keys + list(s.overrides))


def cell_probe(cfg, run_dir: Path) -> dict[str, list[float]]:
    """Per used cell: accuracy of a logistic regression of z_i on the frozen x-encoder's features,
    tested on held-out drawers (``held_out``, the reported number) and on new pairs by the
    pretraining drawers (``seen``)."""
    from ..data.build import build_data
    from ..evaluation import features
    from ..evaluation.encoders import from_run
    from .omniglot import SpatialMultiOmniglot
    enc = from_run(run_dir)
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
    from .. import checkpoint
    from ..data import ClipRequest
    from ..data.build import build_data
    from ..models import build_encoder
    from ..train import build_encoders
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
    return {"final_loss": float(np.mean(losses[-10:])), "negatives": {}}


def run_one(s: Settings, zip_path: str, method: str, k: int, seed: int, out: Path) -> dict:
    """One pretraining + probe, kept in OUT/runs/<method>-k<k>-seed<seed>/result.json: a rerun with
    the same settings reads it instead of training again (a killed reproduction resumes there, and
    processes running disjoint methods into one OUT are gathered by a last run over all of them)."""
    cfg = run_config(s, zip_path, method, k, seed)
    run_dir = out / "runs" / f"{method}-k{k}-seed{seed}"
    return cached(run_dir, cfg, lambda: _train_and_probe(cfg, method, run_dir))


def cached(run_dir: Path, cfg, compute) -> dict:
    """``compute()``'s result, stored in run_dir/result.json with the run's resolved config; reused
    when the config is the same, recomputed in a fresh folder otherwise (or after a killed run)."""
    import shutil
    path = run_dir / "result.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("config") == cfg.to_dict():
            return stored["result"]
    if run_dir.exists():
        shutil.rmtree(run_dir)
    result = compute()
    write_atomic(path, json.dumps({"config": cfg.to_dict(), "result": result}, indent=1))
    return result


def _train_and_probe(cfg, method: str, run_dir: Path) -> dict:
    from ..train import pretrain
    t0 = time.perf_counter()
    summary = supervised(cfg, run_dir) if method == "supervised" else pretrain(cfg, run_dir)
    probes = cell_probe(cfg, run_dir)
    neg = summary["negatives"]
    return {"accuracy": float(np.mean(probes["held_out"])), "per_cell": probes["held_out"],
            "accuracy_seen_drawers": float(np.mean(probes["seen"])), "false_negatives": neg.get("false_negatives"),
            "distinct": neg.get("mean_categories"), "final_loss": summary["final_loss"],
            "minutes": (time.perf_counter() - t0) / 60}


def run(zip_path: str, out: Path, s: Settings, quick: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    results, why, per_cell, minutes = {}, {}, {}, {}
    jobs = [(m, k, seed) for m in s.methods for k in s.chars for seed in s.seeds]
    t0 = time.perf_counter()
    for m, k, seed in tqdm(jobs, desc="mi runs", disable=False):
        r = run_one(s, zip_path, m, k, seed, out)
        results.setdefault(m, {}).setdefault(str(k), []).append(r["accuracy"])
        per_cell.setdefault(m, {}).setdefault(str(k), []).append(r["per_cell"])
        for key in ("accuracy_seen_drawers", "false_negatives", "distinct", "final_loss"):
            why.setdefault(key, {}).setdefault(m, {}).setdefault(str(k), []).append(r[key])
        minutes.setdefault(m, {}).setdefault(str(k), []).append(r["minutes"])
    res = {"experiment": "mi", "quick": quick,
           "settings": {**asdict(s), "zip": str(zip_path), "alphabet_sizes": PAPER_SIZES,
                        "mi_nats": {str(k): mutual_information(PAPER_SIZES, k) for k in s.chars},
                        "exp_mi_vs_train_size": {str(k): math.exp(mutual_information(PAPER_SIZES, k)) / s.train_size
                                                 for k in s.chars},
                        "alphabets": _alphabets_note(zip_path)},
           "results": results, "per_cell": per_cell, **why, "minutes": minutes,
           "chance": {str(k): float(np.mean([1 / n for n in PAPER_SIZES[:k]])) for k in s.chars},
           "total_minutes": (time.perf_counter() - t0) / 60, "provenance": provenance.collect("cpu")}
    write_atomic(out / "results.json", json.dumps(res, indent=1))
    plot(res, out / "mi.png")
    print(table(res))
    print(f"wrote {out / 'results.json'} and {out / 'mi.png'}")
    return res


def _alphabets_note(zip_path: str) -> str:
    from .omniglot import make_alphabets, read_glyphs
    return make_alphabets(read_glyphs(zip_path), PAPER_SIZES, 0)[1]


def _ms(xs: list[float]) -> tuple[float, float]:
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def table(res: dict) -> str:
    ks = [str(k) for k in res["settings"]["chars"]]
    lines = ["probe accuracy (mean over used cells), mean ± std over seeds " + str(res["settings"]["seeds"]),
             f"{'method':<16}" + "".join(f"{'k=' + k:>14}" for k in ks)]
    for m, by_k in res["results"].items():
        lines.append(f"{m:<16}" + "".join("{:>14}".format("%.1f ± %.1f%%" % tuple(100 * v for v in _ms(by_k[k])))
                                          for k in ks))
    lines.append(f"{'chance':<16}" + "".join(f"{100 * res['chance'][k]:>13.1f}%" for k in ks))
    lines.append(f"{'e^I / train set':<16}" + "".join(f"{res['settings']['exp_mi_vs_train_size'][k]:>14.3g}"
                                                    for k in ks))
    lines.append("probe tested on new pairs by the pretraining drawers (no drawer split), mean over seeds:")
    for m, by_k in res["accuracy_seen_drawers"].items():
        lines.append(f"{m:<16}" + "".join(f"{100 * np.mean(by_k[k]):>13.1f}%" for k in ks))
    lines.append("false negatives (share of D with the query's z), mean over seeds:")
    for m, by_k in res["false_negatives"].items():
        lines.append(f"{m:<16}" + "".join(f"{np.mean([x for x in by_k[k] if x is not None] or [np.nan]):>14.4f}"
                                          for k in ks))
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ks = res["settings"]["chars"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, by_k in res["results"].items():
        ms = [_ms(by_k[str(k)]) for k in ks]
        ax.errorbar(ks, [100 * a for a, _ in ms], yerr=[100 * e for _, e in ms], marker="o", capsize=3, label=m)
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
