"""3D-ResNet for video clips (B x 3 x T x H x W), after Hara, Kataoka & Satoh (CVPR 2018).

The paper's visual encoder is 3D-ResNet-18: a 7x7x7 stem (temporal stride 1, spatial 2),
3x3x3 max-pool, four stages of BasicBlocks [2, 2, 2, 2] at widths 64-128-256-512, stride 2
in stages 2-4 on T, H and W, global average pool. Projection shortcuts (type B).
"""
from __future__ import annotations

import itertools
from functools import partial

import torch
from torch import nn

from .blocks import kaiming_init, stages
from .norm import SplitBatchNorm


def _cpu_bf16_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() and torch.get_autocast_cpu_dtype() == torch.bfloat16


class Conv3d(nn.Conv3d):
    """nn.Conv3d that stays fp32 under CPU bf16 autocast.

    oneDNN's bf16 3-D convolution on CPUs with AVX512-BF16 (PyTorch 2.13, 2-core EPYC here)
    returns weight gradients that change between identical calls and are badly wrong for some
    shapes: relative error 0.76 against PyTorch's reference bf16 kernel for the tiny encoder's
    layers.1.conv2, and occasionally NaN, which ended bf16 training runs after 110-195 steps
    (see pytorch/pytorch#169688 for a wrong-result case of the same kernel family). Elsewhere --
    GPUs, fp32, fp16 -- it is plain nn.Conv3d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and _cpu_bf16_autocast():
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class ResNet3d(nn.Module):
    """Backbone only: returns pooled features (B x widths[-1])."""

    def __init__(self, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), stem_kernel=(7, 7, 7),
                 stem_stride=(1, 2, 2), max_pool: bool = True, in_channels: int = 3,
                 bn_splits: int = 1) -> None:
        super().__init__()
        norm = partial(SplitBatchNorm, num_splits=bn_splits)
        pad = tuple(k // 2 for k in stem_kernel)
        self.stem = nn.Sequential(
            Conv3d(in_channels, widths[0], stem_kernel, stem_stride, pad, bias=False),
            norm(widths[0]), nn.ReLU(inplace=True),
            nn.MaxPool3d(3, 2, 1) if max_pool else nn.Identity(),
        )
        self.stage_ends = tuple(itertools.accumulate(blocks))  # block index after each stage
        self.layers = stages(Conv3d, widths, blocks, norm)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.out_dim = widths[-1]
        kaiming_init(self, nn.Conv3d)

    def forward(self, x):  # x: B x 3 x T x H x W
        if x.dim() != 5:
            raise ValueError(f"video encoder expects B x C x T x H x W, got shape {tuple(x.shape)}")
        return self.pool(self.layers(self.stem(x))).flatten(1)  # B x C


VIDEO_ARCHS = {
    "r18": dict(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), stem_kernel=(7, 7, 7)),
    "r10": dict(widths=(64, 128, 256, 512), blocks=(1, 1, 1, 1), stem_kernel=(7, 7, 7)),
    # CPU preset: same topology, narrow and shallow, 3x5x5 stem; trains on 2 cores in minutes.
    "tiny": dict(widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), stem_kernel=(3, 5, 5)),
}
