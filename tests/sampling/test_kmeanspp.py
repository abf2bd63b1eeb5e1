"""Triton k-means++ seeding kernel vs its reference twin (kernels/kmeanspp.py), and the
Triton backend of cmacc.sampling.select."""
import os

import pytest
import torch

if os.environ.get("CMACC_REQUIRE_TRITON") != "1":  # CI sets it: there a missing Triton fails, not skips
    pytest.importorskip("triton", reason="the Triton kernels need `pip install cmacc[triton]` (in [dev])")

from cmacc.kernels.kmeanspp import kmeanspp, kmeanspp_reference
from conftest import KERNEL_DEVICE, clustered_rows, unit_rows

from cmacc import sampling
from cmacc.sampling import exp_noise, gradient_factors, select

CASES = [  # N (prime / 1 / below and above the block), M, d, num
    (1, 1, 1, 1), (5, 3, 2, 5), (97, 1, 33, 24), (131, 17, 7, 30), (200, 5, 128, 16), (300, 33, 9, 12),
]


def _factors(N, M, d, dtype, seed):
    k = unit_rows(N, d, seed=seed).to(dtype).to(KERNEL_DEVICE)
    q = unit_rows(M, d, seed=seed + 50).to(dtype).to(KERNEL_DEVICE)
    return k, q


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("first", ["random", "norm"])
@pytest.mark.parametrize("N,M,d,num", CASES)
def test_rank1_picks_equal_reference(N, M, d, num, first, dtype, poison):
    k, q = _factors(N, M, d, dtype, seed=N + M)
    a, b = gradient_factors(k, q)
    noise = exp_noise(num, N, generator=torch.Generator(KERNEL_DEVICE).manual_seed(1), device=KERNEL_DEVICE)
    got = kmeanspp(num, noise, a=a, b=k, first=first)  # b in the input dtype, upcast in-kernel
    want = kmeanspp_reference(num, noise, a=a, b=b, first=first)
    assert torch.equal(got, want)


@pytest.mark.parametrize("first", ["random", "norm"])
@pytest.mark.parametrize("N,M,d,num", CASES)
def test_plain_picks_equal_reference_with_exclusion(N, M, d, num, first, poison):
    x, _ = _factors(N, M, d, torch.float32, seed=3 * N)
    g = torch.Generator().manual_seed(N)
    exclude = (torch.rand(N, generator=g) < 0.3).to(KERNEL_DEVICE)
    num = min(num, int((~exclude).sum()))
    noise = exp_noise(max(num, 1), N, generator=torch.Generator(KERNEL_DEVICE).manual_seed(2), device=KERNEL_DEVICE)
    got = kmeanspp(num, noise, x=x, exclude=exclude, first=first)
    assert torch.equal(got, kmeanspp_reference(num, noise, x=x, exclude=exclude, first=first))
    assert not exclude[got].any() and len(set(got.tolist())) == num


def test_duplicates_are_drawn_uniformly_and_never_twice(poison):
    x = torch.zeros(9, 4, device=KERNEL_DEVICE)
    x[0] = 1.0  # one distinct row, eight identical ones: every D^2 = 0 after two picks
    gen = torch.Generator(KERNEL_DEVICE).manual_seed(0)
    for _ in range(5):
        noise = exp_noise(6, 9, generator=gen, device=KERNEL_DEVICE)
        got = kmeanspp(6, noise, x=x, first="norm")
        assert torch.equal(got, kmeanspp_reference(6, noise, x=x, first="norm"))
        assert len(set(got.tolist())) == 6


@pytest.mark.parametrize("embedding", sampling.EMBEDDINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_select_triton_equals_torch(embedding, dtype):
    k, q = _factors(173, 11, 24, dtype, seed=5)
    exclude = torch.zeros(173, dtype=torch.bool, device=KERNEL_DEVICE)
    exclude[::4] = True
    picks = [select(k, q, 20, embedding=embedding, exclude=exclude, backend=b,
                    generator=torch.Generator(KERNEL_DEVICE).manual_seed(4)) for b in ("triton", "torch")]
    if embedding == "ohem":  # top-k order among equal losses is unspecified: compare as sets
        assert set(picks[0].tolist()) == set(picks[1].tolist())
    else:
        assert torch.equal(picks[0], picks[1])


def test_backend_dispatch_on_cpu():
    assert sampling.resolve_backend("auto", "cpu") == "numba"  # auto: Triton only for CUDA tensors
    if KERNEL_DEVICE == "cpu":  # the interpreter is on (conftest): explicit triton runs
        assert sampling.resolve_backend("triton", "cpu") == "triton"


def test_asking_for_triton_where_it_cannot_run_raises(monkeypatch):
    from cmacc import kernels
    monkeypatch.setattr(kernels, "_INTERPRET", False)
    with pytest.raises(RuntimeError, match="cannot run on cpu.*CUDA"):
        sampling.resolve_backend("triton", "cpu")
    monkeypatch.setenv("CMACC_SAMPLER_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="cannot run on cpu"):
        select(torch.randn(10, 4), torch.randn(2, 4), 2)


@pytest.mark.parametrize("rank1", [True, False])
def test_pruned_kernel_picks_equal_reference_on_a_clustered_pool(rank1, poison):
    """Tight clusters, where the bounds skip most rows (counted by the CPU twin): the kernel
    with pruned (masked) loads picks what the reference picks, with or without exclusions."""
    import numpy as np

    from cmacc.sampling import cpu
    x = clustered_rows(6, 30, 8, 0.05, seed=2)
    emb = dict(zip("ab", gradient_factors(x, unit_rows(5, 8, seed=9)))) if rank1 else {"x": x}
    num, n = 24, x.shape[0]
    noise = exp_noise(num, n, generator=torch.Generator().manual_seed(3))
    stats = np.zeros((num, len(cpu.STATS)), dtype=np.int64)
    want = kmeanspp_reference(num, noise, **emb)
    assert torch.equal(cpu.kmeanspp(num, noise, stats=stats, lazy=False, **emb), want)
    assert stats[1:, 2:4].sum() > 0.2 * stats[1:, 0].sum(), "the pool must exercise the bounds"
    dev = {k: v.to(KERNEL_DEVICE) for k, v in emb.items()}
    for prune in (True, False):
        assert torch.equal(kmeanspp(num, noise.to(KERNEL_DEVICE), prune=prune, **dev).cpu(), want), prune
    exclude = torch.zeros(n, dtype=torch.bool)
    exclude[::3] = True
    want = kmeanspp_reference(num, noise, exclude=exclude, **emb)
    got = kmeanspp(num, noise.to(KERNEL_DEVICE), exclude=exclude.to(KERNEL_DEVICE), **dev)
    assert torch.equal(got.cpu(), want)
