"""Triton fast paths of the active sampler (installed as ``cmacc.kernels``).

One file per op, each with its plain-PyTorch reference twin beside the kernel:

  pseudo_posterior.py  logits + softmax + pseudo-label + residual + norms in one pass
  kmeanspp.py          k-means++ seeding, one fused launch per round (distance, running
                       minimum, exclusion, exponential-race draw), no host synchronisation

:func:`select` is the Triton implementation behind ``cmacc.sampling.select(backend="triton")``;
it mirrors ``cmacc.sampling.select_reference`` step for step.

Kernels run on CUDA devices, or on the CPU through Triton's interpreter when
``TRITON_INTERPRET=1`` is set before Triton is first imported (slow; CI uses it for tests).
"""
from __future__ import annotations

import os

import torch

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # read once: Triton reads it at import
try:
    import triton  # noqa: F401
    _IMPORT_ERROR: str | None = None
except ImportError as e:  # pragma: no cover - exercised only where triton is absent
    _IMPORT_ERROR = str(e)

__all__ = ["available", "select"]


def available(device: torch.device | str) -> tuple[bool, str]:
    """(can the kernels run on ``device``, why not)."""
    device = torch.device(device)
    if _IMPORT_ERROR is not None:
        return False, f"triton is not installed ({_IMPORT_ERROR}); pip install triton"
    if device.type == "cuda":
        return True, ""
    if _INTERPRET:
        return True, ""
    return False, ("Triton kernels need a CUDA device; on the CPU only Triton's interpreter runs them "
                   "(set TRITON_INTERPRET=1 before importing triton; slow, meant for tests)")


def select(pool_keys: torch.Tensor, queries: torch.Tensor | None, num: int, *, embedding: str,
           exclude: torch.Tensor | None, first: str, temperature: float,
           noise: torch.Tensor | None) -> torch.Tensor:
    """Triton implementation of ``cmacc.sampling.select`` (arguments already validated there)."""
    from .kmeanspp import kmeanspp
    from .pseudo_posterior import pseudo_posterior

    n = pool_keys.shape[0]
    unavailable = torch.zeros(n, dtype=torch.bool, device=pool_keys.device) if exclude is None else exclude
    if embedding == "random":  # no arithmetic to fuse: the num smallest Exp(1) draws
        return (-noise[0]).masked_fill(unavailable, float("-inf")).topk(num).indices
    if embedding == "feature":
        return kmeanspp(num, noise, x=pool_keys, exclude=exclude, first=first)
    a, _, loss, s, _ = pseudo_posterior(pool_keys, queries, temperature)
    if embedding == "ohem":
        return loss.masked_fill(unavailable, float("-inf")).topk(num).indices
    if embedding == "gradient":
        return kmeanspp(num, noise, a=a, b=pool_keys, exclude=exclude, first=first, s=s)
    # key_gradient: e_n = sum_j a_nj q_j, a plain GEMM
    return kmeanspp(num, noise, x=a @ queries.float(), exclude=exclude, first=first)
