"""Encoders: backbone -> projection to d -> optional FC layer (§3.3) -> L2 normalisation."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import STAGES, pooled_stages
from .io import load_encoders
from .norm import SplitBatchNorm
from .resnet1d import AUDIO_ARCHS, ResNet1d
from .resnet2d import IMAGE_ARCHS, ResNet2d
from .resnet3d import VIDEO_ARCHS, ResNet3d

__all__ = ["Encoder", "FEATURE_STAGES", "SplitBatchNorm", "build_encoder", "load_encoders", "ResNet1d", "ResNet3d"]
FEATURE_STAGES = STAGES + ("embedding",)


class Encoder(nn.Module):
    """q = normalize(fc(proj(backbone(x)))).

    ``fc`` is the extra FC layer CM-ACC puts "on top of all encoders" (§3.3); it is absent for
    XMoCo (w/o fcl) and SMoCo. ``features`` gives the pooled backbone features that linear
    probes read.
    """

    def __init__(self, backbone: nn.Module, d: int, with_fc: bool, head: str = "linear",
                 bn_splits: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        c = backbone.out_dim
        if head == "linear":  # MoCo v1
            self.proj = nn.Linear(c, d)
        elif head == "mlp":  # MoCo v2 / SimCLR
            self.proj = nn.Sequential(nn.Linear(c, c, bias=False), SplitBatchNorm(c, num_splits=bn_splits),
                                      nn.ReLU(inplace=True), nn.Linear(c, d))
        else:
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
        self.d = d
        self.fc = nn.Linear(d, d) if with_fc else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def stage_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pooled outputs of the stem and of every residual stage, and the unit embedding q
        (``forward``): what the linear protocols evaluate, in the order of FEATURE_STAGES."""
        out = pooled_stages(self.backbone, x)
        z = self.proj(out["layer4"])
        out["embedding"] = F.normalize(self.fc(z) if self.fc is not None else z, dim=1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.proj(self.backbone(x))
        if self.fc is not None:
            z = self.fc(z)
        return F.normalize(z, dim=1)  # B x d, unit norm


def build_encoder(modality: str, arch: str, *, d: int = 128, with_fc: bool = True,
                  bn_splits: int = 1, mel_bands: int = 80, head: str = "linear") -> Encoder:
    if arch in IMAGE_ARCHS and modality in ("video", "audio"):  # images in either slot
        backbone = ResNet2d(in_channels=1, **IMAGE_ARCHS[arch], bn_splits=bn_splits)
    elif modality == "video":
        if arch not in VIDEO_ARCHS:
            raise ValueError(f"unknown video encoder {arch!r}; choose from {sorted(VIDEO_ARCHS) + sorted(IMAGE_ARCHS)}")
        backbone = ResNet3d(**VIDEO_ARCHS[arch], bn_splits=bn_splits)
    elif modality == "audio":
        if arch not in AUDIO_ARCHS:
            raise ValueError(f"unknown audio encoder {arch!r}; choose from {sorted(AUDIO_ARCHS) + sorted(IMAGE_ARCHS)}")
        backbone = ResNet1d(in_channels=mel_bands, **AUDIO_ARCHS[arch], bn_splits=bn_splits)
    else:
        raise ValueError(f"modality must be 'video' or 'audio', got {modality!r}")
    return Encoder(backbone, d, with_fc, head=head, bn_splits=bn_splits)
