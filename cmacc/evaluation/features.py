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
from ..data.real import collate


def crop_requests(items: np.ndarray, crops: int, train: bool) -> list[ClipRequest]:
    """Item-major: item i's crops are rows i*crops .. i*crops + crops - 1."""
    if train:
        return [ClipRequest(int(i), epoch=k, tag="train") for i in items for k in range(crops)]
    return [ClipRequest(int(i), tag="eval", clip=k) for i in items for k in range(crops)]


@torch.no_grad()
def crop_features(encoder: torch.nn.Module, dataset, key: str, items: np.ndarray, crops: int, *, train: bool,
                  device: torch.device, batch_size: int = 64, num_workers: int = 0,
                  desc: str = "features", progress: bool = True) -> dict[str, np.ndarray]:
    """{stage: items x crops x C} of ``encoder.stage_features`` on ``dataset[...][key]``."""
    reqs = crop_requests(items, crops, train)
    batches = [reqs[i:i + batch_size] for i in range(0, len(reqs), batch_size)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                                         num_workers=num_workers)
    was = encoder.training
    encoder.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    try:
        for b in tqdm(loader, total=len(batches), desc=desc, disable=not progress, leave=False, file=None):
            x = b[key]
            x = torch.stack(x) if isinstance(x, list) else x
            for stage, f in encoder.stage_features(x.to(device, non_blocking=True)).items():
                parts.setdefault(stage, []).append(f.float().cpu())
    finally:
        encoder.train(was)
    return {s: torch.cat(p).numpy().reshape(len(items), crops, -1) for s, p in parts.items()}
