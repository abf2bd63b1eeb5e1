"""Active negative sampling for contrastive learning (CM-ACC §3.2, Alg. 1 l.14-30).

Public API, usable from any MoCo-style code::

    idx = cmacc.sampling.select(pool_keys, queries, num, embedding="gradient",
                                exclude=in_queue, generator=g)
    queue.enqueue(pool_keys[idx])

``pool_keys`` (N x d) are the candidates' keys from the key encoder of one modality,
``queries`` (M x d) the current queries of the modality that will be contrasted against them
(for CM-ACC: audio queries choose video negatives, and vice versa).

Embeddings (``embedding=``):
  "gradient"      last-layer gradient embeddings r_n (x) k_n under pseudo-labels (Eq. 5-6),
                  k-means++ seeding over them with exact factorised distances (the paper);
  "feature"       k-means++ over the keys themselves (Fig. 2's feature embedding);
  "key_gradient"  k-means++ over sum_j r_nj q_j, the gradient w.r.t. the key (released code);
  "ohem"          the ``num`` rows with the largest pseudo-label loss (Table 5);
  "random"        ``num`` rows uniformly without replacement (a pool-based random control).

Randomness comes only from ``generator`` (or an explicit ``noise`` tensor of Exp(1) draws):
the same generator state gives the same picks, on every backend.
"""
from __future__ import annotations

import functools
import logging
import math
import numbers
import os

import torch

from ..choices import BACKENDS, EMBEDDINGS
from . import cpu
from .kmeanspp import exp_noise, kmeanspp, race
from .posterior import PseudoPosterior, gradient_embeddings, gradient_factors, key_gradient, pseudo_posterior

__all__ = [
    "EMBEDDINGS", "BACKENDS", "NonFiniteInput", "select", "resolve_backend", "pseudo_posterior", "PseudoPosterior",
    "gradient_factors", "gradient_embeddings", "key_gradient", "kmeanspp", "exp_noise", "race",
]

log = logging.getLogger(__name__)

ENV_BACKEND = "CMACC_SAMPLER_BACKEND"


class NonFiniteInput(ValueError):
    """pool_keys or queries hold NaN or Inf: an upstream model diverged (picks would be noise)."""


def _triton_available(device: torch.device) -> tuple[bool, str]:
    try:
        from cmacc import kernels  # noqa: F401  (installed from the top-level kernels/ folder)
    except ImportError as e:
        return False, f"cmacc.kernels could not be imported ({e})"
    return kernels.available(device)


def resolve_backend(backend: str = "auto", device: torch.device | str = "cpu") -> str:
    """Which implementation runs: 'torch' (the reference), 'numba' (CPU) or 'triton' (CUDA).

    Precedence: an explicit ``backend`` argument, else the ``CMACC_SAMPLER_BACKEND``
    environment variable, else auto = Triton on CUDA tensors, numba's fused rounds on CPU
    tensors, torch otherwise. Asking for a backend where it cannot run raises; there is no
    silent fallback.
    """
    device = torch.device(device)
    if backend == "auto":
        backend = os.environ.get(ENV_BACKEND, "auto") or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"{ENV_BACKEND}={backend!r}: must be one of {list(BACKENDS)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda" and _triton_available(device)[0]:
            return "triton"
        return "numba" if device.type == "cpu" and cpu.available()[0] else "torch"
    if backend == "numba":
        ok, why = cpu.available()
        if device.type != "cpu" or not ok:
            raise RuntimeError(f"sampler backend 'numba' cannot run on {device}: "
                               f"{why or 'it runs on CPU tensors only'}")
    if backend == "triton":
        ok, why = _triton_available(device)
        if not ok:
            raise RuntimeError(f"sampler backend 'triton' cannot run on {device}: {why}")
    return backend


def _as_tensor(name: str, x, device: torch.device | None = None) -> torch.Tensor | None:
    """torch tensors pass; numpy arrays and (nested) lists are converted (numpy: without a copy)."""
    if x is None or isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (list, tuple)) or type(x).__module__ == "numpy":
        try:
            t = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name} cannot be read as a tensor: {e}") from None
        return t if device is None else t.to(device)
    raise TypeError(f"{name} must be a torch.Tensor, numpy array or list, got {type(x).__name__}")


