"""Split BatchNorm: single-device emulation of per-GPU BatchNorm, for MoCo's shuffling BN.

MoCo (He et al., 2020) shuffles the key encoder's mini-batch across GPUs so that a query and
its positive key are normalised with statistics of different sample subsets; otherwise the
model can "cheat" through BN statistics. On one device, MoCo's authors emulate the per-GPU
statistics by splitting the batch into ``num_splits`` groups, each normalised with its own
statistics (their CIFAR demo, ``--bn-splits``), and shuffle the key batch before encoding.
``num_splits=1`` is ordinary (Sync)BatchNorm. In eval mode it is ordinary BatchNorm.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SplitBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over (B, C, *) with statistics computed per group of B / num_splits samples.

    Group ``j`` holds samples ``j, j + s, j + 2s, ...`` (s = num_splits). Running statistics are
    the mean over groups of each group's update, as in MoCo's demo.
    """

    def __init__(self, num_features: int, num_splits: int = 1, **kw) -> None:
        super().__init__(num_features, **kw)
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        self.num_splits = num_splits

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (B, C, ...), got {input.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.num_splits
        if s == 1 or not self.training:
            return super().forward(x)
        B, C = x.shape[:2]
        if B % s:
            raise ValueError(f"SplitBatchNorm: batch of {B} does not split into {s} equal groups")
        # (B, C, *) -> (B/s, s*C, *): sample b lands in channel block b % s
        xs = x.reshape(B // s, s * C, *x.shape[2:])
        rm = self.running_mean.repeat(s)
        rv = self.running_var.repeat(s)
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        momentum = 0.0 if self.momentum is None else self.momentum
        out = F.batch_norm(
            xs, rm, rv,
            self.weight.repeat(s) if self.affine else None,
            self.bias.repeat(s) if self.affine else None,
            True, momentum, self.eps,
        )
        with torch.no_grad():
            self.running_mean.copy_(rm.view(s, C).mean(0))
            self.running_var.copy_(rv.view(s, C).mean(0))
        return out.reshape(x.shape)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_splits={self.num_splits}"
