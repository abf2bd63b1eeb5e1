"""ResNet with 1-D kernels over a log-mel spectrogram treated as an 80-channel signal.

CM-ACC §5: "we adapt ResNet-18 to audio signals by replacing 2D convolution kernels with 1D
kernels ... We treat the mel-spectrograms as an 80-channel 1D signal." Input B x 80 x T.
"""
from __future__ import annotations

from functools import partial

from torch import nn

from .norm import SplitBatchNorm


class BasicBlock1d(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv1d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv1d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


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
        layers, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock1d(cin, w, 2 if (i > 0 and j == 0) else 1, norm))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.out_dim = cin
        for mod in self.modules():
            if isinstance(mod, nn.Conv1d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")

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
