"""k-means++ seeding on the CPU: one fused pass per round, with exact pruning -- the CPU fast path.

The twin of :func:`cmacc.sampling.kmeanspp.kmeanspp` (the plain-PyTorch reference), compiled with
numba (a dependency of librosa, so always present). A round of the reference makes two GEMVs
and a dozen passes over N-vectors; here each candidate row is visited once per round: its two
dot products with the newest centroid, the running minimum D^2, the exponential-race score and
the running argmax happen while the row is in registers. Given the same Exp(1) noise it picks
the same indices as the reference (distances agree to fp32 rounding, which can only matter at
exact near-ties), and every arithmetic step is written in the reference's order.

Exact pruning (Raff, "Exact Acceleration of K-Means++ and K-Means||", IJCAI 2021; Elkan 2003):
a candidate n whose current D^2_n cannot shrink this round is not read at all. Two lower bounds
on ||g_n - g_c||^2 for the new centroid c, both from the triangle inequality:

* norms:     (||g_n|| - ||g_c||)^2;
* centroids: (||g_c - g_a|| - D_n)^2 when ||g_c - g_a|| >= 2 D_n, where a is n's nearest
             centroid (so D_n = ||g_n - g_a||); the centroid distances cost t dot products.

A row is skipped when a bound is at least D^2_n plus a margin that covers the rounding of the
expanded distance (``MARGIN`` x (s_n + s_c)): its D^2 is unchanged (as the reference would find,
up to that rounding), so the picks are the same. Rows that are excluded or already picked are
skipped too: they are never drawn, whatever their D^2.
"""
from __future__ import annotations

import numpy as np
import torch

from .posterior import compute_dtype

try:
    import numba
    from numba import njit
    _IMPORT_ERROR: str | None = None
except ImportError as e:  # pragma: no cover - numba comes with librosa
    numba = None
    _IMPORT_ERROR = str(e)

MARGIN = np.float32(1e-5)  # relative to s_n + s_c: far above fp32 rounding of a 128-term dot product
# reassociation lets LLVM vectorise the dot products; no fast-math on comparisons or division
# (inf marks "no centroid yet", and the score must be the reference's exact d2 / e).
_FASTMATH = {"reassoc", "contract"}
STATS = ("rows", "excluded", "pruned_norm", "pruned_centroid", "computed")


def available() -> tuple[bool, str]:
    if _IMPORT_ERROR is not None:
        return False, f"numba is not installed ({_IMPORT_ERROR})"
    return True, ""


if numba is not None:
    @njit(fastmath=_FASTMATH, cache=True, nogil=True)
    def _dot(P, i, pc):
        acc = np.float32(0.0)
        for j in range(pc.shape[0]):
            acc += P[i, j] * pc[j]
        return acc

    @njit(fastmath=_FASTMATH, cache=True, nogil=True)
    def _seed(A, B, rank1, s, noise, taken, picks, first_norm, prune, stats):
        """All rounds of k-means++ seeding; fills ``picks``; ``taken`` (uint8) is updated in place.
        stats[t] += (rows, excluded, pruned by norms, pruned by centroids, computed) of round t."""
        n = A.shape[0]
        num = picks.shape[0]
        inf = s.dtype.type(np.inf)
        zero, two = s.dtype.type(0.0), s.dtype.type(2.0)
        margin = s.dtype.type(MARGIN)
        d2 = np.full(n, np.inf, dtype=s.dtype)
        near = np.zeros(n, dtype=np.int32)  # pick order of each row's nearest centroid
        norm = np.sqrt(s)
        cc = np.zeros(num, dtype=s.dtype)  # ||g_c - g_(k)||^2 for the newest centroid c, k < t
        # round 0: the first centroid (uniform via the race, or the largest norm as BADGE)
        best, arg = -inf, -1
        for i in range(n):
            if taken[i]:
                continue
            score = s[i] if first_norm else -noise[0, i]
            if score > best:
                best, arg = score, i
        picks[0] = arg
        taken[arg] = 1
        for t in range(1, num):
            c = picks[t - 1]
            ac = A[c].copy()
            bc = B[c].copy()
            sc = s[c]
            nc = norm[c]
            for k in range(t - 1):  # distances from the newest centroid to the earlier ones
                ck = picks[k]
                dot = _dot(A, ck, ac) * _dot(B, ck, bc) if rank1 else _dot(A, ck, ac)
                cc[k] = max((s[ck] + sc) - two * dot, zero)
            e = noise[t]
            best, arg = -inf, -1
            n_taken = n_norm = n_cent = 0
            for i in range(n):
                if taken[i]:
                    n_taken += 1
                    continue
                di = d2[i]
                compute = True
                if prune and di < inf:
                    gap = norm[i] - nc
                    if gap * gap >= di + margin * (s[i] + sc):
                        compute = False
                        n_norm += 1
                    else:
                        a_i = near[i]
                        if cc[a_i] >= 4 * di:  # ||g_c - g_a|| >= 2 D_n (squared: no square root per row)
                            gap = np.sqrt(cc[a_i]) - np.sqrt(di)
                            if gap * gap >= di + margin * (s[i] + sc + s[picks[a_i]]):
                                compute = False
                                n_cent += 1
                if compute:
                    dot = _dot(A, i, ac) * _dot(B, i, bc) if rank1 else _dot(A, i, ac)
                    dist = max((s[i] + sc) - two * dot, zero)
                    if dist < di:
                        di = dist
                        d2[i] = dist
                        near[i] = t - 1
                score = di / e[i] if di > 0 else -e[i]
                if score > best:  # strict: the lowest index wins ties, as torch.argmax
                    best, arg = score, i
            picks[t] = arg
            taken[arg] = 1
            stats[t, 0] += n
            stats[t, 1] += n_taken
            stats[t, 2] += n_norm
            stats[t, 3] += n_cent
            stats[t, 4] += n - n_taken - n_norm - n_cent


