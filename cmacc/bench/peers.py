"""Peer implementations of k-means++ seeding for ``cmacc bench sampler``, written from their
published algorithms (not copied), on the same inputs as cmacc's rows.

badge_numpy   BADGE's current factorised ``init_centers`` (Ash et al., JordanAsh/badge,
              query_strategies/badge_sampling.py) in plain numpy: the rank-1 distance identity
              ||g_n - g_c||^2 = s_n s'_n + s_c s'_c - 2 (a_n.a_c)(b_n.b_c) with two GEMVs per
              round, distances (not squared) kept in float64 as BADGE does, chosen rows zeroed,
              and the draw with probability D^2 / sum D^2 by inverse CDF (one uniform per round).
              First centroid: the largest gradient norm (BADGE).
sklearn       scikit-learn's ``kmeans_plusplus`` on plain rows (the "feature" embedding), with
              ``n_local_trials=1`` so that it is the plain D^2 seeding cmacc runs.
"""
from __future__ import annotations

import numpy as np


def badge_numpy(a: np.ndarray, b: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
    """``num`` distinct picks from rank-1 rows a_n (x) b_n (fp32 N x M and N x d)."""
    sa, sb = np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b)

    def distance(c: int) -> np.ndarray:
        d2 = sa * sb + sa[c] * sb[c] - 2 * (a @ a[c]) * (b @ b[c])
        return np.sqrt(np.clip(d2, 0, None)).astype(np.float64)

    ind = int(np.argmax(sa * sb))
    chosen = [ind]
    D = distance(ind)
    D[ind] = 0
    while len(chosen) < num:
        if len(chosen) > 1:
            D = np.minimum(D, distance(chosen[-1]))
            D[chosen] = 0
        p = D ** 2
        cdf = np.cumsum(p / p.sum())
        ind = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        while ind in chosen or ind >= len(D):  # BADGE redraws a chosen row (rounding at the CDF's ends)
            ind = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        chosen.append(ind)
    return np.asarray(chosen)


def sklearn_kmeanspp(x: np.ndarray, num: int, seed: int) -> np.ndarray:
    """scikit-learn's k-means++ seeding of plain rows x, plain D^2 draws (one trial per round)."""
    from sklearn.cluster import kmeans_plusplus
    _, idx = kmeans_plusplus(x, n_clusters=num, random_state=seed, n_local_trials=1)
    return idx
