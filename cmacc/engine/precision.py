"""run.precision: autocast for the encoders and the loss, and fp16's loss scaler.

The sampler always computes in fp32 (cmacc.sampling upcasts its inputs). On the CPU, bf16 keeps
3-D convolutions in fp32 (cmacc.models.resnet3d.Conv3d: oneDNN's bf16 conv3d gives wrong weight
gradients here).
"""
from __future__ import annotations

import contextlib

import torch

from ..config import Config, ConfigError
from ..methods.protocol import Amp

PRECISION = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(cfg: Config, device: torch.device) -> Amp:
    """run.precision: autocast for the encoders and the loss (the sampler upcasts to fp32)."""
    dtype = PRECISION[cfg.run.precision]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, enabled: bool):
    """fp16's loss scaler (torch.amp.GradScaler; torch < 2.3 has it for CUDA only)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    if enabled and device.type != "cuda":
        raise ConfigError("config key 'run.precision': fp16 on CPU needs torch >= 2.3")
    return torch.cuda.amp.GradScaler(enabled=enabled)
