"""Pseudo-posterior, residuals and gradient embeddings (Eq. 5-6) against autograd and fp64."""
import pytest
import torch
from torch.nn import functional as F

from cmacc.sampling import gradient_embeddings, gradient_factors, key_gradient, pseudo_posterior
from conftest import unit_rows


@pytest.mark.parametrize("N,M,d,T", [(7, 5, 3, 1.0), (13, 1, 8, 1.0), (11, 6, 5, 0.3), (1, 3, 2, 2.0)])
def test_gradient_embedding_equals_autograd(N, M, d, T):
    """g_n = dCE(softmax(Q k_n / T), y_n)/dQ, y_n the pseudo-label: exactly what autograd gives."""
    k = unit_rows(N, d, seed=1, dtype=torch.float64) * 3.0  # scaled: confident and unconfident rows
    Q = unit_rows(M, d, seed=2, dtype=torch.float64)
    g = gradient_embeddings(k, Q, T)
    assert g.shape == (N, M * d)
    for n in range(N):
        Qv = Q.clone().requires_grad_(True)
        logits = (Qv @ k[n]) / T  # l_n = Q k_n / T: M
        y = logits.argmax()
        loss = F.cross_entropy(logits[None], y[None])
        (grad,) = torch.autograd.grad(loss, Qv)  # M x d
        torch.testing.assert_close(g[n], grad.reshape(-1), rtol=1e-10, atol=1e-12)


def test_key_gradient_equals_autograd():
    N, M, d, T = 9, 4, 6, 0.5
    k = unit_rows(N, d, seed=3, dtype=torch.float64)
    Q = unit_rows(M, d, seed=4, dtype=torch.float64)
    e = key_gradient(k, Q, T)
    for n in range(N):
        kn = k[n].clone().requires_grad_(True)
        logits = (Q @ kn) / T
        loss = F.cross_entropy(logits[None], logits.argmax()[None])
        (grad,) = torch.autograd.grad(loss, kn)
        torch.testing.assert_close(e[n], grad, rtol=1e-10, atol=1e-12)


def _fp64_reference(k, Q, T=1.0):
    logits = k.double() @ Q.double().T / T
    p = torch.softmax(logits, dim=1)
    y = logits.argmax(1)
    r = p - F.one_hot(y, Q.shape[0]).double()
    return r, y, -torch.log_softmax(logits, 1).gather(1, y[:, None])[:, 0]


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-5), (torch.float16, 2e-5)])
def test_posterior_fp32_maths_for_low_precision_inputs(dtype, rtol):
    """Inputs in bf16/fp16 are upcast: the result matches fp64 maths on the same (rounded) inputs."""
    k = unit_rows(37, 16, seed=5).to(dtype)
    Q = unit_rows(6, 16, seed=6).to(dtype)
    post = pseudo_posterior(k, Q)
    assert post.residual.dtype == torch.float32
    r, y, loss = _fp64_reference(k, Q)
    assert torch.equal(post.label, y)
    torch.testing.assert_close(post.residual.double(), r, rtol=rtol, atol=1e-7)
    torch.testing.assert_close(post.loss.double(), loss, rtol=rtol, atol=1e-7)
    torch.testing.assert_close(post.residual_sqnorm.double(), (r * r).sum(1), rtol=rtol, atol=1e-7)


def test_residual_has_no_cancellation_when_confident():
    """p_y - 1 for a confident pseudo-label: naive fp32 rounds it to 0 or a multiple of 6e-8."""
    gap = torch.tensor([10.0, 16.0, 20.0, 25.0])
    Q = torch.eye(2, dtype=torch.float32)  # logits of row n: [gap_n, 0]
    k = torch.stack([gap, torch.zeros(4)], 1)
    post = pseudo_posterior(k, Q)
    exact = -torch.exp(-gap.double()) / (1 + torch.exp(-gap.double()))  # p_0 - 1
    torch.testing.assert_close(post.residual[:, 0].double(), exact, rtol=1e-6, atol=0)
    torch.testing.assert_close(post.loss.double(), torch.log1p(torch.exp(-gap.double())), rtol=1e-6, atol=0)
    naive = torch.softmax(k @ Q.T, 1)[:, 0] - 1
    assert (naive.double() - exact).abs().max() / exact.abs().min() > 1e-2  # what this avoids


def test_factors_reconstruct_embedding():
    k, Q = unit_rows(10, 4, seed=7), unit_rows(3, 4, seed=8)
    a, b = gradient_factors(k, Q, 0.7)
    torch.testing.assert_close((a[:, :, None] * b[:, None, :]).reshape(10, -1), gradient_embeddings(k, Q, 0.7))
    post = pseudo_posterior(k, Q, 0.7)
    torch.testing.assert_close(post.residual.sum(1), torch.zeros(10), atol=1e-6, rtol=0)  # sum p - 1 = 0
