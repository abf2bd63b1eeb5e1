"""3D-ResNet for video clips (B x 3 x T x H x W), after Hara, Kataoka & Satoh (CVPR 2018).

The paper's visual encoder is 3D-ResNet-18: a 7x7x7 stem (temporal stride 1, spatial 2),
3x3x3 max-pool, four stages of BasicBlocks [2, 2, 2, 2] at widths 64-128-256-512, stride 2
in stages 2-4 on T, H and W, global average pool. Projection shortcuts (type B).
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import ResNetBackbone


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


class ResNet3d(ResNetBackbone):
    """Backbone only: returns pooled features (B x widths[-1])."""

    def __init__(self, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), stem_kernel=(7, 7, 7),
                 stem_stride=(1, 2, 2), max_pool: bool = True, in_channels: int = 3,
                 bn_splits: int = 1) -> None:
        super().__init__(3, Conv3d, in_channels, widths, blocks, stem_kernel, stem_stride, max_pool, bn_splits)

    def as_input(self, x):  # x: B x 3 x T x H x W
        if x.dim() != 5:
            raise ValueError(f"video encoder expects B x C x T x H x W, got shape {tuple(x.shape)}")
        return x


VIDEO_ARCHS = {
    "r18": dict(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), stem_kernel=(7, 7, 7)),
    "r10": dict(widths=(64, 128, 256, 512), blocks=(1, 1, 1, 1), stem_kernel=(7, 7, 7)),
    # CPU preset: same topology, narrow and shallow, 3x5x5 stem; trains on 2 cores in minutes.
    "tiny": dict(widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), stem_kernel=(3, 5, 5)),
}
