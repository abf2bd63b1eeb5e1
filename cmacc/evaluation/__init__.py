"""Downstream evaluation as the papers measure it (``cmacc eval TASK``) and encoder export.

    cmacc export RUN_DIR --out encoders.pt
    cmacc eval esc50 --data ROOT [--protocol linear|finetune|baseline] [--encoders F | --run DIR | --random-init]
    cmacc eval ucf101|hmdb51 --data ROOT [--splits DIR] --split 1|2|3|all      (fine-tuning)
    cmacc eval retrieval --dataset ucf101|hmdb51 --data ROOT --split 1
    cmacc eval synthetic [--run DIR]                                           (the built-in probe splits)

One module per idea: encoders (what is measured), folds (splits without source leakage),
features (frozen crops per stage), linear (scikit-learn classifiers), finetune (end to end),
baseline (log-mel/MFCC), one module per task family (esc50, video), report (JSON, table, PNG).
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch

from ..system import cores
from ..system.allocator import keep_freed_memory
from ..config import Config, ConfigError
from . import card, encoders, report

log = logging.getLogger("cmacc")
TASKS = {"esc50": ("linear", "finetune", "baseline"), "ucf101": ("finetune",), "hmdb51": ("finetune",),
         "retrieval": ("cosine",), "synthetic": ("linear",)}


def device_of(cfg: Config) -> torch.device:
    d = cfg.run.device
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device={d}: no CUDA device here (--set run.device=cpu)")
    return torch.device(d)


def run(task: str, cfg: Config, *, data: str, protocol: str, out: Path, encoders_file: str | None = None,
        run_dir: str | None = None, random_init: bool = False, cv: int | None = None, split: str = "1",
        splits: str | None = None, dataset: str = "ucf101") -> dict:
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
        results = [_esc50(cfg, data, protocol, enc, device, cv)]
    elif task == "synthetic":
        results = _synthetic(cfg, enc, device)
    else:
        results = [_video(task, cfg, Path(data), enc, device, out, splits=splits, split=split, dataset=dataset)]
    for i, res in enumerate(results):
        res.update(encoder="log-mel/MFCC + logistic regression" if enc is None else enc.name,
                   encoder_source=None if enc is None else enc.source, arch=None if enc is None else enc.arch,
                   device=str(device), cpu=budget.to_dict(), time_s=time.perf_counter() - t0)
        res = results[i] = {"protocol_card": card.card(task, res["protocol"], cfg, enc, res), **res}
        path = report.write(res, out, cfg.to_dict(), device)
        print(card.text(res["protocol_card"]))
        for w in res["protocol_card"]["warnings"]:
            log.warning("%s", w)
        print(report.table(res))
        for s in res["data"]["skipped"]:
            print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
        print(f"wrote {path} and {path.with_suffix('.png')}")
    return results[0] if len(results) == 1 else {r["task"]: r for r in results}


def _synthetic(cfg: Config, enc, device) -> list[dict]:
    """The built-in data's probe splits, both modalities, every stage: the summary probe's code
    (cmacc.evaluation.probe.evaluate: one centred clip per video, logistic regression with probe.C)."""
    from . import probe
    from ..data.build import build_data
    if cfg.data.name != "synthetic":
        raise ConfigError("cmacc eval synthetic evaluates the built-in data (data.name=synthetic)")
    data = build_data(cfg, device)
    classes = [f"class {c}" for c in range(cfg.data.num_classes)]
    out = []
    for key, f in (("video", enc.f_v), ("audio", enc.f_a)):
        stages = probe.evaluate(f, key, data.probe_train, data.probe_test, device, C=cfg.probe.C, seed=cfg.seed,
                                num_workers=cfg.data.num_workers, progress=cfg.run.progress)
        res = report.summarise(f"synthetic_{key}", "linear", [{"fold": "probe", "stages": stages}],
                               [data.probe_test.labels.numpy()], classes)
        res.update(how=f"probe_train ({len(data.probe_train)} videos) -> probe_test ({len(data.probe_test)}), "
                       f"one centred clip each, logistic regression (C={cfg.probe.C})",
                   data={"name": "synthetic", "seed": cfg.seed, "classes": cfg.data.num_classes, "skipped": [],
                         "fingerprint": _synthetic_fingerprint(cfg)})
        out.append(res)
    return out


def _synthetic_fingerprint(cfg: Config) -> dict:
    from ..data.fingerprint import settings_digest
    d = cfg.data
    settings = {k: getattr(d, k) for k in ("num_classes", "probe_train_size", "probe_test_size", "frames", "size",
                                           "mel_bands", "audio_frames", "nuisance")} | {"seed": cfg.seed}
    return {"digest": settings_digest(settings), "rows": d.probe_train_size + d.probe_test_size,
            "classes": d.num_classes}


def _esc50(cfg: Config, data, protocol: str, enc, device, cv) -> dict:
    from . import esc50
    raw = esc50.evaluate(cfg, data, protocol, enc, device, cv=cv, progress=cfg.run.progress)
    clips = raw["clips"]
    res = report.summarise("esc50", protocol, raw["per_fold"], [clips.labels[f.test] for f in raw["folds"]],
                           clips.classes)
    from ..data.fingerprint import manifest_digest
    from ..data.manifest import Manifest, Row
    rows = [Row(p, clips.classes[y], f"fold{f}") for p, y, f in zip(clips.paths, clips.labels, clips.folds)]
    res.update(how=raw["how"], data={"root": str(data), "csv": str(clips.csv), "clips": len(clips.paths),
                                     "classes": clips.classes, "skipped": clips.skipped,
                                     "fingerprint": manifest_digest(Manifest(rows), Path(data).resolve())},
               preprocessing={"mel": raw["mel"], "crops": cfg.eval.crops, "seconds": cfg.eval.audio_seconds})
    return res


def _video(task: str, cfg: Config, root: Path, enc, device, out: Path, *, splits, split, dataset) -> dict:
    """ucf101 / hmdb51 fine-tuning, or retrieval on ``dataset``, over the requested official splits."""
    from . import video
    name = dataset if task == "retrieval" else task
    ids = video.split_ids(split)
    read = [video.read_split(name, root, Path(splits) if splits else None, k, cfg.data.on_corrupt) for k in ids]
    records = video.scan([m for m, _ in read], cfg, out)
    per_split, labels_of, skipped, classes = [], [], [], None
    for k, (m, missing) in zip(ids, read):
        train, test, excluded = video.datasets(m, records, cfg, device)
        classes = train.classes
        step = video.retrieval_split if task == "retrieval" else video.finetune_split
        per_split.append(step(cfg, train, test, enc, device, k, cfg.run.progress, skipped))
        labels_of.append(test.labels.numpy())
        skipped += [x | {"split": k} for x in missing + excluded]
    if task == "retrieval":
        res = report.summarise_retrieval(per_split, labels_of, classes, video.RETRIEVAL_STAGE)
    else:
        res = report.summarise(task, "finetune", per_split, labels_of, classes)
        res["clip_mean"] = float(sum(f["clip_accuracy"] for f in res["folds"]) / len(res["folds"]))
    how = f"official split(s) {', '.join(map(str, ids))} of {name} (train on trainlist, test on testlist)"
    from ..data.fingerprint import manifest_digest
    from ..data.manifest import Manifest
    every = Manifest([r for m, _ in read for r in m.rows])
    res.update(how=how, dataset=name, data={"root": str(root), "classes": classes,
                                            "fingerprint": manifest_digest(every, root.resolve()),
                                            "skipped": [{"path": str(x[0]), "reason": x[1]} if isinstance(x, tuple)
                                                        else x for x in skipped]},
               preprocessing={"frames": cfg.eval.frames, "fps": cfg.eval.fps, "size": cfg.eval.size,
                              "crops": cfg.eval.crops})
    return res

