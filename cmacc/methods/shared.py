"""Parts both families' models are built from: the query path DDP wraps, the sampler's options,
and the queries' spread (the collapse watch's cheap sign)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models import Encoder


@dataclass
class SamplerOptions:
    """How active negatives are chosen (passed to cmacc.sampling.select)."""

    first: str = "random"  # first k-means++ centroid: random (Alg. 3 l.2) | norm (BADGE)
    temperature: float = 1.0  # pseudo-posterior softmax temperature (Eq. 5 has none)
    backend: str = "torch"  # resolved backend: torch | numba | triton
    exclude_batch: bool = True  # the mini-batch's own clips are positives, never negatives


class QueryEncoders(nn.Module):
    """f_v and f_a as one module: the part with gradients, which DistributedDataParallel wraps."""

    def __init__(self, f_v: Encoder, f_a: Encoder) -> None:
        super().__init__()
        self.f_v, self.f_a = f_v, f_a

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.f_v(video), self.f_a(audio)


class WrappableQueries:
    """Mixin: ``encode_queries`` is QueryEncoders(f_v, f_a), or DDP around it after wrap_queries.
    Kept out of the module tree so that the state dict holds f_v / f_a once."""

    def _init_queries(self) -> None:
        self.__dict__["encode_queries"] = QueryEncoders(self.f_v, self.f_a)

    def wrap_queries(self, wrap) -> nn.Module:
        """Replace the query path by ``wrap(QueryEncoders(f_v, f_a))``, e.g. DDP; returns it."""
        self.__dict__["encode_queries"] = wrap(QueryEncoders(self.f_v, self.f_a))
        return self.encode_queries


@torch.no_grad()
def spread(q: torch.Tensor) -> torch.Tensor:
    """Root mean squared distance of unit queries to their mean: 1 for a spread batch, 0 for a collapsed one."""
    return (1 - q.float().mean(0).square().sum()).clamp_min(0).sqrt()