def _inputs(pool_keys, queries, num, exclude, temperature, noise):
    """Accept numpy arrays, lists and integer-like ``num`` consistently; refuse the rest by name."""
    pool_keys = _as_tensor("pool_keys", pool_keys)
    device = pool_keys.device
    queries = _as_tensor("queries", queries, device)
    noise = _as_tensor("noise", noise, device)
    exclude = _as_tensor("exclude", exclude, device)
    if exclude is not None and exclude.dtype != torch.bool:
        raise ValueError(f"exclude must be a bool mask of shape ({pool_keys.shape[0]},) (True = never pick), got "
                         f"{exclude.dtype} {tuple(exclude.shape)}; for a list of indices set mask[indices] = True")
    if isinstance(num, bool) or not isinstance(num, numbers.Integral):
        raise ValueError(f"num must be a non-negative int, got {num!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0 (Eq. 5 uses 1), got {temperature!r}")
    return pool_keys, queries, int(num), exclude, float(temperature), noise


def _check(pool_keys, queries, num, embedding, exclude, noise):
    if embedding not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {list(EMBEDDINGS)}, got {embedding!r}")
    if pool_keys.dim() != 2:
        raise ValueError(f"pool_keys must be N x d, got shape {tuple(pool_keys.shape)}")
    n, d = pool_keys.shape
    if not pool_keys.is_floating_point():
        raise TypeError(f"pool_keys must be floating point, got {pool_keys.dtype}")
    if embedding in ("gradient", "key_gradient", "ohem"):
        if queries is None:
            raise ValueError(f"embedding={embedding!r} needs the queries that define the pseudo-labels")
        if queries.dim() != 2 or queries.shape[1] != d:
            raise ValueError(f"queries must be M x d with d={d} (as pool_keys), got shape {tuple(queries.shape)}")
        if queries.shape[0] < 1:
            raise ValueError("queries must hold at least one query (M >= 1)")
        if queries.device != pool_keys.device:
            raise ValueError(f"queries on {queries.device} but pool_keys on {pool_keys.device}")
    if not isinstance(num, int) or isinstance(num, bool) or num < 0:
        raise ValueError(f"num must be a non-negative int, got {num!r}")
    if exclude is not None:
        if exclude.dtype != torch.bool or exclude.shape != (n,):
            raise ValueError(f"exclude must be a bool mask of shape ({n},), got {exclude.dtype} {tuple(exclude.shape)}")
        if exclude.device != pool_keys.device:
            raise ValueError(f"exclude on {exclude.device} but pool_keys on {pool_keys.device}")
    good_noise = torch.ones((), dtype=torch.bool, device=pool_keys.device)
    if noise is not None:
        rows = 1 if embedding in ("random", "ohem") else num
        if noise.dim() != 2 or noise.shape[0] < rows or noise.shape[1] != n or not noise.is_floating_point():
            raise ValueError(f"noise must be at least {rows} x {n} Exp(1) draws (float), got "
                             f"{noise.dtype} {tuple(noise.shape)}")
        if noise.device != pool_keys.device:
            raise ValueError(f"noise on {noise.device} but pool_keys on {pool_keys.device}")
        good_noise = (noise[:rows] >= 0).all() & torch.isfinite(noise[:rows]).all()  # NaN >= 0 is False
    # One host synchronisation per call (not per round): availability and finiteness.
    finite = torch.isfinite(pool_keys).all()
    if embedding in ("gradient", "key_gradient", "ohem"):
        finite = finite & torch.isfinite(queries).all()
    excluded = exclude.sum() if exclude is not None else torch.zeros((), dtype=torch.long, device=pool_keys.device)
    excluded, finite, good_noise = torch.stack([excluded.long(), finite.long(), good_noise.long()]).tolist()
    available = n - excluded
    if not finite:
        raise NonFiniteInput("pool_keys or queries contain NaN or Inf")
    if not good_noise:
        raise ValueError("noise must hold finite Exp(1) draws >= 0 (it has NaN, Inf or negative values)")
    if num > available:
        raise ValueError(f"cannot pick num={num} distinct rows: only {available} of {n} are not excluded")


