"""Downstream evaluation as the papers measure it (``cmacc eval TASK``) and encoder export.

    cmacc export RUN_DIR --out encoders.pt
    cmacc eval esc50 --data ROOT [--protocol linear|finetune|baseline] [--encoders F | --run DIR | --random-init]

One module per idea: encoders (what is measured), folds (splits without source leakage),
features (frozen crops per stage), linear (scikit-learn classifiers), finetune (end to end),
baseline (log-mel/MFCC), one module per task (esc50), report (JSON, table, PNG).
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch

from .. import cores
from ..allocator import keep_freed_memory
from ..config import Config, ConfigError
from . import encoders, report

log = logging.getLogger("cmacc")
TASKS = {"esc50": ("linear", "finetune", "baseline")}


def device_of(cfg: Config) -> torch.device:
    d = cfg.run.device
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device={d}: no CUDA device here (--set run.device=cpu)")
    return torch.device(d)


def run(task: str, cfg: Config, *, data: str, protocol: str, out: Path, encoders_file: str | None = None,
        run_dir: str | None = None, random_init: bool = False, cv: int | None = None) -> dict:
    """Evaluate, write OUT/<task>.json and .png, print the table; returns the result."""
    if protocol not in TASKS[task]:
        raise ConfigError(f"--protocol {protocol!r} is not one of {task}'s: {', '.join(TASKS[task])}")
    budget = cores.plan(cfg.run.threads, cfg.data.num_workers)
    cores.apply(budget)
    keep_freed_memory(cfg.run.keep_freed_memory)
    device = device_of(cfg)
    if protocol == "baseline":
        if encoders_file or run_dir or random_init:
            raise ConfigError("--protocol baseline uses no encoder: drop --encoders/--run/--random-init")
        enc = None
    else:
        enc = encoders.resolve(cfg, encoders=encoders_file, run=run_dir, random=random_init)
        enc.f_v.to(device), enc.f_a.to(device)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if task == "esc50":
        from . import esc50
        raw = esc50.evaluate(cfg, data, protocol, enc, device, cv=cv, progress=cfg.run.progress)
        clips = raw["clips"]
        res = report.summarise(task, protocol, raw["per_fold"], [clips.labels[f.test] for f in raw["folds"]],
                               clips.classes)
        res.update(how=raw["how"], data={"root": str(data), "csv": str(clips.csv), "clips": len(clips.paths),
                                         "classes": clips.classes, "skipped": clips.skipped},
                   preprocessing={"mel": raw["mel"], "crops": cfg.eval.crops, "seconds": cfg.eval.audio_seconds})
    res.update(encoder="log-mel/MFCC + logistic regression" if enc is None else enc.name,
               encoder_source=None if enc is None else enc.source, arch=None if enc is None else enc.arch,
               device=str(device), cpu=budget.to_dict(), time_s=time.perf_counter() - t0)
    path = report.write(res, out, cfg.to_dict(), device)
    print(report.table(res))
    for s in res["data"]["skipped"]:
        print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return res
