"""The CPU fast path of k-means++ seeding (cmacc.sampling.cpu, numba) vs its reference twin
(cmacc.sampling.kmeanspp): the same picks from the same noise, with and without exact pruning,
on awkward pools; pruning happens where it should and never changes a pick."""
import numpy as np
import pytest
import torch
from conftest import clustered_rows, unit_rows

from cmacc import sampling
from cmacc.sampling import cpu, exp_noise, gradient_factors, kmeanspp, select

CASES = [  # N (1, prime, small, larger than the M), M, d, num
    (1, 1, 1, 1), (2, 3, 2, 2), (5, 3, 2, 5), (97, 1, 33, 24), (131, 17, 7, 30), (300, 33, 9, 12), (1031, 8, 16, 64),
]


def _problem(N, M, d, dtype, seed):
    return unit_rows(N, d, seed=seed).to(dtype), unit_rows(M, d, seed=seed + 50).to(dtype)


def _noise(num, N, seed):
    return exp_noise(max(num, 1), N, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("prune", ["lazy", True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("first", ["random", "norm"])
@pytest.mark.parametrize("N,M,d,num", CASES)
def test_rank1_picks_equal_reference(N, M, d, num, first, dtype, prune):
    k, q = _problem(N, M, d, dtype, seed=N + M)
    a, b = gradient_factors(k, q)
    noise = _noise(num, N, 1)
    exclude = torch.rand(N, generator=torch.Generator().manual_seed(N)) < 0.25
    exclude[0] = False
    num = min(num, int((~exclude).sum()))
    want = kmeanspp(num, noise, a=a, b=b, exclude=exclude, first=first)
    got = cpu.kmeanspp(num, noise, a=a, b=b, exclude=exclude, first=first, **_mode(prune))
    assert torch.equal(got, want)
    assert not exclude[got].any() and len(set(got.tolist())) == num


def _mode(prune):
    return {"lazy": True} if prune == "lazy" else {"lazy": False, "prune": prune}


@pytest.mark.parametrize("prune", ["lazy", True, False])
@pytest.mark.parametrize("N,M,d,num", CASES)
def test_plain_picks_equal_reference(N, M, d, num, prune):
    x, _ = _problem(N, M, d, torch.float32, seed=3 * N)
    noise = _noise(num, N, 2)
    assert torch.equal(cpu.kmeanspp(num, noise, x=x, **_mode(prune)), kmeanspp(num, noise, x=x))


def test_duplicates_and_all_equal_rows():
    x = torch.zeros(9, 4)
    x[0] = 1.0  # one distinct row, eight identical ones: every D^2 = 0 after two picks
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        noise = exp_noise(6, 9, generator=gen)
        for lazy in (True, False):
            got = cpu.kmeanspp(6, noise, x=x, first="norm", lazy=lazy)
            assert torch.equal(got, kmeanspp(6, noise, x=x, first="norm")) and len(set(got.tolist())) == 6
    same = torch.ones(50, 8)  # all rows equal: the draw is uniform among the rest, never twice
    noise = exp_noise(50, 50, generator=gen)
    for lazy in (True, False):
        got = cpu.kmeanspp(50, noise, x=same, lazy=lazy)
        assert torch.equal(got, kmeanspp(50, noise, x=same)) and sorted(got.tolist()) == list(range(50))


def test_pruning_skips_rows_on_a_clustered_pool_and_keeps_every_pick():
    """A pool of tight clusters: after a centroid lands in each cluster, most rows are provably
    closer to their own centroid than to any new one -- they are skipped, and no pick changes."""
    x = clustered_rows(12, 150, 32, 0.05, seed=0)
    q = unit_rows(16, 32, seed=7)
    a, b = gradient_factors(x, q)
    for emb in ({"x": x}, {"a": a, "b": b}):
        noise = _noise(64, x.shape[0], 3)
        stats = np.zeros((64, len(cpu.STATS)), dtype=np.int64)
        got = cpu.kmeanspp(64, noise, lazy=False, prune=True, stats=stats, **emb)
        assert torch.equal(got, kmeanspp(64, noise, **emb))
        assert torch.equal(got, cpu.kmeanspp(64, noise, lazy=False, prune=False, **emb))
        rows, taken, by_norm, by_centroid, deferred, computed = stats[1:].sum(0)
        assert rows == 63 * x.shape[0] and taken + by_norm + by_centroid + computed == rows and deferred == 0
        if "x" in emb:  # plain rows in tight clusters: the centroid bound does most of the work
            assert (by_norm + by_centroid) / rows > 0.5, stats[1:].sum(0)


def test_pruned_rows_keep_their_exact_d2():
    """The bounds are lower bounds: for every pruned row, the distance to the new centroid is at
    least its D^2 (checked by brute force on a pool where both bounds fire)."""
    x = clustered_rows(6, 40, 8, 0.1, seed=1).double()
    num = 20
    noise = _noise(num, x.shape[0], 4)
    picks = cpu.kmeanspp(num, noise, x=x, lazy=False)
    assert torch.equal(picks, cpu.kmeanspp(num, noise, x=x))  # and the lazy rounds
    d2 = torch.cdist(x, x[picks]) ** 2  # brute force: D^2 after each round
    for t in range(1, num):  # the reference's choice in round t depends on min over picks[:t]
        ref = torch.where(d2[:, :t].min(1).values > 0, d2[:, :t].min(1).values / noise[t], -noise[t])
        ref[picks[:t]] = float("-inf")
        assert int(ref.argmax()) == int(picks[t]), t


@pytest.mark.parametrize("embedding", sampling.EMBEDDINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_select_numba_equals_torch(embedding, dtype):
    k, q = _problem(173, 11, 24, dtype, seed=5)
    exclude = torch.zeros(173, dtype=torch.bool)
    exclude[::4] = True
    picks = [select(k, q, 20, embedding=embedding, exclude=exclude, backend=b,
                    generator=torch.Generator().manual_seed(4)) for b in ("numba", "torch")]
    if embedding == "ohem":
        assert set(picks[0].tolist()) == set(picks[1].tolist())
    else:
        assert torch.equal(picks[0], picks[1])


def test_numba_refuses_cuda_tensors_by_name():
    with pytest.raises(RuntimeError, match="sampler backend 'numba' cannot run on cuda"):
        sampling.resolve_backend("numba", "cuda")


def test_bench_sampler_rows_per_thread_count_with_peers():
    from cmacc.bench.sampler import bench_sampler, format_table
    rows = bench_sampler("cpu", N=300, M=16, d=8, repeats=1, threads=(1, 2),
                         impls=("factorised", "numba", "badge_numpy", "sklearn"))
    assert [(r["threads"], r["impl"]) for r in rows] == [(t, i) for t in (1, 2) for i in
                                                        ("factorised", "numba", "badge_numpy", "sklearn")]
    numba_rows = [r for r in rows if r["impl"] == "numba"]
    assert all(r["same_picks_as_factorised"] and r["time_with_noise_s"] > r["time_s"] for r in numba_rows)
    assert all("same_picks_as_factorised" not in r for r in rows if r["impl"] in ("badge_numpy", "sklearn"))
    table = format_table(rows)
    assert "2 thread(s)" in table and "badge_numpy" in table


def test_sweep_plot_is_written(tmp_path):
    from cmacc.bench.sampler import bench_sampler, plot_sweep
    rows = []
    for n in (64, 128):
        rows += bench_sampler("cpu", N=n, M=8, d=4, repeats=1, impls=("factorised", "numba"))
    plot_sweep(rows, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_of_the_wrong_shape_are_refused():
    a, b = gradient_factors(*_problem(50, 4, 3, torch.float32, seed=1))
    with pytest.raises(ValueError, match=r"stats must be an int64 numpy array of shape \(>= 10, 6\)"):
        cpu.kmeanspp(10, _noise(10, 50, 1), a=a, b=b, stats=np.zeros((3, 6), dtype=np.int64))


@pytest.mark.parametrize("rank1", [True, False])
def test_lazy_rounds_read_few_rows_and_keep_every_pick(rank1):
    """Random pool, N = 3,000: after the first D^2 round (a full pass), a round refreshes only the
    rows whose stale bound D^2/E can still beat the best exact score -- a few per round."""
    k, q = _problem(3000, 32, 16, torch.float32, seed=8)
    emb = dict(zip("ab", gradient_factors(k, q))) if rank1 else {"x": k}
    noise = _noise(64, 3000, 6)
    stats = np.zeros((64, len(cpu.STATS)), dtype=np.int64)
    got = cpu.kmeanspp(64, noise, stats=stats, **emb)
    assert torch.equal(got, kmeanspp(64, noise, **emb))
    assert stats[1, 5] == 2999  # the first D^2 round reads every available row
    assert stats[2:, 5].mean() < 0.05 * 3000, stats[2:, 5]
    assert (stats[1:, 4] + stats[1:, 5] + stats[1:, 1] == stats[1:, 0]).all()
