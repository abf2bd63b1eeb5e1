"""Per-step diagnostics for metrics.jsonl beyond the loss: how many classes the enqueued negatives
cover (the paper's Fig. 2 measure), how class-clustered the pool is, and digests of the picks and
of the state every rank must hold identically."""
from __future__ import annotations

import hashlib

import torch
from torch import nn


def replicated_state(model: nn.Module, written_v: torch.Tensor, written_a: torch.Tensor,
                     parameters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What must be bitwise identical on every rank after a step: the ids written into the
    dictionaries, every buffer (queues, pool, banks, BN statistics) and the family's ``parameters``."""
    named = {"picks_v": written_v, "picks_a": written_a}
    named.update({f"buffer {k}": v for k, v in model.named_buffers()})
    named.update(parameters)
    return named


def ids_digest(*ids: torch.Tensor) -> str:
    return hashlib.sha1(b"".join(t.cpu().numpy().tobytes() for t in ids)).hexdigest()[:16]


@torch.no_grad()
def class_separation(keys: torch.Tensor, labels: torch.Tensor) -> float:
    """Nearest-class-centroid accuracy (%) of unit keys: how class-clustered the sampler's
    candidates are (diagnostic only; uses labels). Active sampling can only cover more classes
    than random draws when this is high."""
    labels = labels.to(keys.device)
    keys, labels = keys[labels >= 0], labels[labels >= 0]
    _, labels = torch.unique(labels, return_inverse=True)  # sparse ids (Omniglot tuples: up to 55^k) -> 0..C-1
    C = int(labels.max()) + 1
    cen = torch.zeros(C, keys.shape[1], device=keys.device, dtype=keys.dtype).index_add_(0, labels, keys)
    pred = (keys @ torch.nn.functional.normalize(cen, dim=1).T).argmax(1)
    return float(100.0 * (pred == labels).float().mean())


def false_negative_rate(labels: torch.Tensor, query_ids: torch.Tensor, dict_ids: torch.Tensor) -> float | None:
    """Mean over the queries of the fraction of dictionary entries that share the query's latent
    label: negatives that are really positives (class collisions, Arora et al. 2019). None
    without labels. dict_ids: K ids shared by every query, or one row of ids per query (memory banks)."""
    if dict_ids.dim() == 2:
        q, d = labels[query_ids.cpu()], labels[dict_ids.cpu()]
        keep = q >= 0
        if not keep.any():
            return None
        return float((q[keep, None] == d[keep]).float().mean())
    q, d = labels[query_ids.cpu()], labels[dict_ids[dict_ids >= 0].cpu()]
    q, d = q[q >= 0], d[d >= 0]
    if not len(q) or not len(d):
        return None
    return float((q[:, None] == d[None, :]).float().mean())


def count_categories(labels: torch.Tensor, ids: torch.Tensor) -> int | None:
    ids = ids[ids >= 0].cpu()
    lab = labels[ids]
    lab = lab[lab >= 0]
    return int(lab.unique().numel()) if len(lab) else None
