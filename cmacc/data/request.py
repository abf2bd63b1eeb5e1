"""What a dataset is asked for: one clip of one video, with its augmentation stream."""
from __future__ import annotations

from dataclasses import dataclass

TAGS = {"train": 0, "pool": 1, "queue": 2, "eval": 3, "bank": 4}  # independent augmentation streams (bank: AVID bank_init=encode)


@dataclass(frozen=True)
class ClipRequest:
    """Clip of video ``index``; augmentation drawn from (seed, epoch, index, tag)."""

    index: int
    epoch: int = 0
    tag: str = "train"  # train | pool | queue | bank: random augmentation;  eval: deterministic
    modality: str | None = None  # "video" or "audio" to produce only that stream
    clip: int = 0  # eval: which of the uniformly spaced clips
