"""The end of a run (global rank 0 only): linear probes, pretrained vs random init, and summary.json."""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import Config
from ..data.build import Data
from ..evaluation import probe
from ..system import checkpoint


def _negatives(recs: list[dict], data: Data, M: int) -> dict:
    labelled = [r for r in recs if r["neg_categories"] is not None]
    if not labelled:
        return {"mean_categories": None, "note": "the training clips carry no labels"}
    C = int(data.labels[data.labels >= 0].unique().numel())  # latent classes present in the training set
    fn = [r["false_neg"] for r in labelled if r.get("false_neg") is not None]
    return {
        "false_negatives": float(np.mean(fn)) if fn else None,  # share of D with the query's label
        "mean_categories": float(np.mean([r["neg_categories"] for r in labelled])),
        "mean_categories_v": float(np.mean([r["neg_categories_v"] for r in labelled])),
        "mean_categories_a": float(np.mean([r["neg_categories_a"] for r in labelled])),
        "mean_categories_last_quarter": float(np.mean([r["neg_categories"]
                                                       for r in labelled[-max(1, len(labelled) // 4):]])),
        "per_step": M, "num_classes": C,
        "uniform_expectation": C * (1 - (1 - 1 / C) ** M),  # E[#classes] of M uniform draws, balanced classes
    }


def _warnings(recs: list[dict]) -> list[str]:
    collapsed = [r["step"] for r in recs if r.get("collapsed")]
    if not collapsed:
        return []
    return [f"collapse: the embeddings were collapsed at {len(collapsed)} of {len(recs)} logged steps "
            f"(first flagged at step {collapsed[0]}, last at {collapsed[-1]}); the probes measure a dead model"]


def _probe(cfg: Config, model, data: Data, device: torch.device, random_init: Callable, workers: int) -> dict:
    if not cfg.probe.enabled:
        return {"skipped": "probe.enabled=false"}
    if data.probe_train is None or data.probe_test is None:
        return {"skipped": "no labelled probe_train / probe_test splits in the manifest"}
    t0 = time.perf_counter()
    args = (data.probe_train, data.probe_test, device, cfg.probe.C, cfg.seed, workers)
    pre = probe.linear_probe(model.f_v, model.f_a, *args)
    f_v0, f_a0 = random_init()
    rnd = probe.linear_probe(f_v0.to(device), f_a0.to(device), *args)
    res: dict = {mod: {"pretrained": pre[mod], "random_init": rnd[mod]} for mod in ("video", "audio")}
    n_cls = int(torch.cat([data.probe_train.labels, data.probe_test.labels]).max()) + 1
    res.update(features="pooled backbone of the query encoder", classifier="logistic regression",
               train_clips=len(data.probe_train), test_clips=len(data.probe_test),
               chance=100.0 / n_cls, seconds=time.perf_counter() - t0)
    return res


def finish(cfg: Config, out: Path, model, data: Data, device: torch.device, random_init: Callable,
           info: dict, train_time: float, steps_run: int) -> dict:
    """Probes and summary.json. ``info``: provenance, sampler backend, distributed layout."""
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    skips = [json.loads(ln) for ln in (out / "skipped.jsonl").read_text().splitlines() if ln.strip()]
    if not recs or recs[-1]["step"] != cfg.steps:
        raise RuntimeError(f"{out / 'metrics.jsonl'} ends at step {recs[-1]['step'] if recs else 0}, "
                           f"not at the run's last step {cfg.steps}")
    summary: dict = {"method": cfg.method, "steps": recs[-1]["step"], "final_loss": recs[-1]["loss"],
                     "final_loss_mean10": float(np.mean([r["loss"] for r in recs[-10:]])),
                     "negatives": _negatives(recs, data, cfg.M),
                     "probe": _probe(cfg, model, data, device, random_init, info["cpu"]["workers"])}
    summary["data"] = {**{k: v for k, v in data.info.items() if k != "excluded"},
                       "left_out": data.info.get("excluded", []),
                       "skipped_while_training": len(skips),
                       "skip_reasons": dict(Counter(s["reason"].split(":")[0] for s in skips))}
    mean = lambda key: float(np.mean([r.get(key, 0.0) for r in recs]))  # noqa: E731
    summary["time"] = {
        "train_seconds": train_time,
        "steps_per_second": steps_run / train_time if train_time > 0 and steps_run else None,  # this session
        "data_per_step": mean("time_data"),
        "compute_per_step": mean("time_compute"),
        "sampler_per_step": mean("time_sampler"),
        "comm_per_step": mean("time_comm"),
    }
    summary["warnings"] = _warnings(recs)
    summary.update(info)
    summary["config"] = cfg.to_dict()
    checkpoint.write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
