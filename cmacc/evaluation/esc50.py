"""``cmacc eval esc50``: ESC-50 (or ESC-10) sound classification with the audio encoder.

Layout (as released): ``ROOT/meta/esc50.csv`` (``ROOT/esc50.csv`` also accepted) with columns
filename, fold, category, src_file, and the clips in ``ROOT/audio/``. Audio becomes log-mel with
the encoder's own pretraining parameters (librosa; cmacc.data.audio), cut into ``eval.crops``
crops of ``eval.audio_seconds``. Protocols:

    linear    (AVID Tables 1b/2b) frozen encoder; features of every stage; linear SVM; accuracy
              per stage and fold; the best stage is the one with the best mean over folds
              (chosen on the test folds, as the tables report their best block);
    finetune  (CM-ACC Table 1) encoder + linear head trained end to end per fold;
    baseline  log-mel/MFCC statistics + logistic regression, same crops and folds, no encoder.

Splits: the csv's folds (train on the others, test on one), or ``eval.cv`` folds grouped by
``src_file`` when the csv holds fewer than two (cmacc.evaluation.folds). Missing or unreadable
clips are skipped and listed under ``data.on_corrupt=skip`` (the default), or stop the run.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..data.audio import MelCache, MelSpec
from ..data.build import mel_cache_dir
from ..data.manifest import Manifest, ManifestError, Row
from ..data.real import AudioClips
from ..errors import InputError
from . import baseline, features, finetune, linear
from .encoders import Encoders
from .folds import make_folds

NEED = ("filename", "fold", "category", "src_file")


@dataclass
class Clips:
    paths: list[Path]
    labels: np.ndarray  # class index per clip
    folds: np.ndarray
    groups: np.ndarray  # src_file
    classes: list[str]
    csv: Path
    skipped: list[dict]


def find_csv(root: Path) -> Path:
    for p in (root / "meta" / "esc50.csv", root / "esc50.csv"):
        if p.is_file():
            return p
    raise ManifestError(f"{root}: no ESC-50 csv (looked for meta/esc50.csv and esc50.csv)")


def read_clips(root: str | Path, spec: MelSpec, cache_dir: str, on_corrupt: str) -> Clips:
    """The csv's clips whose audio can be read; the others skipped with their reason (or an error).
    Reading them fills the log-mel cache that the crops are then cut from."""
    root = Path(root)
    path = find_csv(root)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing_cols = [c for c in NEED if c not in (reader.fieldnames or ())]
        if missing_cols:
            raise ManifestError(f"{path}: ESC-50 csv needs columns {list(NEED)}; missing {missing_cols}")
        recs = list(enumerate(reader, start=2))
    if not recs:
        raise ManifestError(f"{path}: no clips listed")
    cache, keep, skipped = MelCache(cache_dir, spec), [], []
    for line, r in recs:
        if not r["fold"].strip().lstrip("-").isdigit() or not r["filename"] or not r["category"]:
            raise ManifestError(f"{path}, line {line}: fold must be an integer and filename, category non-empty, "
                                f"got fold={r['fold']!r} filename={r['filename']!r} category={r['category']!r}")
        clip = root / "audio" / r["filename"]
        reason = None
        if not clip.is_file():
            reason = "missing"
        else:
            try:
                cache.get(clip)
            except Exception as e:  # decoding failed: the policy decides
                reason = f"unreadable audio ({type(e).__name__}: {' '.join(str(e).split())[:160]})"
        if reason is None:
            keep.append(r | {"path": clip})
        elif on_corrupt == "error":
            raise InputError(f"{clip}: {reason} (listed in {path}, line {line}); --set data.on_corrupt=skip "
                             f"evaluates without it")
        else:
            skipped.append({"path": str(clip), "line": line, "reason": reason})
    if not keep:
        raise InputError(f"{path}: none of its {len(recs)} clips can be read (first: {skipped[0]['reason']})")
    classes = sorted({r["category"] for r in keep})
    index = {c: i for i, c in enumerate(classes)}
    return Clips([r["path"] for r in keep], np.array([index[r["category"]] for r in keep]),
                 np.array([int(r["fold"]) for r in keep]), np.array([r["src_file"] for r in keep]),
                 classes, path, skipped)


def dataset(clips: Clips, spec: MelSpec, cfg: Config) -> AudioClips:
    rows = [Row(p, clips.classes[y]) for p, y in zip(clips.paths, clips.labels)]
    return AudioClips(Manifest(rows, str(clips.csv)), seconds=cfg.eval.audio_seconds, mel=spec,
                      cache_dir=mel_cache_dir(cfg), seed=cfg.seed, num_clips=cfg.eval.crops,
                      classes=clips.classes)


def evaluate(cfg: Config, root: str | Path, protocol: str, enc: Encoders | None, device: torch.device, *,
             cv: int | None = None, progress: bool = True) -> dict:
    """Per-fold accuracies of ``protocol``; see the module docstring."""
    spec = mel_spec_of(cfg, enc)
    clips = read_clips(root, spec, mel_cache_dir(cfg), cfg.data.on_corrupt)
    folds, how = make_folds(clips.folds, clips.labels, clips.groups, cv=cv, default_cv=cfg.eval.cv,
                            seed=cfg.seed, what=str(clips.csv))
    ds = dataset(clips, spec, cfg)
    items = np.arange(len(clips.paths))
    if protocol == "finetune":
        per_fold = _finetune(cfg, ds, clips, folds, enc, device, progress)
    else:
        per_fold = _linear(cfg, ds, clips, folds, enc, device, protocol, items, progress)
    return {"clips": clips, "folds": folds, "how": how, "per_fold": per_fold, "mel": spec.to_dict()}


def mel_spec_of(cfg: Config, enc: Encoders | None) -> MelSpec:
    """The encoder's pretraining log-mel parameters (an export or run records them), else cfg.audio."""
    a = dict(vars(cfg.audio))
    if enc is not None and enc.source.get("audio"):
        a.update(enc.source["audio"])
    bands = enc.arch["mel_bands"] if enc is not None else cfg.data.mel_bands
    return MelSpec(sample_rate=a["sample_rate"], n_fft=a["n_fft"], win_length=a["win_length"],
                   hop_length=a["hop_length"], n_mels=bands, fmin=a["fmin"], fmax=a["fmax"])


