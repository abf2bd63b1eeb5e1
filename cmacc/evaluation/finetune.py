"""End-to-end fine-tuning of one encoder plus a linear head (CM-ACC Table 1, "finetuned end-to-end").

Per split: a fresh copy of the encoder, a linear head on its pooled backbone features, Adam;
the first ``eval.head_epochs`` epochs train the head only (encoder frozen, running BatchNorm
statistics), then everything; the learning rate drops x0.1 at each ``eval.lr_milestones``
fraction of the epochs. Every epoch sees one random training crop per item (the pretraining
augmentation, epoch e's stream). The test prediction averages the *softmax* of the item's
uniformly spaced crops (not their labels). The last epoch's model is reported -- never the best
test epoch.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from ..config import EvalConfig
from ..data import ClipRequest
from ..config.validation import float_list
from .features import batches, crop_requests


class Classifier(nn.Module):
    """encoder backbone -> linear head over the classes."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(encoder.backbone)
        self.head = nn.Linear(self.backbone.out_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def train_epochs(model: Classifier, dataset, key: str, items: np.ndarray, labels: np.ndarray, e: EvalConfig,
                 *, device: torch.device, seed: int, num_workers: int = 0, desc: str = "fine-tune",
                 progress: bool = True, skipped: list | None = None) -> list[float]:
    """Fine-tune in place; returns the mean training loss of every epoch."""
    label_of = dict(zip(items.tolist(), labels.tolist()))
    opt = torch.optim.Adam(model.parameters(), lr=e.lr, weight_decay=e.weight_decay)
    milestones = sorted({max(1, round(f * e.epochs)) for f in float_list(e.lr_milestones, "eval.lr_milestones")})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for epoch in tqdm(range(e.epochs), desc=desc, disable=not progress, leave=False):
        head_only = epoch < e.head_epochs
        model.train()
        model.backbone.train(not head_only)  # head-only warm-up: frozen encoder, running BN statistics
        for p in model.backbone.parameters():
            p.requires_grad_(not head_only)
        order = items[torch.randperm(len(items), generator=g).numpy()]
        total, n = 0.0, 0
        reqs = [ClipRequest(int(i), epoch=epoch, tag="train", modality=key) for i in order]
        for b in batches(dataset, reqs, e.batch_size, num_workers, device, skipped):
            y = torch.tensor([label_of[int(i)] for i in b["index"]], device=device)  # a substitute's own label
            loss = F.cross_entropy(model(b[key].to(device, non_blocking=True)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()) * len(y), n + len(y)
        sched.step()
        losses.append(total / max(1, n))
    for p in model.backbone.parameters():
        p.requires_grad_(True)
    return losses


@torch.no_grad()
def predict(model: Classifier, dataset, key: str, items: np.ndarray, crops: int, *, device: torch.device,
            batch_size: int = 64, num_workers: int = 0, skipped: list | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted class per item, crop-averaged softmax items x classes, every crop's softmax
    items x crops x classes: the Clip@1 view)."""
    model.eval()
    probs = []
    for b in batches(dataset, crop_requests(items, crops, False, modality=key), batch_size, num_workers, device,
                     skipped):
        probs.append(F.softmax(model(b[key].to(device, non_blocking=True)).float(), dim=1).cpu())
    p = torch.cat(probs).numpy().reshape(len(items), crops, -1)
    avg = p.mean(1)  # average of the crops' softmax, not a vote of their labels
    return avg.argmax(1), avg, p
