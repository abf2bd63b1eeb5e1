"""2-D ResNet for images, usable in either modality's slot (``model.video=image``,
``model.audio=image``): the Spatial-MultiOmniglot reproduction (cmacc.reproduce) pairs two images.

Input B x C x 1 x H x W (a one-frame clip, as the datasets deliver images) or B x C x H x W.
"""
from __future__ import annotations

from torch import nn

from .blocks import ResNetBackbone


class ResNet2d(ResNetBackbone):
    """Backbone only: returns pooled features (B x widths[-1], or x 9 with ``pool_grid=3``)."""

    def __init__(self, in_channels: int = 1, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), stem_kernel: int = 5,
                 stem_stride: int = 2, max_pool: bool = True, bn_splits: int = 1, pool_grid: int = 1) -> None:
        super().__init__(2, nn.Conv2d, in_channels, widths, blocks, stem_kernel, stem_stride, max_pool, bn_splits,
                         pool_grid)

    def as_input(self, x):
        if x.dim() == 5 and x.shape[2] == 1:
            x = x[:, :, 0]
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"image encoder expects B x {self.in_channels} x H x W (or one-frame clips "
                             f"B x {self.in_channels} x 1 x H x W), got shape {tuple(x.shape)}")
        return x


IMAGE_ARCHS = {
    # 96 x 96 canvases: stride 4 before the stages (24 x 24), 3 x 3 after them; CPU-sized like "tiny"
    "image": dict(widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), stem_kernel=5, stem_stride=2, max_pool=True),
    # the same, pooled per cell of the 3 x 3 Spatial-MultiOmniglot grid (the last map is 3 x 3 at 96 px)
    # and flattened: 128 x 9 features that say which cell holds what. A global average mixes the
    # cells, so a per-cell probe (and the contrastive task at k > 1) must recover position from
    # padding effects alone.
    "image_cells": dict(widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), stem_kernel=5, stem_stride=2, max_pool=True,
                        pool_grid=3),
}
