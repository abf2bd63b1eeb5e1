"""pytest-benchmark: one modality's active selection (pseudo-posterior + M seeding rounds).

    python -m pytest benchmarks/bench_sampler.py --benchmark-enable [--benchmark-json out.json]

Sizes come from the environment so the same file serves a laptop and an H100:
CMACC_BENCH_N (default 38400 on CUDA, 4800 on CPU), CMACC_BENCH_M (128), CMACC_BENCH_D (128).
`cmacc bench sampler` prints the same comparison as one table with ratios and bandwidth.
"""
import os

import pytest
import torch

from cmacc.bench.sampler import _run, traffic_bytes
from cmacc.sampling import exp_noise

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
N = int(os.environ.get("CMACC_BENCH_N", 38400 if DEVICE == "cuda" else 4800))
M = int(os.environ.get("CMACC_BENCH_M", 128))
D = int(os.environ.get("CMACC_BENCH_D", 128))


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator(device=DEVICE).manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(N, D, device=DEVICE, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(M, D, device=DEVICE, generator=g), dim=1)
    return keys, queries, exp_noise(M, N, generator=g, device=DEVICE)


def _bench(benchmark, impl, problem):
    keys, queries, noise = problem

    def run():
        out = _run(impl, keys, queries, M, noise)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out

    run()  # warm-up / compile
    benchmark.extra_info.update(impl=impl, device=DEVICE, N=N, M=M, d=D,
                                traffic_bytes=traffic_bytes(impl, N, M, D, M))
    benchmark.pedantic(run, rounds=3, iterations=1)


def test_factorised(benchmark, problem):
    _bench(benchmark, "factorised", problem)


def test_materialised(benchmark, problem):
    if N * M * D * 4 > 8e9:
        pytest.skip("materialised embeddings would exceed 8 GB")
    _bench(benchmark, "materialised", problem)


@pytest.mark.skipif(DEVICE != "cuda", reason="Triton timings need a CUDA device")
def test_triton(benchmark, problem):
    _bench(benchmark, "triton", problem)


@pytest.mark.skipif(DEVICE != "cpu", reason="the CPU fast path and its CPU peers")
@pytest.mark.parametrize("impl", ["numba", "badge_numpy", "sklearn"])
def test_cpu(benchmark, problem, impl):
    _bench(benchmark, impl, problem)
