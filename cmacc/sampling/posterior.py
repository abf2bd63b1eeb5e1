"""Pseudo-posterior (Eq. 5), pseudo-labels and gradient embeddings (Eq. 6) -- reference.

For pool keys ``k_n`` (N x d) and the other modality's queries ``q_j`` (M x d):

    l_nj = k_n . q_j / T                      logits, N x M  (T = 1 in the paper)
    p_n  = softmax_j(l_nj)                     pseudo-posterior (Eq. 5)
    y_n  = argmax_j p_nj                       pseudo-label (Alg. 1 l.17)
    r_n  = p_n - e_{y_n}                       residual = dCE/dl_n
    g_n  = dCE/dQ = (r_n / T) (x) k_n          gradient embedding (Eq. 6), M*d values

treating the queries as the weights of the last linear layer that produces the logits
(``l_n = Q k_n / T``), as BADGE (Ash et al., 2020) does. ``g_n`` is never materialised on the
fast paths: its factors ``a_n = r_n / T`` and ``b_n = k_n`` are enough for exact distances.

Precision: ``p_y - 1`` cancels catastrophically when the pseudo-label is confident (and in
bf16 always). Everything here is computed in fp32 (fp64 if the inputs are fp64) from
``z_j = exp(l_j - l_max)``, whose entry at the pseudo-label is exactly 1:

    Z' = sum_{j != y} z_j,   p_j = z_j / (1 + Z'),   r_y = -Z' / (1 + Z'),
    CE(p, y) = log1p(Z'),    ||r||^2 = (sum_{j != y} z_j^2 + Z'^2) / (1 + Z')^2
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs, fp64 if any input is fp64."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


@dataclass
class PseudoPosterior:
    residual: torch.Tensor  # r = p - e_y, N x M, fp32
    label: torch.Tensor  # pseudo-label y, N, int64
    loss: torch.Tensor  # CE(p, y) = -log p_y, N (OHEM's score)
    residual_sqnorm: torch.Tensor  # ||r||^2, N


def pseudo_posterior(pool_keys: torch.Tensor, queries: torch.Tensor,
                     temperature: float = 1.0) -> PseudoPosterior:
    """Eq. 5 and Alg. 1 l.15-18 for every row of ``pool_keys``; see the module docstring."""
    dt = compute_dtype(pool_keys, queries)
    logits = pool_keys.to(dt) @ queries.to(dt).T  # l: N x M
    if temperature != 1.0:
        logits = logits / temperature
    label = logits.argmax(dim=1)  # y: N (first maximum on ties)
    z = torch.exp(logits - logits.gather(1, label[:, None]))  # N x M, z_y == 1 exactly
    z.scatter_(1, label[:, None], 0.0)  # keep only j != y
    z_other = z.sum(dim=1)  # Z': N
    denom = 1.0 + z_other
    residual = z / denom[:, None]  # p_j for j != y
    residual.scatter_(1, label[:, None], (-z_other / denom)[:, None])  # r_y = p_y - 1 = -Z'/(1+Z')
    sqnorm = ((z * z).sum(dim=1) + z_other * z_other) / (denom * denom)
    return PseudoPosterior(residual, label, torch.log1p(z_other), sqnorm)


def gradient_factors(pool_keys: torch.Tensor, queries: torch.Tensor,
                     temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) with g_n = a_n (x) b_n: a = r / T (N x M), b = k (N x d), both fp32."""
    post = pseudo_posterior(pool_keys, queries, temperature)
    dt = post.residual.dtype
    return post.residual / temperature, pool_keys.to(dt)


def key_gradient(pool_keys: torch.Tensor, queries: torch.Tensor,
                 temperature: float = 1.0) -> torch.Tensor:
    """dCE/dk_n = sum_j r_nj q_j / T (N x d): the embedding of CM-ACC's released code."""
    post = pseudo_posterior(pool_keys, queries, temperature)
    return post.residual @ queries.to(post.residual.dtype) / temperature


def gradient_embeddings(pool_keys: torch.Tensor, queries: torch.Tensor,
                        temperature: float = 1.0) -> torch.Tensor:
    """Materialised g_n = vec((r_n / T) (x) k_n), N x (M*d), row-major (j, c) -> j*d + c.

    The pre-2023 BADGE form, kept as the reference for the factorised distances and for the
    sampler benchmark. N x M*d: 38,400 x 16,384 fp32 is 2.5 GB -- use on small pools only.
    """
    a, b = gradient_factors(pool_keys, queries, temperature)
    return (a[:, :, None] * b[:, None, :]).reshape(a.shape[0], -1)
