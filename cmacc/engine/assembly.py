"""What a pretraining run is assembled from, besides its data: the per-step learning rates, the
encoder pair, and the method's model (built by its family, cmacc.methods.protocol.Family)."""
from __future__ import annotations

import numpy as np
import torch

from .. import methods
from ..config import Config
from ..models import build_encoder
from ..system.dist import Comm


def lr_schedule(cfg: Config) -> np.ndarray:
    """Per-step learning rates: linear warm-up, then constant or cosine to zero (precomputed).

    The rate is the configured one whatever the number of ranks: M is the global batch, so
    adding GPUs changes nothing to rescale."""
    s = np.arange(cfg.steps, dtype=np.float64)
    lr = np.full(cfg.steps, cfg.lr)
    if cfg.lr_schedule == "cosine":
        span = max(1, cfg.steps - cfg.warmup_steps)
        lr = cfg.lr * 0.5 * (1 + np.cos(np.pi * np.clip(s - cfg.warmup_steps, 0, None) / span))
    if cfg.warmup_steps:
        lr = np.where(s < cfg.warmup_steps, cfg.lr * (s + 1) / cfg.warmup_steps, lr)
    return lr


def build_encoders(cfg: Config, seed: int | None = None, bn_splits: int | None = None):
    """(f_v, f_a) initialised from ``seed`` (default cfg.seed): the same weights every time.

    bn_splits: split-BN groups per process (default: bn_layout for one process)."""
    torch.manual_seed(cfg.seed if seed is None else seed)
    kw = dict(d=cfg.model.d, with_fc=cfg.fc != "none", head=cfg.model.head,
              bn_splits=bn_splits if bn_splits is not None else (cfg.model.bn_splits or 1))
    f_v = build_encoder("video", cfg.model.video, **kw)
    f_a = build_encoder("audio", cfg.model.audio, mel_bands=cfg.data.mel_bands, **kw)
    return f_v, f_a


def build_model(cfg: Config, backend: str, comm: Comm | None = None, bn_splits: int | None = None,
                n_train: int | None = None):
    """The method's model, built by its family (n_train: training clips, default data.train_size)."""
    return methods.family(cfg.method).build(cfg, build_encoders(cfg, bn_splits=bn_splits), comm or Comm(),
                                            n_train if n_train is not None else cfg.data.train_size, backend)
