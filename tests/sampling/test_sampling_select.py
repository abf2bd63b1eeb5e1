"""k-means++ seeding: factorised == materialised, the D^2 law, exclusion, distinctness."""
import itertools

import pytest
import torch
from scipy import stats

from cmacc import sampling
from cmacc.sampling import exp_noise, gradient_embeddings, gradient_factors, kmeanspp, select
from conftest import unit_rows


def test_factorised_distances_equal_materialised():
    """||g_n - g_m||^2 from the factors equals the distance between materialised embeddings."""
    k, Q = unit_rows(23, 7, seed=1, dtype=torch.float64), unit_rows(5, 7, seed=2, dtype=torch.float64)
    a, b = gradient_factors(k, Q)
    G = gradient_embeddings(k, Q)
    sq = (a * a).sum(1) * (b * b).sum(1)
    fact = sq[:, None] + sq[None, :] - 2 * (a @ a.T) * (b @ b.T)
    torch.testing.assert_close(fact, torch.cdist(G, G) ** 2, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("first", ["random", "norm"])
@pytest.mark.parametrize("N,M,d,num", [(31, 5, 3, 12), (64, 1, 9, 20), (17, 8, 16, 17)])
def test_factorised_picks_equal_materialised_picks(first, N, M, d, num):
    k, Q = unit_rows(N, d, seed=N, dtype=torch.float64), unit_rows(M, d, seed=M + 100, dtype=torch.float64)
    noise = exp_noise(num, N, generator=torch.Generator().manual_seed(3))
    a, b = gradient_factors(k, Q)
    fact = kmeanspp(num, noise, a=a, b=b, first=first)
    mat = kmeanspp(num, noise, x=gradient_embeddings(k, Q), first=first)
    assert torch.equal(fact, mat)
    assert len(set(fact.tolist())) == num


def _exact_sequence_probs(X: torch.Tensor, num: int, excluded: set[int]) -> dict[tuple, float]:
    """P(pick sequence) under Algorithm 3 with a uniform first centroid, computed in fp64."""
    n = X.shape[0]
    avail = [i for i in range(n) if i not in excluded]
    D = torch.cdist(X, X) ** 2
    probs = {}
    for seq in itertools.permutations(avail, num):
        p = 1.0 / len(avail)
        for t in range(1, num):
            d2 = D[list(seq[:t])].min(0).values
            cand = [i for i in avail if i not in seq[:t]]
            p *= float(d2[seq[t]] / d2[cand].sum())
        probs[seq] = p
    return probs


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_draws_follow_d2_probabilities(backend):
    """Empirical frequencies of whole pick sequences against Algorithm 3's exact probabilities."""
    N, M, d, num, draws = 5, 3, 2, 3, 6000
    k = unit_rows(N, d, seed=11, dtype=torch.float64) * torch.tensor([[1.0], [2.0], [0.5], [1.5], [1.0]], dtype=torch.float64)
    Q = unit_rows(M, d, seed=12, dtype=torch.float64)
    exclude = torch.tensor([False, False, False, True, False])
    exact = _exact_sequence_probs(gradient_embeddings(k, Q), num, {3})
    gen = torch.Generator().manual_seed(0)
    counts = dict.fromkeys(exact, 0)
    for _ in range(draws):
        seq = tuple(select(k, Q, num, exclude=exclude, generator=gen, backend=backend).tolist())
        assert seq in counts, f"impossible sequence {seq} (excluded row or repeat)"
        counts[seq] += 1
    obs = torch.tensor([counts[s] for s in exact], dtype=torch.float64)
    exp = torch.tensor([exact[s] for s in exact], dtype=torch.float64) * draws
    assert abs(exp.sum() - draws) < 1e-6
    chi2, p = stats.chisquare(obs.numpy(), exp.numpy())
    assert p > 1e-3, f"pick frequencies deviate from D^2 probabilities: chi2={chi2:.1f}, p={p:.2e}"


def test_race_is_uniform_when_all_remaining_are_duplicates():
    """Every remaining candidate at D^2 = 0: the draw is uniform among them, never a chosen row."""
    x = torch.zeros(6, 3, dtype=torch.float64)
    x[0] = 1.0  # one distinct row, five identical rows
    seen = set()
    gen = torch.Generator().manual_seed(5)
    for _ in range(200):
        picks = kmeanspp(4, exp_noise(4, 6, generator=gen), x=x, first="norm")
        assert picks[0] == 0 and len(set(picks.tolist())) == 4
        seen.update(picks[1:].tolist())
    assert seen == {1, 2, 3, 4, 5}


@pytest.mark.parametrize("embedding", sampling.EMBEDDINGS)
def test_exclude_honoured_and_picks_distinct(embedding):
    N, num = 97, 40
    k, Q = unit_rows(N, 8, seed=21), unit_rows(6, 8, seed=22)
    gen = torch.Generator().manual_seed(1)
    for trial in range(5):
        exclude = torch.rand(N, generator=gen) < 0.5
        exclude[:5] = True
        avail = int((~exclude).sum())
        n_pick = min(num, avail)
        idx = select(k, Q, n_pick, embedding=embedding, exclude=exclude, generator=gen)
        assert idx.dtype == torch.int64 and idx.shape == (n_pick,)
        assert len(set(idx.tolist())) == n_pick
        assert not exclude[idx].any()
    # exactly as many available as asked: all of them
    exclude = torch.ones(N, dtype=torch.bool)
    exclude[[3, 50, 96]] = False
    idx = select(k, Q, 3, embedding=embedding, exclude=exclude, generator=gen)
    assert sorted(idx.tolist()) == [3, 50, 96]


@pytest.mark.parametrize("embedding", sampling.EMBEDDINGS)
def test_same_generator_state_same_picks(embedding):
    k, Q = unit_rows(200, 16, seed=31), unit_rows(8, 16, seed=32)
    a = select(k, Q, 25, embedding=embedding, generator=torch.Generator().manual_seed(9))
    b = select(k, Q, 25, embedding=embedding, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    if embedding != "ohem":  # ohem is deterministic by definition
        c = select(k, Q, 25, embedding=embedding, generator=torch.Generator().manual_seed(10))
        assert not torch.equal(a, c)


def test_ohem_is_top_loss():
    k, Q = unit_rows(50, 4, seed=41), unit_rows(5, 4, seed=42)
    exclude = torch.zeros(50, dtype=torch.bool)
    exclude[::3] = True
    loss = sampling.pseudo_posterior(k, Q).loss.masked_fill(exclude, -1)
    idx = select(k, Q, 7, embedding="ohem", exclude=exclude)
    assert set(idx.tolist()) == set(loss.argsort(descending=True)[:7].tolist())


def test_first_centroid_norm_is_largest_gradient_norm():
    k, Q = unit_rows(40, 6, seed=51) * torch.linspace(0.5, 2, 40)[:, None], unit_rows(4, 6, seed=52)
    G = gradient_embeddings(k, Q)
    exclude = torch.zeros(40, dtype=torch.bool)
    top = int(G.norm(dim=1).argmax())
    assert int(select(k, Q, 1, first="norm")[0]) == top
    exclude[top] = True
    second = int(G.norm(dim=1).masked_fill(exclude, -1).argmax())
    assert int(select(k, Q, 1, first="norm", exclude=exclude)[0]) == second


def test_random_embedding_is_uniform():
    N, num, draws = 8, 3, 4000
    exclude = torch.zeros(N, dtype=torch.bool)
    exclude[0] = True
    gen = torch.Generator().manual_seed(2)
    counts = torch.zeros(N)
    k = unit_rows(N, 4, seed=1)
    for _ in range(draws):
        counts[select(k, None, num, embedding="random", exclude=exclude, generator=gen)] += 1
    assert counts[0] == 0
    _, p = stats.chisquare(counts[1:].numpy())
    assert p > 1e-3


def _class_prototype_pool(C, per_class, M, d, sigma, gen):
    """Pool keys that are C class prototypes plus noise; queries from a few of the classes."""
    centres = torch.nn.functional.normalize(torch.randn(C, d, generator=gen), dim=1)
    labels = torch.arange(C * per_class) % C
    keys = centres[labels] + sigma * torch.randn(len(labels), d, generator=gen)
    q_labels = torch.randint(0, C, (M,), generator=gen)
    queries = centres[q_labels] + sigma * torch.randn(M, d, generator=gen)
    norm = torch.nn.functional.normalize
    return norm(keys, dim=1), norm(queries, dim=1), labels


def test_diversity_samplers_cover_every_class_of_a_clustered_pool():
    """The paper's Fig. 2 property on keys that are pure class prototypes: k-means++ seeding
    (gradient, feature, key_gradient) picks one clip of every class; uniform draws and OHEM do not."""
    C, M, d, trials = 16, 16, 32, 6
    gen = torch.Generator().manual_seed(0)
    covered = {e: [] for e in ("gradient", "feature", "key_gradient", "random", "ohem")}
    for _ in range(trials):
        keys, queries, labels = _class_prototype_pool(C, 24, M, d, 0.0, gen)
        for embedding, got in covered.items():
            picks = select(keys, queries, M, embedding=embedding, generator=gen)
            got.append(len(labels[picks].unique()))
    for embedding in ("gradient", "feature", "key_gradient"):
        assert covered[embedding] == [C] * trials, (embedding, covered[embedding])
    # uniform draws of 16 from 16 equal classes cover 16 * (1 - (15/16)^16) ~ 10.3 on average
    assert max(covered["random"]) < C and sum(covered["random"]) / trials < 12.5
    assert max(covered["ohem"]) <= 3  # the hardest negatives of a clustered pool share a class


def test_select_rejects_bad_input():
    k, Q = unit_rows(10, 4, seed=1), unit_rows(3, 4, seed=2)
    with pytest.raises(ValueError, match="only 2 of 10"):
        select(k, Q, 3, exclude=torch.tensor([True] * 8 + [False] * 2))
    with pytest.raises(ValueError, match="embedding must be one of"):
        select(k, Q, 3, embedding="badge")
    with pytest.raises(ValueError, match="queries must be M x d"):
        select(k, unit_rows(3, 5, seed=3), 3)
    with pytest.raises(ValueError, match="needs the queries"):
        select(k, None, 3)
    with pytest.raises(ValueError, match="bool mask of shape"):
        select(k, Q, 3, exclude=torch.zeros(9, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN or Inf"):
        select(torch.full((10, 4), float("nan")), Q, 3)
    with pytest.raises(ValueError, match="non-negative int"):
        select(k, Q, -1)
    with pytest.raises(ValueError, match="backend must be one of"):
        select(k, Q, 3, backend="cuda")
    assert select(k, Q, 0).shape == (0,)


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf"), True, "1"])
def test_select_rejects_bad_temperature(temperature):
    k, Q = unit_rows(10, 4, seed=1), unit_rows(3, 4, seed=2)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        select(k, Q, 3, temperature=temperature)


@pytest.mark.parametrize("embedding", ["gradient", "random"])
@pytest.mark.parametrize("bad", [float("nan"), -1.0, float("inf")])
def test_select_rejects_bad_noise(embedding, bad):
    k, Q = unit_rows(10, 4, seed=1), unit_rows(3, 4, seed=2)
    noise = exp_noise(3, 10, generator=torch.Generator().manual_seed(0))
    noise[0, 4] = bad
    with pytest.raises(ValueError, match="noise must hold finite Exp\\(1\\) draws >= 0"):
        select(k, Q, 3, embedding=embedding, noise=noise)


def test_select_takes_numpy_lists_and_integer_likes_consistently():
    import numpy as np
    k, Q = unit_rows(40, 6, seed=1), unit_rows(5, 6, seed=2)
    mask = torch.zeros(40, dtype=torch.bool)
    mask[:7] = True
    ref = select(k, Q, 4, exclude=mask, generator=torch.Generator().manual_seed(3))
    for keys, queries, num, exclude in [(k.numpy(), Q.numpy(), np.int64(4), mask.numpy()),
                                        (k.tolist(), Q.tolist(), 4, mask.tolist()),
                                        (k, Q, torch.tensor(4).item(), mask)]:
        got = select(keys, queries, num, exclude=exclude, generator=torch.Generator().manual_seed(3))
        assert isinstance(got, torch.Tensor) and torch.equal(got, ref)
    with pytest.raises(ValueError, match="for a list of indices set mask"):
        select(k, Q, 4, exclude=[0, 1, 2])  # indices, not a mask: refused by name
    for num in (4.0, np.float32(4), True):
        with pytest.raises(ValueError, match="num must be a non-negative int"):
            select(k, Q, num)
    with pytest.raises(TypeError, match="pool_keys must be a torch.Tensor, numpy array or list"):
        select({"a": 1}, Q, 4)


def test_backend_resolution(monkeypatch):
    assert sampling.resolve_backend("auto", "cpu") == "numba"  # CPU tensors: numba's fused rounds
    assert sampling.resolve_backend("torch", "cpu") == "torch"
    assert sampling.resolve_backend("numba", "cpu") == "numba"
    monkeypatch.setenv("CMACC_SAMPLER_BACKEND", "torch")
    assert sampling.resolve_backend("auto", "cpu") == "torch"
    monkeypatch.setenv("CMACC_SAMPLER_BACKEND", "fast")
    with pytest.raises(ValueError, match="CMACC_SAMPLER_BACKEND"):
        sampling.resolve_backend("auto", "cpu")
