"""ResNet with 1-D kernels over a log-mel spectrogram treated as an 80-channel signal.

CM-ACC §5: "we adapt ResNet-18 to audio signals by replacing 2D convolution kernels with 1D
kernels ... We treat the mel-spectrograms as an 80-channel 1D signal." Input B x 80 x T.
"""
from __future__ import annotations

import itertools
from functools import partial

from torch import nn

from .blocks import kaiming_init, stages
from .norm import SplitBatchNorm


class ResNet1d(nn.Module):
    """Backbone only: returns pooled features (B x widths[-1])."""

    def __init__(self, in_channels: int = 80, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2),
                 stem_kernel: int = 7, stem_stride: int = 2, max_pool: bool = True,
                 bn_splits: int = 1) -> None:
        super().__init__()
        norm = partial(SplitBatchNorm, num_splits=bn_splits)
        self.in_channels = in_channels
        self.stem = nn.Sequential(
            nn.Conv1d(in_channels, widths[0], stem_kernel, stem_stride, stem_kernel // 2, bias=False),
            norm(widths[0]), nn.ReLU(inplace=True),
            nn.MaxPool1d(3, 2, 1) if max_pool else nn.Identity(),
        )
        self.stage_ends = tuple(itertools.accumulate(blocks))  # block index after each stage
        self.layers = stages(nn.Conv1d, widths, blocks, norm)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.out_dim = widths[-1]
        kaiming_init(self, nn.Conv1d)

    def forward(self, x):  # x: B x 80 x T
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"audio encoder expects B x {self.in_channels} x T (mel bands as channels), "
                             f"got shape {tuple(x.shape)}")
        return self.pool(self.layers(self.stem(x))).flatten(1)  # B x C


AUDIO_ARCHS = {
    "r18": dict(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), stem_kernel=7),
    "r10": dict(widths=(64, 128, 256, 512), blocks=(1, 1, 1, 1), stem_kernel=7),
    # CPU preset: short mel windows (tens of frames) keep their length through the stem.
    "tiny": dict(widths=(32, 64, 96, 128), blocks=(1, 1, 1, 1), stem_kernel=3, stem_stride=1, max_pool=False),
}
