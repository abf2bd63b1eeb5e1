"""Which bank rows a clip meets: uniform negatives outside an excluded set (AVID's sampler) and
AVID-CMA's positive sets by cross-modal agreement."""
from __future__ import annotations

import torch

from ..registry import AGREEMENTS


def draw_outside(n: int, excluded: torch.Tensor, K: int, generator: torch.Generator | None) -> torch.Tensor:
    """K indices per row, uniform over 0..n-1 without the row's ``excluded`` ids (rows x E, sorted,
    distinct), with replacement (as AVID's alias sampler). r ~ U{0..n-E-1} is shifted past every
    excluded id: after sorting, id e_j is the j-th one skipped, so r maps to r + #{j: e_j - j <= r}."""
    rows, E = excluded.shape
    r = torch.randint(n - E, (rows, K), generator=generator, device=generator.device if generator else "cpu")
    r = r.to(excluded.device)
    ref = excluded - torch.arange(E, device=excluded.device)  # non-decreasing
    return r + (r.unsqueeze(2) >= ref.unsqueeze(1)).sum(2)


@torch.no_grad()
def agreement_topk(bank_v: torch.Tensor, bank_a: torch.Tensor, k: int, agreement: str = "consensus",
                   chunk: int | None = None) -> torch.Tensor:
    """AVID-CMA's positive sets: for every clip i the k clips j != i of highest agreement between
    the two banks' similarities (consensus: min; union: max; video / audio: one bank's), sorted by
    index. n x k int64, computed in row chunks: chunk x n similarities at a time (default: about
    2^27 of them, 0.5 GB in fp32, whatever n -- 74 rows at AudioSet's 1.8 M clips)."""
    if agreement not in AGREEMENTS:
        raise ValueError(f"agreement must be one of {AGREEMENTS}, got {agreement!r}")
    n = bank_v.shape[0]
    chunk = chunk or max(1, min(1024, 2**27 // n))
    out = torch.empty(n, k, dtype=torch.long, device=bank_v.device)
    for s in range(0, n, chunk):
        rows = torch.arange(s, min(n, s + chunk), device=bank_v.device)
        sim_v, sim_a = bank_v[rows] @ bank_v.T, bank_a[rows] @ bank_a.T  # chunk x n
        sim = {"consensus": torch.minimum, "union": torch.maximum}.get(agreement)
        sim = sim(sim_v, sim_a) if sim is not None else (sim_v if agreement == "video" else sim_a)
        sim[torch.arange(len(rows)), rows] = float("-inf")  # never the clip itself
        out[rows] = sim.topk(k, dim=1).indices.sort(dim=1).values
    return out