def kmeanspp(num: int, noise: torch.Tensor, *, x: torch.Tensor | None = None, a: torch.Tensor | None = None,
             b: torch.Tensor | None = None, exclude: torch.Tensor | None = None, first: str = "random",
             prune: bool = True, stats: np.ndarray | None = None) -> torch.Tensor:
    """CPU twin of :func:`cmacc.sampling.kmeanspp.kmeanspp` (same arguments and result).

    prune: skip rows whose D^2 provably cannot change (see the module docstring); the picks do
           not depend on it. stats: optional int64 array (num x 5) accumulating, per round, the
           counts named in ``STATS``.
    """
    ok, why = available()
    if not ok:
        raise RuntimeError(f"sampler backend 'numba' cannot run: {why}")
    if (x is None) == (a is None or b is None):
        raise ValueError("kmeanspp: pass either x, or both factors a and b")
    if first not in ("random", "norm"):
        raise ValueError(f"first must be 'random' or 'norm', got {first!r}")
    rank1 = x is None
    dt = compute_dtype(*((a, b) if rank1 else (x,)))  # fp32, or fp64 for fp64 inputs: as the reference
    A = _array(a if rank1 else x, dt)
    B = _array(b, dt) if rank1 else np.zeros((1, 1), dtype=A.dtype)
    n = A.shape[0]
    tA, tB = torch.from_numpy(A), torch.from_numpy(B)  # s with the reference's own reductions
    s = ((tA * tA).sum(1) * (tB * tB).sum(1) if rank1 else (tA * tA).sum(1)).numpy()
    E = _array(noise[:num], dt)
    taken = (np.zeros(n, dtype=np.uint8) if exclude is None
             else exclude.detach().to("cpu", torch.uint8).numpy().copy())
    picks = np.empty(num, dtype=np.int64)
    if stats is None:
        stats = np.zeros((max(num, 1), len(STATS)), dtype=np.int64)
    elif not (isinstance(stats, np.ndarray) and stats.dtype == np.int64 and stats.ndim == 2
              and stats.shape[0] >= num and stats.shape[1] == len(STATS)):  # numba does not bounds-check
        raise ValueError(f"stats must be an int64 numpy array of shape (>= {num}, {len(STATS)}), got "
                         f"{getattr(stats, 'dtype', type(stats).__name__)} {getattr(stats, 'shape', '')}")
    if num:
        _seed(A, B, rank1, s, E, taken, picks, first == "norm", prune, stats)
    return torch.from_numpy(picks).to(noise.device)


def _array(t: torch.Tensor, dt: torch.dtype) -> np.ndarray:
    """A C-contiguous numpy view of dtype ``dt`` (no copy when the tensor already is one)."""
    return t.detach().to("cpu", dt).contiguous().numpy()
