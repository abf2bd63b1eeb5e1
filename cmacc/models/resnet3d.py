"""3D-ResNet for video clips (B x 3 x T x H x W), after Hara, Kataoka & Satoh (CVPR 2018).

The paper's visual encoder is 3D-ResNet-18: a 7x7x7 stem (temporal stride 1, spatial 2),
3x3x3 max-pool, four stages of BasicBlocks [2, 2, 2, 2] at widths 64-128-256-512, stride 2
in stages 2-4 on T, H and W, global average pool. Projection shortcuts (type B).
"""
from __future__ import annotations

from functools import partial

from torch import nn

from .blocks import kaiming_init, stages
from .norm import SplitBatchNorm


class ResNet3d(nn.Module):
    """Backbone only: returns pooled features (B x widths[-1])."""

    def __init__(self, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), stem_kernel=(7, 7, 7),
                 stem_stride=(1, 2, 2), max_pool: bool = True, in_channels: int = 3,
                 bn_splits: int = 1) -> None:
        super().__init__()
        norm = partial(SplitBatchNorm, num_splits=bn_splits)
        pad = tuple(k // 2 for k in stem_kernel)
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, widths[0], stem_kernel, stem_stride, pad, bias=False),
            norm(widths[0]), nn.ReLU(inplace=True),
            nn.MaxPool3d(3, 2, 1) if max_pool else nn.Identity(),
        )
        self.layers = stages(nn.Conv3d, widths, blocks, norm)
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
