"""Fused pseudo-posterior: logits, softmax, pseudo-label, residual, norms -- one pass over the pool.

For pool keys k_n (N x d) and queries q_j (M x d), one program handles BLOCK_N rows:

    l = k Q^T / T            (tl.dot on fp32-upcast operands, IEEE fp32: no TF32 rounding)
    y = argmax_j l           (first maximum, as torch.argmax)
    z_j = exp(l_j - l_y), z_y := 0,  Z' = sum_j z_j
    a = r / T with r_j = z_j / (1 + Z'),  r_y = -Z' / (1 + Z')   (no p_y - 1 cancellation)
    loss = log1p(Z')          (pseudo-label cross-entropy, OHEM's score)
    s = ||a||^2 ||k||^2       (squared norm of the gradient embedding g = a (x) k)

Outputs: the N x M factor ``a`` (fp32, written once) and four N-vectors. No other N x M
intermediate touches memory. The reference twin is :func:`pseudo_posterior_reference`, built on
``cmacc.sampling.posterior`` -- the single source of the maths.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from cmacc.sampling.posterior import compute_dtype, pseudo_posterior as _posterior

from ._common import empty, next_pow2


# ---------------------------------------------------------------- reference (plain PyTorch)
def pseudo_posterior_reference(keys: torch.Tensor, queries: torch.Tensor, temperature: float = 1.0,
                               upcast: bool = True):
    """(a N x M, label N, loss N, s N, ksq N) exactly as the kernel defines them, in fp32
    (fp64 for fp64 inputs). ``upcast=False`` keeps the input dtype for the norms (for error studies)."""
    post = _posterior(keys, queries, temperature)
    dt = post.residual.dtype
    k = keys.to(dt) if upcast else keys
    ksq = (k * k).sum(1).to(dt)
    a = post.residual / temperature
    s = post.residual_sqnorm / (temperature * temperature) * ksq
    return a, post.label, post.loss, s, ksq


# ---------------------------------------------------------------- Triton kernel
@triton.jit
def _pseudo_posterior_kernel(
    K_ptr,  # pool keys, N x D, row stride stride_k (any float dtype)
    Q_ptr,  # queries, M x D, row stride stride_q
    A_ptr,  # out: gradient factor a = r / T, N x M fp32, contiguous
    label_ptr,  # out: pseudo-label, N int64
    loss_ptr,  # out: CE(p, y) = log1p(Z'), N fp32
    s_ptr,  # out: ||a||^2 ||k||^2, N fp32
    ksq_ptr,  # out: ||k||^2, N fp32
    N, M, D,  # sizes
    stride_k, stride_q,  # row strides (elements)
    inv_T,  # 1 / temperature
    BLOCK_N: tl.constexpr,  # rows per program
    BLOCK_M: tl.constexpr,  # >= M, power of two, >= 16 (tl.dot)
    BLOCK_D: tl.constexpr,  # chunk of d per dot, power of two, >= 16
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)  # int64: N*M may exceed 2^31
    cols = tl.arange(0, BLOCK_M)
    row_ok = rows < N
    col_ok = cols < M
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    ksq = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        d_ok = dd < D
        k = tl.load(K_ptr + rows[:, None] * stride_k + dd[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        q = tl.load(Q_ptr + cols[:, None] * stride_q + dd[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        kf = k.to(tl.float32)  # bf16/fp16 values are exact in fp32, and so are their products
        ksq += tl.sum(kf * kf, axis=1)
        acc += tl.dot(kf, tl.trans(q.to(tl.float32)), input_precision="ieee")
    logits = tl.where(col_ok[None, :], acc * inv_T, float("-inf"))
    label = tl.argmax(logits, axis=1, tie_break_left=True)
    l_y = tl.max(logits, axis=1)
    is_y = cols[None, :] == label[:, None]
    z = tl.where(is_y | ~col_ok[None, :], 0.0, tl.exp(logits - l_y[:, None]))
    z_other = tl.sum(z, axis=1)  # Z'
    den = 1.0 + z_other
    r = tl.where(is_y, -z_other[:, None] / den[:, None], z / den[:, None])
    # log1p(Z') without losing small Z' (Goldberg): log(u) * Z' / (u - 1), u = 1 + Z'
    u = 1.0 + z_other
    loss = tl.where(u == 1.0, z_other, tl.log(u) * z_other / tl.where(u == 1.0, 1.0, u - 1.0))
    rsq = (tl.sum(z * z, axis=1) + z_other * z_other) / (den * den)
    a = r * inv_T
    tl.store(A_ptr + rows[:, None] * M + cols[None, :], a, mask=row_ok[:, None] & col_ok[None, :])
    tl.store(label_ptr + rows, label.to(tl.int64), mask=row_ok)
    tl.store(loss_ptr + rows, loss, mask=row_ok)
    tl.store(s_ptr + rows, rsq * inv_T * inv_T * ksq, mask=row_ok)
    tl.store(ksq_ptr + rows, ksq, mask=row_ok)


# ---------------------------------------------------------------- host wrapper
MAX_M = 512  # a program holds BLOCK_N x next_pow2(M) logits in registers


def launch_config(M: int, D: int, block_n: int | None = None) -> dict:
    """Meta-parameters for M queries of dimension D, chosen from the compiled resources
    (``cmacc bench kernels --compile``, Triton 3.9, sm_80/90/100): about 4K fp32 logits per
    program keep every variant within registers, without spills; 16 columns of d per chunk and
    one stage keep shared memory under 34 KB (sm_86/89 allow 99 KB). 32 columns spilled 8 B on
    sm_100 (bf16, M = 128), and at M = 512 eight warps spilled 4 B where four did not."""
    if M > MAX_M:
        raise ValueError(f"the Triton pseudo-posterior takes at most {MAX_M} queries (got M = {M}); "
                         "use backend='torch' or fewer queries")
    BLOCK_M = next_pow2(max(M, 16))
    BLOCK_N = block_n or max(16, min(64, 4096 // BLOCK_M))
    return dict(BLOCK_N=BLOCK_N, BLOCK_M=BLOCK_M, BLOCK_D=16, num_warps=4 if BLOCK_M >= 512 else 8, num_stages=1)


def pseudo_posterior(keys: torch.Tensor, queries: torch.Tensor, temperature: float = 1.0,
                     block_n: int | None = None):
    """Triton twin of :func:`pseudo_posterior_reference`: (a, label, loss, s, ksq)."""
    if keys.dim() != 2 or queries.dim() != 2 or keys.shape[1] != queries.shape[1]:
        raise ValueError(f"keys N x d and queries M x d expected, got {tuple(keys.shape)} and {tuple(queries.shape)}")
    if compute_dtype(keys, queries) == torch.float64:
        raise TypeError("the Triton pseudo-posterior computes in fp32; pass fp32/bf16/fp16 inputs")
    N, D = keys.shape
    M = queries.shape[0]
    keys = keys if keys.stride(1) == 1 else keys.contiguous()
    queries = queries.to(keys.dtype)
    queries = queries if queries.stride(1) == 1 else queries.contiguous()
    dev = keys.device
    a = empty((N, M), torch.float32, dev)
    label = empty((N,), torch.int64, dev)
    loss, s, ksq = (empty((N,), torch.float32, dev) for _ in range(3))
    cfg = launch_config(M, D, block_n)
    grid = (triton.cdiv(N, cfg["BLOCK_N"]),)
    _pseudo_posterior_kernel[grid](
        keys, queries, a, label, loss, s, ksq, N, M, D, keys.stride(0), queries.stride(0),
        1.0 / temperature, **cfg)
    return a, label, loss, s, ksq
