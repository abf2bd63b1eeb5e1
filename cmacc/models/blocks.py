"""The ResNet BasicBlock (He et al., 2016), for any convolution dimensionality."""
from __future__ import annotations

import itertools
from functools import partial

import torch
from torch import nn

from .norm import SplitBatchNorm


class BasicBlock(nn.Module):
    """conv3-BN-ReLU-conv3-BN plus the (projected, "type B") shortcut, then ReLU.

    ``conv`` is nn.Conv1d (audio) or nn.Conv3d (video); ``norm`` builds a BatchNorm.
    """

    def __init__(self, conv, cin: int, cout: int, stride: int, norm) -> None:
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = conv(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(conv(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def stages(conv, widths, blocks, norm) -> nn.Sequential:
    """Four ResNet stages: ``blocks[i]`` BasicBlocks of width ``widths[i]``, stride 2 entering
    every stage but the first."""
    layers, cin = [], widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
        for j in range(n):
            layers.append(BasicBlock(conv, cin, w, 2 if (i > 0 and j == 0) else 1, norm))
            cin = w
    return nn.Sequential(*layers)


def kaiming_init(module: nn.Module, conv) -> None:
    for mod in module.modules():
        if isinstance(mod, conv):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")


class ResNetBackbone(nn.Module):
    """stem (conv, BN, ReLU, optional 3/2 max-pool) -> residual stages -> global average pool.

    Returns pooled features (B x widths[-1]). ``dims`` (1, 2 or 3) picks the pooling layers,
    ``conv`` the convolution class; subclasses check their input in :meth:`as_input`. With
    ``pool_grid=g`` the last stage is average-pooled to a g x ... x g grid and flattened instead
    (B x widths[-1] * g**dims): features that keep where things are (per-cell image probes)."""

    def __init__(self, dims: int, conv, in_channels: int, widths, blocks, stem_kernel, stem_stride,
                 max_pool: bool, bn_splits: int, pool_grid: int = 1) -> None:
        super().__init__()
        norm = partial(SplitBatchNorm, num_splits=bn_splits)
        pad = tuple(k // 2 for k in stem_kernel) if isinstance(stem_kernel, (tuple, list)) else stem_kernel // 2
        max_pools = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
        avg_pools = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
        self.in_channels = in_channels
        self.stem = nn.Sequential(
            conv(in_channels, widths[0], stem_kernel, stem_stride, pad, bias=False),
            norm(widths[0]), nn.ReLU(inplace=True),
            max_pools[dims](3, 2, 1) if max_pool else nn.Identity(),
        )
        self.stage_ends = tuple(itertools.accumulate(blocks))  # block index after each stage
        self.layers = stages(conv, widths, blocks, norm)
        self.pool = avg_pools[dims](pool_grid)
        self.out_dim = widths[-1] * pool_grid ** dims
        kaiming_init(self, (nn.Conv1d, nn.Conv2d, nn.Conv3d))

    def as_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.layers(self.stem(self.as_input(x)))).flatten(1)  # B x C


STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")  # AVID Table 1's blocks: stem, residual stages


def pooled_stages(backbone: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Globally average-pooled outputs of the stem and of each residual stage (B x C each), in
    STAGES order; the last is pooled as the backbone pools it, so it equals ``backbone(x)``."""
    h = backbone.stem(backbone.as_input(x))
    out = {STAGES[0]: h.flatten(2).mean(2)}
    start = 0
    for name, end in zip(STAGES[1:], backbone.stage_ends, strict=True):
        h = backbone.layers[start:end](h)
        out[name] = h.flatten(2).mean(2)
        start = end
    out[STAGES[-1]] = backbone.pool(h).flatten(1)
    return out
