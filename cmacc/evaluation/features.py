"""Frozen-encoder features of several crops per item, for every stage the protocols read.

Training crops are drawn with the pretraining augmentation stream (``tag="train"``, crop k from
epoch k), test crops are the dataset's uniformly spaced evaluation clips (``tag="eval"``, clip k
of ``crops``). Encoders run in eval mode (running BatchNorm statistics), in batches, on the
evaluation device; the result is numpy, per stage: items x crops x C.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ..data import ClipRequest
from ..data.real import Finisher, ManifestAV, collate


def crop_requests(items: np.ndarray, crops: int, train: bool, modality: str | None = None) -> list[ClipRequest]:
    """Item-major: item i's crops are rows i*crops .. i*crops + crops - 1. ``modality``: load only
    that stream (video datasets)."""
    if train:
        return [ClipRequest(int(i), epoch=k, tag="train", modality=modality) for i in items for k in range(crops)]
    return [ClipRequest(int(i), tag="eval", clip=k, modality=modality) for i in items for k in range(crops)]


def batches(dataset, reqs: list[ClipRequest], batch_size: int, num_workers: int, device: torch.device,
            skipped: list | None = None):
    """Collated batches of ``reqs`` in order, finished (DALI clips decoded) in this process; clips
    a video dataset had to replace under data.on_corrupt=skip are appended to ``skipped``."""
    chunks = [reqs[i:i + batch_size] for i in range(0, len(reqs), batch_size)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=chunks, collate_fn=collate, num_workers=num_workers)
    finish = Finisher(dataset if isinstance(dataset, ManifestAV) else None, device, max_batch=batch_size)
    for b in loader:
        b = finish(b)
        if skipped is not None:
            skipped += b.get("skipped", [])
        yield b


@torch.no_grad()
def crop_features(encoder: torch.nn.Module, dataset, key: str, items: np.ndarray, crops: int, *, train: bool,
                  device: torch.device, batch_size: int = 64, num_workers: int = 0,
                  desc: str = "features", progress: bool = True, skipped: list | None = None) -> dict[str, np.ndarray]:
    """{stage: items x crops x C} of ``encoder.stage_features`` on ``dataset[...][key]``."""
    reqs = crop_requests(items, crops, train, modality=key)
    was = encoder.training
    encoder.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    try:
        for b in tqdm(batches(dataset, reqs, batch_size, num_workers, device, skipped), desc=desc,
                      total=-(-len(reqs) // batch_size), disable=not progress, leave=False):
            for stage, f in encoder.stage_features(b[key].to(device, non_blocking=True)).items():
                parts.setdefault(stage, []).append(f.float().cpu())
    finally:
        encoder.train(was)
    return {s: torch.cat(p).numpy().reshape(len(items), crops, -1) for s, p in parts.items()}
