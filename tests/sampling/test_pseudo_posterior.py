"""Triton pseudo-posterior kernel vs its reference twin (kernels/pseudo_posterior.py)."""
import os

import pytest
import torch
from torch.nn import functional as F

if os.environ.get("CMACC_REQUIRE_TRITON") != "1":  # CI sets it: there a missing Triton fails, not skips
    pytest.importorskip("triton", reason="the Triton kernels need `pip install cmacc[triton]` (in [dev])")

from cmacc.kernels.pseudo_posterior import pseudo_posterior, pseudo_posterior_reference
from conftest import KERNEL_DEVICE, unit_rows

SHAPES = [(1, 1, 1), (7, 1, 3), (13, 2, 16), (97, 5, 33), (131, 17, 7), (67, 128, 128), (257, 33, 65)]
# maths is fp32 for every input dtype: the tolerance covers fp32 summation-order differences
TOL = {torch.float32: 2e-6, torch.bfloat16: 2e-6, torch.float16: 2e-6}


def _inputs(N, M, d, dtype, scale=3.0, seed=0):
    k = (unit_rows(N, d, seed=seed) * scale).to(dtype).to(KERNEL_DEVICE)  # scaled: confident and flat rows
    q = unit_rows(M, d, seed=seed + 1).to(dtype).to(KERNEL_DEVICE)
    return k, q


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("N,M,d", SHAPES)
@pytest.mark.parametrize("T", [1.0, 0.3])
def test_kernel_matches_reference(N, M, d, dtype, T, poison):
    k, q = _inputs(N, M, d, dtype)
    out = pseudo_posterior(k, q, T)
    ref = pseudo_posterior_reference(k, q, T)
    tol = TOL[dtype]
    for name, o, r in zip(("a", "label", "loss", "s", "ksq"), out, ref):
        assert o.shape == r.shape and o.dtype == r.dtype, name
        if name == "label":
            assert torch.equal(o, r), "pseudo-labels differ"
        else:
            scale = r.abs().max().clamp_min(1.0)
            torch.testing.assert_close(o, r, rtol=tol, atol=tol * float(scale), msg=name)


def test_block_smaller_than_pool_and_non_contiguous_keys(poison):
    k, q = _inputs(100, 6, 24, torch.float32, seed=3)
    k_nc = torch.cat([k, k], dim=1)[:, :24]  # row stride 48
    out = pseudo_posterior(k_nc, q, 1.0, block_n=16)
    ref = pseudo_posterior_reference(k, q, 1.0)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o.double(), r.double(), rtol=2e-6, atol=2e-6)


def test_confident_rows_have_accurate_residuals_in_bf16():
    """p_y - 1 for a pseudo-label with a logit gap of 10..25: relative error ~fp32, not bf16."""
    gap = torch.tensor([10.0, 14.0, 18.0, 22.0, 25.0])
    k = torch.stack([gap, torch.zeros(5)], 1).to(torch.bfloat16).to(KERNEL_DEVICE)
    q = torch.eye(2, dtype=torch.bfloat16, device=KERNEL_DEVICE)
    a, _, loss, _, _ = pseudo_posterior(k, q)
    g = k[:, 0].double().cpu()  # the gaps as bf16 rounded them
    exact = -torch.exp(-g) / (1 + torch.exp(-g))
    torch.testing.assert_close(a[:, 0].double().cpu(), exact, rtol=1e-5, atol=0)
    torch.testing.assert_close(loss.double().cpu(), torch.log1p(torch.exp(-g)), rtol=1e-5, atol=0)


def test_bf16_error_within_twice_pytorchs_own():
    """flash-attention's bar: kernel error vs fp64 <= 2x the error of PyTorch computing in bf16."""
    k32, q32 = _inputs(257, 33, 65, torch.float32, seed=7)
    logits64 = k32.double() @ q32.double().T
    p64 = torch.softmax(logits64, 1)
    kb, qb = k32.bfloat16(), q32.bfloat16()
    a, label, _, _, _ = pseudo_posterior(kb, qb)
    r64 = p64 - F.one_hot(label, 33).double()
    torch_bf16 = torch.softmax(kb @ qb.T, 1) - F.one_hot(label, 33).bfloat16()  # PyTorch in bf16
    err_kernel = (a.double() - r64).abs().max()
    err_torch = (torch_bf16.double() - r64).abs().max()
    assert err_kernel <= 2 * err_torch, (float(err_kernel), float(err_torch))


def test_rejects_fp64_and_mismatched_shapes():
    k, q = _inputs(5, 2, 4, torch.float32)
    with pytest.raises(TypeError, match="fp32"):
        pseudo_posterior(k.double(), q.double())
    with pytest.raises(ValueError, match="N x d"):
        pseudo_posterior(k, q[:, :3])
