"""k-means++ seeding (Algorithm 3) with D^2 draws by the exponential race -- reference.

Each round is one pass over the pool: the squared distance of every candidate to the newest
centroid, the running minimum D^2, and the draw. A draw with probability proportional to
w_n equals ``argmax_n w_n / E_n`` with E_n ~ Exp(1) i.i.d. (the exponential race), so given
the same noise tensor every backend picks the same indices, and the draw is an argmax that
fuses with the distance pass -- no cumulative sums, no host synchronisation between rounds.

Embeddings come in two forms:

* plain rows ``x`` (N x D): ``||x_n - x_c||^2 = s_n + s_c - 2 x_n.x_c``, ``s = ||x||^2``;
* rank-1 rows ``g_n = a_n (x) b_n`` given by their factors (N x M, N x d), never
  materialised: ``||g_n - g_c||^2 = s_n + s_c - 2 (a_n.a_c)(b_n.b_c)``, ``s = ||a||^2 ||b||^2``.

Edge cases, all decided without host synchronisation:
* excluded rows (``exclude``) and already chosen rows are never drawn;
* distances are clamped at 0 (the expanded form can round below 0);
* if every remaining candidate sits at D^2 = 0 (duplicates of chosen centroids), the draw
  is uniform among them: their score is ``-E_n`` while any D^2 > 0 scores ``D^2 / E_n > 0``.
"""
from __future__ import annotations

import torch

from .posterior import compute_dtype


def exp_noise(rounds: int, n: int, *, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """Exp(1) noise for the exponential race, ``rounds x n`` fp32, strictly positive.

    By inversion, E = -log(1 - U) with U ~ Uniform[0, 1): five times cheaper on a CPU than
    ``Tensor.exponential_`` (which draws in double precision), the same law."""
    e = torch.empty(rounds, n, device=device, dtype=torch.float32)
    e.uniform_(generator=generator).neg_().log1p_().neg_()
    return e.clamp_min_(torch.finfo(torch.float32).tiny)


def race(weights: torch.Tensor, noise: torch.Tensor, unavailable: torch.Tensor) -> torch.Tensor:
    """One D^2 draw: index of argmax of w/E over available rows; uniform among w == 0 if all are.

    The draw for the first centroid uses ``weights = 0`` everywhere: uniform over available.
    """
    score = torch.where(weights > 0, weights / noise, -noise)
    score = score.masked_fill(unavailable, float("-inf"))
    return score.argmax()


def kmeanspp(num: int, noise: torch.Tensor, *, x: torch.Tensor | None = None,
             a: torch.Tensor | None = None, b: torch.Tensor | None = None,
             exclude: torch.Tensor | None = None, first: str = "random") -> torch.Tensor:
    """Seed ``num`` centroids from plain rows ``x`` or rank-1 rows ``a (x) b``.

    noise:   Exp(1) draws, at least ``num`` x N (row t drives round t).
    exclude: bool N, rows that must not be picked (U \\ D).
    first:   "random" -- first centroid uniform over available rows (Alg. 3 l.2);
             "norm"   -- largest embedding norm (BADGE), lowest index on ties.
    Returns int64 indices (num,) in pick order, all distinct. The caller guarantees that at
    least ``num`` rows are available.
    """
    if (x is None) == (a is None or b is None):
        raise ValueError("kmeanspp: pass either x, or both factors a and b")
    rows = x if x is not None else a
    n, dev = rows.shape[0], rows.device
    if x is not None:
        dt = compute_dtype(x)
        x = x.to(dt)
        sq = (x * x).sum(1)  # s_n = ||x_n||^2
    else:
        dt = compute_dtype(a, b)
        a, b = a.to(dt), b.to(dt)
        sq = (a * a).sum(1) * (b * b).sum(1)  # s_n = ||a_n||^2 ||b_n||^2 = ||g_n||^2
    noise = noise.to(dt)
    unavailable = torch.zeros(n, dtype=torch.bool, device=dev) if exclude is None else exclude.clone()
    picks = torch.empty(num, dtype=torch.long, device=dev)
    if num == 0:
        return picks

    if first == "random":  # Alg. 3 l.2: uniform over the available rows
        c = race(torch.zeros_like(sq), noise[0], unavailable)
    elif first == "norm":  # BADGE: the largest gradient norm
        c = sq.masked_fill(unavailable, float("-inf")).argmax()
    else:
        raise ValueError(f"first must be 'random' or 'norm', got {first!r}")
    picks[0] = c
    unavailable[c] = True
    d2 = torch.full((n,), float("inf"), dtype=dt, device=dev)  # D^2 to the nearest centroid
    for t in range(1, num):  # Alg. 3 l.3-11
        if x is not None:
            dist = sq + sq[c] - 2.0 * (x @ x[c])
        else:
            dist = sq + sq[c] - 2.0 * (a @ a[c]) * (b @ b[c])
        d2 = torch.minimum(d2, dist.clamp_min(0.0))
        c = race(d2, noise[t], unavailable)
        picks[t] = c
        unavailable[c] = True
    return picks
