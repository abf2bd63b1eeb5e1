"""Config validation: every impossible or absurd value is refused with a ConfigError naming its key.

The keys every method shares are checked here; each family adds its own (its ``checks`` module,
found through cmacc.methods.registry), so a method's sizes are judged only where they mean something."""
from __future__ import annotations

import importlib
import math
import re
from pathlib import Path

from ..methods.registry import FAMILIES
from .schema import CHOICES, IMAGE_PRESETS, LEAVES, Config, ConfigError, RunConfig, flatten

TAU = (1e-3, 10.0)  # contrastive and pseudo-posterior temperatures: beyond these the softmax is one-hot or flat
LR_MAX = 1.0


def need(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {msg}")


def validate(cfg: Config) -> None:
    """Raise ConfigError naming the first impossible value."""

    flat = flatten(cfg.to_dict())
    for key, choices in CHOICES.items():
        need(flat[key] in choices, key, f"must be one of {list(choices)}, got {flat[key]!r}")
    for key, tp in LEAVES.items():
        if tp is float:
            need(math.isfinite(flat[key]), key, f"must be a finite number, got {flat[key]}")
    need(0 <= cfg.seed < 2**63, "seed", f"must lie in [0, 2**63), got {cfg.seed}")
    need(cfg.M >= 2, "M", f"mini-batch must hold at least 2 clips, got {cfg.M}")
    need(0 < cfg.lr <= LR_MAX, "lr", f"Adam's learning rate must lie in (0, {LR_MAX:g}] (every weight moves by "
         f"about lr per step; the paper uses 1e-3), got {cfg.lr}")
    need(cfg.weight_decay >= 0, "weight_decay", f"must be >= 0, got {cfg.weight_decay}")
    need(cfg.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {cfg.warmup_steps}")
    need(cfg.steps >= 1, "steps", f"must be >= 1, got {cfg.steps}")
    need(cfg.pool_refresh >= 0, "pool_refresh", f"must be >= 0 (0 = once per epoch), got {cfg.pool_refresh}")
    _validate_data(cfg)
    mo = cfg.model
    need(mo.d >= 2, "model.d", f"must be >= 2, got {mo.d}")
    need(mo.bn_splits >= 0, "model.bn_splits", f"must be >= 0 (0 = one group per rank), got {mo.bn_splits}")
    if mo.bn_splits:
        need(cfg.M % mo.bn_splits == 0, "model.bn_splits",
             f"M={cfg.M} must split into model.bn_splits={mo.bn_splits} equal groups")
        need(cfg.M // mo.bn_splits >= 2, "model.bn_splits",
             f"each BN group needs >= 2 clips; M={cfg.M} / bn_splits={mo.bn_splits} leaves {cfg.M // mo.bn_splits}")
    need(TAU[0] <= cfg.sampler.temperature <= 1 / TAU[0], "sampler.temperature",
         f"must lie in [{TAU[0]:g}, {1 / TAU[0]:g}] (Eq. 5 uses 1), got {cfg.sampler.temperature}")
    need(cfg.probe.C > 0, "probe.C", f"must be positive, got {cfg.probe.C}")
    importlib.import_module(FAMILIES[cfg.spec.family] + ".checks").validate(cfg)  # the method's family
    if cfg.init_from:
        need((Path(cfg.init_from) / "checkpoints").is_dir(), "init_from",
             f"{cfg.init_from} is not a cmacc run folder (no checkpoints/ in it)")
    _validate_eval(cfg.eval)
    _validate_run(cfg.run)


def int_list(text: str, key: str) -> list[int]:
    try:
        return [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{key}: expected comma-separated integers, got {text!r}") from None


def float_list(text: str, key: str) -> list[float]:
    try:
        return [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{key}: expected comma-separated numbers, got {text!r}") from None


def _validate_eval(e) -> None:
    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"eval.{key}: {msg}")
    for key in ("crops", "epochs", "batch_size", "frames", "size"):
        need(getattr(e, key) >= 1, key, f"must be >= 1, got {getattr(e, key)}")
    need(e.cv >= 2, "cv", f"cross-validation needs >= 2 folds, got {e.cv}")
    need(0 <= e.head_epochs <= e.epochs, "head_epochs", f"must lie in [0, eval.epochs={e.epochs}], got {e.head_epochs}")
    for key in ("audio_seconds", "svm_C", "lr", "fps"):
        need(getattr(e, key) > 0, key, f"must be positive, got {getattr(e, key)}")
    need(e.weight_decay >= 0, "weight_decay", f"must be >= 0, got {e.weight_decay}")
    need(all(0 < m < 1 for m in float_list(e.lr_milestones, "eval.lr_milestones")), "lr_milestones",
         f"fractions of the epochs in (0, 1), got {e.lr_milestones!r}")
    ks = int_list(e.retrieval_k, "eval.retrieval_k")
    need(bool(ks) and all(k >= 1 for k in ks), "retrieval_k", f"positive integers, got {e.retrieval_k!r}")


def _validate_data(cfg: Config) -> None:
    d = cfg.data
    need(d.num_classes >= 2, "data.num_classes", f"must be >= 2, got {d.num_classes}")
    need(d.train_size >= cfg.M, "data.train_size",
         f"train_size={d.train_size} is smaller than one mini-batch M={cfg.M}")
    for key in ("probe_train_size", "probe_test_size"):
        v = getattr(d, key)
        need(v >= d.num_classes, f"data.{key}", f"must hold at least one clip per class ({d.num_classes}), got {v}")
    need(d.frames >= 1, "data.frames", f"must be >= 1, got {d.frames}")
    need(d.size >= 16, "data.size", f"crops smaller than 16 px do not survive the encoders' strides, got {d.size}")
    need(d.mel_bands >= 8, "data.mel_bands", f"must be >= 8, got {d.mel_bands}")
    if d.name == "omniglot":
        need(bool(d.omniglot) and Path(d.omniglot).is_file(), "data.omniglot",
             f"data.name=omniglot needs an Omniglot images_background*.zip, got {d.omniglot!r}")
        need(1 <= d.chars <= 9, "data.chars", f"must be 1..9 (cells of the 3 x 3 canvas), got {d.chars}")
        need(cfg.model.video in IMAGE_PRESETS and cfg.model.audio in IMAGE_PRESETS, "model.video",
             f"Spatial-MultiOmniglot pairs images: set model.video and model.audio to one of {IMAGE_PRESETS}, "
             f"got {cfg.model.video!r} / {cfg.model.audio!r}")
    elif d.name == "synthetic":
        ta = d.audio_frames or 4 * d.frames
        need(ta >= 8, "data.audio_frames", f"must be >= 8, got {ta}")
        need(ta % d.frames == 0, "data.audio_frames",
             f"must be a multiple of data.frames={d.frames} so audio and video windows align, got {ta}")
    else:
        need(bool(d.manifest), "data.manifest", "data.name=manifest needs the path of a manifest CSV")
        need(Path(d.manifest).is_file(), "data.manifest", f"{d.manifest} does not exist")
        need(not d.scan or Path(d.scan).is_file(), "data.scan", f"{d.scan} does not exist")
        need(d.audio_frames == 0, "data.audio_frames",
             "is derived for real videos (frames / fps seconds of mel frames); leave it 0")
    need(d.fps > 0, "data.fps", f"must be positive, got {d.fps}")
    need(d.eval_clips >= 1, "data.eval_clips", f"must be >= 1, got {d.eval_clips}")
    need(d.dali_threads >= 1, "data.dali_threads", f"must be >= 1, got {d.dali_threads}")
    a = cfg.audio
    need(a.sample_rate >= 1000, "audio.sample_rate", f"must be >= 1000 Hz, got {a.sample_rate}")
    need(0 < a.hop_length <= a.win_length <= a.n_fft, "audio.hop_length",
         f"needs 0 < hop_length <= win_length <= n_fft, got {a.hop_length}, {a.win_length}, {a.n_fft}")
    need(0 <= a.fmin < a.fmax <= a.sample_rate / 2, "audio.fmax",
         f"needs 0 <= fmin < fmax <= sample_rate / 2, got fmin={a.fmin}, fmax={a.fmax}, sample_rate={a.sample_rate}")
    need(d.nuisance >= 0, "data.nuisance", f"must be >= 0, got {d.nuisance}")
    need(d.num_workers >= 0, "data.num_workers", f"must be >= 0, got {d.num_workers}")


def _validate_run(r: RunConfig) -> None:
    need(re.fullmatch(r"auto|cpu|cuda(:\d+)?", r.device) is not None, "run.device",
         f"must be auto, cpu, cuda or cuda:N, got {r.device!r}")
    need(r.threads >= 0, "run.threads", f"must be >= 0, got {r.threads}")
    need(r.checkpoint_every >= 1, "run.checkpoint_every", f"must be >= 1, got {r.checkpoint_every}")
    need(r.keep_checkpoints >= 0, "run.keep_checkpoints", f"must be >= 0, got {r.keep_checkpoints}")
    need(r.dist_timeout > 0, "run.dist_timeout", f"must be positive (seconds), got {r.dist_timeout}")
    need(r.check_sync_every >= 0, "run.check_sync_every", f"must be >= 0, got {r.check_sync_every}")