def _linear(cfg, ds, clips, folds, enc, device, protocol, items, progress) -> list[dict]:
    e, nw = cfg.eval, cfg.data.num_workers
    if protocol == "baseline":
        tr = baseline.baseline_features(ds, "audio", items, e.crops, train=True, progress=progress)
        te = baseline.baseline_features(ds, "audio", items, e.crops, train=False, progress=progress)
        classifier = "logreg"
    else:
        kw = dict(device=device, num_workers=nw, progress=progress)
        tr = features.crop_features(enc.f_a, ds, "audio", items, e.crops, train=True, desc="training crops", **kw)
        te = features.crop_features(enc.f_a, ds, "audio", items, e.crops, train=False, desc="test crops", **kw)
        classifier = "svm"
    out = []
    for f in folds:
        stages = {}
        for stage in tr:
            pred, _, warn = linear.fit_predict(tr[stage][f.train], clips.labels[f.train], te[stage][f.test],
                                               classifier=classifier, C=e.svm_C, seed=cfg.seed)
            stages[stage] = {"accuracy": float((pred == clips.labels[f.test]).mean()), "pred": pred,
                             "not_converged": warn}
        out.append({"fold": f.name, "stages": stages})
    return out


def _finetune(cfg, ds, clips, folds, enc, device, progress) -> list[dict]:
    out = []
    for k, f in enumerate(folds):
        model = finetune.Classifier(enc.f_a, len(clips.classes)).to(device)
        losses = finetune.train_epochs(model, ds, "audio", f.train, clips.labels[f.train], cfg.eval, device=device,
                                       seed=cfg.seed + k, num_workers=cfg.data.num_workers,
                                       desc=f"fine-tune {f.name}", progress=progress)
        pred, _, per_crop = finetune.predict(model, ds, "audio", f.test, cfg.eval.crops, device=device,
                                             num_workers=cfg.data.num_workers)
        out.append({"fold": f.name, "stages": {"finetuned": {
            "accuracy": float((pred == clips.labels[f.test]).mean()), "pred": pred,
            "clip_accuracy": float((per_crop.argmax(2) == clips.labels[f.test][:, None]).mean()),
            "train_loss": losses}}})
    return out