def select(pool_keys: torch.Tensor, queries: torch.Tensor | None, num: int, *,
           embedding: str = "gradient", exclude: torch.Tensor | None = None,
           generator: torch.Generator | None = None, backend: str = "auto",
           first: str = "random", temperature: float = 1.0,
           noise: torch.Tensor | None = None, stats=None) -> torch.Tensor:
    """Pick ``num`` distinct rows of ``pool_keys`` as negatives; returns int64 indices (num,).

    pool_keys:   N x d candidate keys (any float dtype; maths in fp32). Every array argument may be a
                 torch tensor, a numpy array or a list (converted with torch.as_tensor onto
                 pool_keys' device); the indices come back as a torch tensor.
    queries:     M x d queries defining the pseudo-label space (unused for feature/random).
    exclude:     bool mask of N, rows that must not be picked (e.g. already in the dictionary: U \\ D).
    generator:   torch.Generator on pool_keys' device; same state => same picks.
    backend:     "auto" | "torch" | "numba" | "triton" (see :func:`resolve_backend`).
    first:       first k-means++ centroid: "random" (paper) or "norm" (BADGE).
    temperature: softmax temperature of the pseudo-posterior (Eq. 5 uses 1); finite and > 0.
    noise:       explicit Exp(1) draws (num x N, finite, >= 0) instead of ``generator``, e.g. to
                 compare backends pick for pick.
    stats:       optional int64 numpy array (num x 5); the numba backend adds, per seeding round,
                 the rows it saw, skipped as excluded/picked, pruned by each bound, and computed
                 (``cmacc.sampling.cpu.STATS``). Other backends leave it untouched.
    """
    pool_keys, queries, num, exclude, temperature, noise = _inputs(pool_keys, queries, num, exclude, temperature,
                                                                   noise)
    _check(pool_keys, queries, num, embedding, exclude, noise)
    impl = resolve_backend(backend, pool_keys.device)
    n = pool_keys.shape[0]
    if noise is None and embedding != "ohem":
        noise = exp_noise(1 if embedding == "random" else num, n, generator=generator,
                          device=pool_keys.device)
    if impl == "triton":
        from cmacc import kernels
        return kernels.select(pool_keys, queries, num, embedding=embedding, exclude=exclude,
                              first=first, temperature=temperature, noise=noise)
    seeding = kmeanspp
    if impl == "numba":
        seeding = functools.partial(cpu.kmeanspp, stats=stats)
    return select_reference(pool_keys, queries, num, embedding=embedding, exclude=exclude, first=first,
                            temperature=temperature, noise=noise, seeding=seeding)


def select_reference(pool_keys, queries, num, *, embedding, exclude, first, temperature, noise, seeding=kmeanspp):
    """Plain-PyTorch implementation of :func:`select` (the reference every fast path matches).
    ``seeding``: the k-means++ implementation (the reference, or the CPU twin cmacc.sampling.cpu)."""
    n = pool_keys.shape[0]
    unavailable = torch.zeros(n, dtype=torch.bool, device=pool_keys.device) if exclude is None else exclude
    if embedding == "random":  # uniform without replacement: the num smallest Exp(1) draws
        score = (-noise[0]).masked_fill(unavailable, float("-inf"))
        return score.topk(num).indices
    if embedding == "ohem":  # top-num by pseudo-label loss CE(p_n, y_n)
        loss = pseudo_posterior(pool_keys, queries, temperature).loss
        return loss.masked_fill(unavailable, float("-inf")).topk(num).indices
    if embedding == "gradient":
        a, b = gradient_factors(pool_keys, queries, temperature)
        return seeding(num, noise, a=a, b=b, exclude=exclude, first=first)
    x = pool_keys if embedding == "feature" else key_gradient(pool_keys, queries, temperature)
    return seeding(num, noise, x=x, exclude=exclude, first=first)
