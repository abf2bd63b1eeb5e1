"""k-means++ seeding on the CPU: lazy exact rounds (default), or fused eager rounds with pruning.

The twin of :func:`cmacc.sampling.kmeanspp.kmeanspp` (the plain-PyTorch reference), compiled with
numba (a dependency of librosa, so always present). Given the same Exp(1) noise it picks the same
indices as the reference (distances agree to fp32 rounding, which can only matter at exact
near-ties), and every arithmetic step is written in the reference's order.

Lazy rounds (``_seed_lazy``). The reference updates every row's D^2 every round, streaming the
N x (M + d) factors 128 times. But a round only needs the winner of the exponential race,
argmax D^2_n / E_n, and D^2 only shrinks as centroids are added: a row's D^2 from its last
update -- stale by the centroids added since -- bounds its score from above. Each round makes
one pass over N-vectors (stale D^2, E) for these bounds, then brings rows up to date (their
distances to the centroids they missed) in decreasing order of bound until the next bound is
below the best exact score: no other row can win. The winner, and every D^2 that is ever
read, are exactly the eager rounds'. After the first D^2 round (one full pass) a round reads a
handful of rows: on a random pool of 38,400, one or two.

Eager rounds (``_seed``, ``lazy=False``): a round makes two GEMVs and a dozen passes over
N-vectors in the reference; here each candidate row is visited once per round -- its two dot
products with the newest centroid, the running minimum D^2, the race score and the running
argmax happen while the row is in registers.

Exact pruning in the eager rounds (Raff, "Exact Acceleration of K-Means++ and K-Means||", IJCAI
2021; Elkan 2003): a candidate n whose current D^2_n cannot shrink this round is not read at all. Two lower bounds
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
STATS = ("rows", "excluded", "pruned_norm", "pruned_centroid", "deferred", "computed")
TOP = 32  # lazy rounds: candidates kept from the bound pass before a full refresh pass is needed


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
    def _first(s, noise, taken, first_norm):
        """Round 0: the first centroid, uniform via the race (score -E) or the largest norm (BADGE)."""
        best, arg = -np.inf, -1
        for i in range(s.shape[0]):
            if taken[i]:
                continue
            score = s[i] if first_norm else -noise[0, i]
            if score > best:
                best, arg = score, i
        return arg

    @njit(fastmath=_FASTMATH, cache=True, nogil=True)
    def _race(d2, e):
        """The exponential race's score of a row: D^2 / E, or -E once D^2 = 0 (uniform among those)."""
        return d2 / e if d2 > 0 else -e

    @njit(fastmath=_FASTMATH, cache=True, nogil=True)
    def _refresh(A, B, rank1, s, picks, upto, i, d2, last):
        """Row i's D^2 brought up to date: the distances to the centroids picks[last[i]:upto], each
        computed exactly as the eager rounds compute it, in the same order."""
        di = d2[i]
        two, zero = s.dtype.type(2.0), s.dtype.type(0.0)
        for k in range(last[i], upto):
            c = picks[k]
            dot = _dot(A, i, A[c]) * _dot(B, i, B[c]) if rank1 else _dot(A, i, A[c])
            dist = max((s[i] + s[c]) - two * dot, zero)
            if dist < di:
                di = dist
        d2[i] = di
        last[i] = upto
        return di

    @njit(fastmath=_FASTMATH, cache=True, nogil=True)
    def _seed_lazy(A, B, rank1, s, noise, taken, picks, first_norm, stats):
        """All rounds, lazily. D^2 only shrinks as centroids are added, so a row's D^2 from its last
        refresh bounds its race score from above: UB = D^2_stale / E (or -E once D^2 = 0). A round
        refreshes rows in decreasing UB until the next UB is below the best exact score -- no
        other row can win -- so the pick is the eager rounds' pick while most rows are not read.
        stats[t] += (rows, excluded, 0, 0, deferred, refreshed) of round t."""
        n = A.shape[0]
        num = picks.shape[0]
        d2 = np.full(n, np.inf, dtype=s.dtype)
        last = np.zeros(n, dtype=np.int64)  # d2[i] is the minimum over picks[:last[i]]
        top_ub = np.empty(TOP, dtype=s.dtype)
        top_i = np.empty(TOP, dtype=np.int64)
        arg = _first(s, noise, taken, first_norm)
        picks[0] = arg
        taken[arg] = 1
        for t in range(1, num):
            e = noise[t]
            kept, rest, n_taken = 0, -np.inf, 0  # rest: the largest UB not kept in the top list
            for i in range(n):  # pass over N-vectors only: bounds, the top candidates
                if taken[i]:
                    n_taken += 1
                    continue
                ub = _race(d2[i], e[i])
                if kept == TOP and ub <= top_ub[TOP - 1]:
                    rest = max(rest, ub)
                    continue
                if kept == TOP:
                    rest = max(rest, top_ub[TOP - 1])
                else:
                    kept += 1
                j = kept - 1
                while j > 0 and top_ub[j - 1] < ub:  # insertion, descending
                    top_ub[j] = top_ub[j - 1]
                    top_i[j] = top_i[j - 1]
                    j -= 1
                top_ub[j] = ub
                top_i[j] = i
            best, arg, refreshed = -np.inf, -1, 0
            for r in range(kept):
                if top_ub[r] < best:
                    break
                i = top_i[r]
                score = _race(_refresh(A, B, rank1, s, picks, t, i, d2, last), e[i])
                refreshed += 1
                if score > best or (score == best and i < arg):
                    best, arg = score, i
            if rest >= best:  # a row outside the top list may still win: refresh all that can
                for i in range(n):
                    if taken[i] or last[i] == t or _race(d2[i], e[i]) < best:
                        continue
                    score = _race(_refresh(A, B, rank1, s, picks, t, i, d2, last), e[i])
                    refreshed += 1
                    if score > best or (score == best and i < arg):
                        best, arg = score, i
            picks[t] = arg
            taken[arg] = 1
            stats[t, 0] += n
            stats[t, 1] += n_taken
            stats[t, 4] += n - n_taken - refreshed
            stats[t, 5] += refreshed

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
        arg = _first(s, noise, taken, first_norm)
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
                score = _race(di, e[i])
                if score > best:  # strict: the lowest index wins ties, as torch.argmax
                    best, arg = score, i
            picks[t] = arg
            taken[arg] = 1
            stats[t, 0] += n
            stats[t, 1] += n_taken
            stats[t, 2] += n_norm
            stats[t, 3] += n_cent
            stats[t, 5] += n - n_taken - n_norm - n_cent


def kmeanspp(num: int, noise: torch.Tensor, *, x: torch.Tensor | None = None, a: torch.Tensor | None = None,
             b: torch.Tensor | None = None, exclude: torch.Tensor | None = None, first: str = "random",
             prune: bool = True, lazy: bool = True, stats: np.ndarray | None = None) -> torch.Tensor:
    """CPU twin of :func:`cmacc.sampling.kmeanspp.kmeanspp` (same arguments and result).

    lazy:  refresh only the rows that can still win the round (see ``_seed_lazy``); else every
           row every round, with prune: skip rows whose D^2 provably cannot change (the module
           docstring). The picks depend on neither. stats: optional int64 array (num x 6)
           accumulating, per round, the counts named in ``STATS``.
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
    if num and lazy:
        _seed_lazy(A, B, rank1, s, E, taken, picks, first == "norm", stats)
    elif num:
        _seed(A, B, rank1, s, E, taken, picks, first == "norm", prune, stats)
    return torch.from_numpy(picks).to(noise.device)


def _array(t: torch.Tensor, dt: torch.dtype) -> np.ndarray:
    """A C-contiguous numpy view of dtype ``dt`` (no copy when the tensor already is one)."""
    return t.detach().to("cpu", dt).contiguous().numpy()
