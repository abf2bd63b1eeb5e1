"""ResNet with 1-D kernels over a log-mel spectrogram treated as an 80-channel signal.

CM-ACC §5: "we adapt ResNet-18 to audio signals by replacing 2D convolution kernels with 1D
kernels ... We treat the mel-spectrograms as an 80-channel 1D signal." Input B x 80 x T.
"""
from __future__ import annotations

from torch import nn

from .blocks import ResNetBackbone


class ResNet1d(ResNetBackbone):
    """Backbone only: returns pooled features (B x widths[-1])."""

    def __init__(self, in_channels: int = 80, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2),
                 stem_kernel: int = 7, stem_stride: int = 2, max_pool: bool = True,
                 bn_splits: int = 1) -> None:
        super().__init__(1, nn.Conv1d, in_channels, widths, blocks, stem_kernel, stem_stride, max_pool, bn_splits)

    def as_input(self, x):  # x: B x 80 x T
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"audio encoder expects B x {self.in_channels} x T (mel bands as channels), "
                             f"got shape {tuple(x.shape)}")
        return x


AUDIO_ARCHS = {
    "r18": dict(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), stem_kernel=7),
    "r10": dict(widths=(64, 128, 256, 512), blocks=(1, 1, 1, 1), stem_kernel=7),
    # CPU preset: short mel windows (tens of frames) keep their length through the stem.
    "tiny": dict(widths=(32, 64, 96, 128), blocks=(1, 1, 1, 1), stem_kernel=3, stem_stride=1, max_pool=False),
}
