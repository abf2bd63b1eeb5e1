"""Every contrastive loss of the harness, in one place.

``infonce``        CM-ACC's Eq. 7 (MoCo's InfoNCE): one positive and a shared dictionary.
``nce``            the NCE of Wu et al. (2018) that AVID uses, with a fixed partition estimate Z.
``infonce_multi``  InfoNCE averaged over several positives per row (AVID with loss=infonce, CMA).
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def infonce(q: torch.Tensor, k_pos: torch.Tensor, D: torch.Tensor, tau: float):
    """Eq. 7: -log exp(q.k+/tau) / sum_{j=0..K} exp(q.k_j/tau); returns (loss, top-1 acc)."""
    l_pos = (q * k_pos).sum(dim=1, keepdim=True)  # l_pos: M x 1
    l_neg = q @ D.T  # l_neg: M x K
    logits = torch.cat([l_pos, l_neg], dim=1) / tau  # M x (1+K)
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # the positive is column 0
    loss = F.cross_entropy(logits, labels)
    acc = (logits.argmax(dim=1) == 0).float().mean()
    return loss, acc.detach()


def nce(pos: torch.Tensor, neg: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """NCE of Wu et al. (2018) as AVID uses it. pos: m x P scores (already / tau), neg: m x K.
    -mean_p log h(s_p) - sum_n log(1 - h(s_n)), h(s) = e^s / (e^s + K Z), averaged over rows;
    written with softplus: -log h(s) = softplus(log KZ - s), -log(1 - h(s)) = softplus(s - log KZ)."""
    log_kz = math.log(neg.shape[1]) + torch.log(Z.to(pos.dtype))
    return (F.softplus(log_kz - pos).mean(1) + F.softplus(neg - log_kz).sum(1)).mean()


def infonce_multi(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """-log e^{s_p} / (e^{s_p} + sum_n e^{s_n}), averaged over the P positives and the rows."""
    lse_neg = torch.logsumexp(neg, dim=1, keepdim=True)  # m x 1
    return (torch.logaddexp(pos, lse_neg) - pos).mean()


def nce_flat(s: float, K: int, Z: float) -> float:
    """:func:`nce` of one row when every score equals s: softplus(log KZ - s) + K softplus(s - log KZ)."""
    log_kz = math.log(K) + math.log(Z)
    softplus = lambda x: max(x, 0.0) + math.log1p(math.exp(-abs(x)))  # noqa: E731
    return softplus(log_kz - s) + K * softplus(s - log_kz)
