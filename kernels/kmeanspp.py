"""Fused k-means++ seeding: one launch per round, no host synchronisation between rounds.

Round t (t >= 1), each program over BLOCK_N candidate rows:

    c      = winner of round t-1, decoded from cells[t-1] (device memory, no host sync)
    taken |= (row == c)                                  the newest centroid leaves the race
    dist   = s_n + s_c - 2 (a_n . a_c)(b_n . b_c)        rank-1 rows g = a (x) b, never materialised
           = s_n + s_c - 2 (x_n . x_c)                   plain rows (feature / key-gradient embeddings)
    D2     = min(D2, max(dist, 0))                        running minimum, kept in memory
    score  = D2 / E_t  if D2 > 0  else  -E_t              exponential race; -inf if taken/excluded
    cells[t] = atomic_max over programs of pack(score, row)

``pack`` maps the fp32 score to an order-preserving 32-bit key and appends (2^31 - 1 - row),
so one int64 atomic_max finds the largest score and, on ties, the lowest row -- the same
choice as ``torch.argmax`` in the reference (``cmacc.sampling.kmeanspp``). Given the same
Exp(1) noise the kernel and the reference pick the same indices (up to fp32 rounding of the
distances, which only matters for exact near-ties).

Round 0 draws the first centroid from the same kernel (FIRST=1: uniform, score -E; FIRST=2:
largest s, BADGE). Every round streams the pool's factors from memory: N (M + d) x 4 bytes --
except for rows pruned exactly (PRUNE=1), whose loads are masked off: the norm bound
(||g_n|| - ||g_c||)^2 and the centroid bound (||g_c - g_a|| - D_n)^2 (a = the row's nearest
centroid, when ||g_c - g_a|| >= 2 D_n) against D^2_n plus a rounding margin, as in the CPU
twin (cmacc.sampling.cpu, whose docstring gives the argument). The distances between the newest
centroid and the earlier ones are a few tiny ops per round on the device (no host sync).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from cmacc.sampling.cpu import MARGIN
from cmacc.sampling.kmeanspp import kmeanspp as _kmeanspp_torch

from ._common import empty

LOW = 2**31 - 1  # low 31 bits of a packed cell hold (2^31 - 1 - row)


# ---------------------------------------------------------------- reference (plain PyTorch)
def kmeanspp_reference(num: int, noise: torch.Tensor, *, x=None, a=None, b=None, exclude=None,
                       first: str = "random") -> torch.Tensor:
    """The reference seeding (cmacc.sampling.kmeanspp), same signature as :func:`kmeanspp`."""
    return _kmeanspp_torch(num, noise, x=x, a=a, b=b, exclude=exclude, first=first)


# ---------------------------------------------------------------- Triton kernel
@triton.jit
def _rowdot(P_ptr, rows, row_ok, c, n_cols, stride, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """(P[rows] . P[c]) for a block of rows, in fp32, over n_cols columns."""
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for c0 in range(0, n_cols, BLOCK_C):
        cc = c0 + tl.arange(0, BLOCK_C)
        c_ok = cc < n_cols
        p = tl.load(P_ptr + rows[:, None] * stride + cc[None, :], mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        pc = tl.load(P_ptr + c * stride + cc, mask=c_ok, other=0.0)
        acc += tl.sum(p.to(tl.float32) * pc.to(tl.float32)[None, :], axis=1)
    return acc


# t is not specialised: one compiled kernel serves every round (Triton would otherwise compile
# t = 1 and t % 16 == 0 apart, and with t = 1 a constexpr, ``(t - 1).to(...)`` is not an op)
@triton.jit(do_not_specialize=["t"])
def _seed_round_kernel(
    A_ptr,  # rank-1: first factor a, N x MA; plain: the rows x, N x MA
    B_ptr,  # rank-1: second factor b, N x DB (unused when not RANK1)
    s_ptr,  # squared embedding norms s_n, N fp32
    d2_ptr,  # running min D^2, N fp32 (read-write; +inf before round 1)
    taken_ptr,  # 1 = excluded or already a centroid, N int8 (read-write)
    E_ptr,  # Exp(1) noise of this round, N fp32
    cells_ptr,  # packed winners, one int64 per round (cells[t] starts at -1)
    near_ptr,  # pick order of each row's nearest centroid, N int32 (read-write; PRUNE only)
    cc_ptr,  # ||g_c - g_(k)||^2 for the newest centroid c and earlier picks k < t - 1 (PRUNE only)
    sk_ptr,  # s of the earlier picks k < t - 1 (PRUNE only)
    margin,  # rounding margin of the bounds, relative to the squared norms
    t,  # this round
    N, MA, DB,  # sizes
    stride_a, stride_b,  # row strides (elements)
    RANK1: tl.constexpr,  # rank-1 rows a (x) b, else plain rows
    PRUNE: tl.constexpr,  # skip (do not load) rows whose D^2 provably cannot change
    FIRST: tl.constexpr,  # 0: D^2 round; 1: first centroid uniform; 2: first centroid max s
    BLOCK_N: tl.constexpr,  # candidate rows per program
    BLOCK_C: tl.constexpr,  # columns per chunk of a dot product
):
    low = tl.full((), 2147483647, tl.int64)  # 2^31 - 1
    u32 = tl.full((), 4294967295, tl.int64)  # 2^32 - 1
    sign = tl.full((), 2147483648, tl.int64)  # 2^31
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_ok = rows < N
    taken = tl.load(taken_ptr + rows, mask=row_ok, other=1) != 0
    s = tl.load(s_ptr + rows, mask=row_ok, other=0.0)
    e = tl.load(E_ptr + rows, mask=row_ok, other=1.0)
    if FIRST == 0:
        prev = tl.load(cells_ptr + t - 1)
        c = low - (prev & low)  # the newest centroid
        is_c = rows == c
        taken = taken | is_c
        tl.store(taken_ptr + rows, taken.to(tl.int8), mask=row_ok & is_c)
        s_c = tl.load(s_ptr + c)
        d2_old = tl.load(d2_ptr + rows, mask=row_ok, other=0.0)
        need = row_ok & ~taken
        if PRUNE:
            gap = tl.sqrt(s) - tl.sqrt(s_c)
            known = d2_old < float("inf")
            by_norm = known & (gap * gap >= d2_old + margin * (s + s_c))
            has_cc = need & known & ((tl.zeros((BLOCK_N,), tl.int32) + t) > 1)  # round 1 has no earlier pair
            a = tl.load(near_ptr + rows, mask=has_cc, other=0)
            cca = tl.load(cc_ptr + a, mask=has_cc, other=0.0)
            s_a = tl.load(sk_ptr + a, mask=has_cc, other=0.0)
            gap_c = tl.sqrt(cca) - tl.sqrt(d2_old)
            by_cent = known & (cca >= 4.0 * d2_old) & (gap_c * gap_c >= d2_old + margin * (s + s_c + s_a))
            need = need & ~by_norm & ~by_cent
        if RANK1:
            dot = _rowdot(A_ptr, rows, need, c, MA, stride_a, BLOCK_N, BLOCK_C) * \
                _rowdot(B_ptr, rows, need, c, DB, stride_b, BLOCK_N, BLOCK_C)
        else:
            dot = _rowdot(A_ptr, rows, need, c, MA, stride_a, BLOCK_N, BLOCK_C)
        dist = tl.maximum(s + s_c - 2.0 * dot, 0.0)
        closer = need & (dist < d2_old)
        d2 = tl.where(closer, dist, d2_old)
        tl.store(d2_ptr + rows, d2, mask=closer)
        if PRUNE:
            tl.store(near_ptr + rows, tl.full((BLOCK_N,), 0, tl.int32) + (t - 1).to(tl.int32), mask=closer)
        score = tl.where(d2 > 0.0, d2 / e, -e)
    elif FIRST == 1:
        score = -e
    else:
        score = s
    score = tl.where(taken | ~row_ok, float("-inf"), score)
    # pack (score, row): order-preserving 32-bit key of the fp32 score, then 2^31 - 1 - row
    bits = score.to(tl.int32, bitcast=True).to(tl.int64) & u32
    key = tl.where(bits >= sign, u32 - bits, bits + sign)
    packed = (key << 31) | (low - rows)
    tl.atomic_max(cells_ptr + t, tl.max(packed, axis=0))


# ---------------------------------------------------------------- host wrapper
# 16 columns per chunk and 8 warps: 27-45 registers at the paper's size, <= 128 for d = 300
# (64 columns and 4 warps took 200+ registers and spilled; see ``cmacc bench kernels --compile``)
ROUND_CONFIG = dict(BLOCK_C=16, num_warps=8)


def kmeanspp(num: int, noise: torch.Tensor, *, x=None, a=None, b=None, exclude=None, first: str = "random",
             s: torch.Tensor | None = None, block_n: int = 128, prune: bool = True) -> torch.Tensor:
    """Triton twin of :func:`kmeanspp_reference`. ``s`` (squared norms) may be passed in when a
    previous kernel already computed it (the pseudo-posterior does for gradient embeddings).
    prune: mask off the loads of rows whose D^2 provably cannot change (the picks do not depend
    on it)."""
    if (x is None) == (a is None or b is None):
        raise ValueError("kmeanspp: pass either x, or both factors a and b")
    rank1 = x is None
    P = a if rank1 else x
    Q = b if rank1 else x
    N, dev = P.shape[0], P.device
    if first not in ("random", "norm"):
        raise ValueError(f"first must be 'random' or 'norm', got {first!r}")
    P = P if P.stride(1) == 1 else P.contiguous()
    Q = Q if Q.stride(1) == 1 else Q.contiguous()
    if s is None:
        Pf, Qf = P.float(), Q.float()
        s = (Pf * Pf).sum(1) * (Qf * Qf).sum(1) if rank1 else (Pf * Pf).sum(1)
    noise = noise.float().contiguous()
    if noise.dim() != 2 or noise.shape[0] < num or noise.shape[1] != N:
        raise ValueError(f"noise must be at least {num} x {N}, got {tuple(noise.shape)}")
    taken = (torch.zeros(N, dtype=torch.int8, device=dev) if exclude is None
             else exclude.to(device=dev, dtype=torch.int8).contiguous())
    d2 = torch.full((N,), float("inf"), dtype=torch.float32, device=dev)
    cells = torch.full((num,), -1, dtype=torch.int64, device=dev)
    near = torch.zeros(N, dtype=torch.int32, device=dev)
    cc = torch.zeros(max(num, 1), dtype=torch.float32, device=dev)
    sk = torch.zeros(max(num, 1), dtype=torch.float32, device=dev)
    grid = (triton.cdiv(N, block_n),)
    for t in range(num):  # one launch per round; the winner stays on the device
        if prune and t >= 2:
            _centroid_distances(P, Q, rank1, s, cells[:t], cc, sk)
        _seed_round_kernel[grid](
            P, Q, s, d2, taken, noise[t], cells, near, cc, sk, float(MARGIN), t, N, P.shape[1], Q.shape[1],
            P.stride(0), Q.stride(0), RANK1=rank1, PRUNE=prune, FIRST=0 if t else (1 if first == "random" else 2),
            BLOCK_N=block_n, **ROUND_CONFIG)
    picks = empty((num,), torch.int64, dev)
    torch.sub(LOW, cells & LOW, out=picks)
    return picks


def _centroid_distances(P, Q, rank1: bool, s, cells, cc, sk) -> None:
    """cc[k] = ||g_c - g_(k)||^2 for the newest pick c = cells[-1] and the earlier ones k, and
    sk[k] = s of pick k: t - 1 tiny dot products, queued on the device (no host sync)."""
    picks = LOW - (cells & LOW)
    c, prev = picks[-1:], picks[:-1]  # c as a 1-element tensor: a 0-d index would sync (.item())
    dot = (P[prev].float() @ P[c].float().T)[:, 0]
    if rank1:
        dot = dot * (Q[prev].float() @ Q[c].float().T)[:, 0]
    k = prev.shape[0]
    torch.clamp_min((s[prev] + s[c]) - 2.0 * dot, 0.0, out=cc[:k])
    sk[:k] = s[prev]
