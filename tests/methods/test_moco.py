"""Cross-modal momentum contrast: queues, momentum, the cross-modal FC layer, U \\ D."""
import pytest
import torch
from torch.nn import functional as F

from cmacc.models import build_encoder
from cmacc.methods.losses import infonce
from cmacc.methods.moco.model import CrossModalMoCo, age_gap
from cmacc.methods.shared import SamplerOptions

M, K, N, d = 4, 12, 32, 16


def make(fc="cross", negatives="queue", objective="cross", shuffle_bn=True, m=0.9, **kw):
    torch.manual_seed(0)
    with_fc = fc != "none"
    f_v = build_encoder("video", "tiny", d=d, with_fc=with_fc, bn_splits=2)
    f_a = build_encoder("audio", "tiny", d=d, with_fc=with_fc, bn_splits=2)
    return CrossModalMoCo(f_v, f_a, K=K, M=M, N=N, m=m, tau=0.2, objective=objective,
                          negatives=negatives, fc=fc, shuffle_bn=shuffle_bn, **kw)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(M, 3, 4, 16, 16, generator=g), torch.randn(M, 80, 16, generator=g)


def test_key_encoders_start_from_their_momentum_sources():
    model = make(fc="cross")
    torch.testing.assert_close(model.h_v.backbone.stem[0].weight, model.f_v.backbone.stem[0].weight)
    torch.testing.assert_close(model.h_a.fc.weight, model.f_v.fc.weight)  # cross-wired (§3.3)
    torch.testing.assert_close(model.h_v.fc.weight, model.f_a.fc.weight)
    assert not any(p.requires_grad for p in model.h_v.parameters())


@pytest.mark.parametrize("fc", ["cross", "self", "none"])
def test_momentum_update_and_fc_wiring(fc):
    model = make(fc=fc, m=0.9)
    with torch.no_grad():  # move the query encoders so the update is visible
        for p in list(model.f_v.parameters()) + list(model.f_a.parameters()):
            p.add_(torch.randn_like(p))
    before = {n: p.clone() for n, p in model.named_parameters()}
    model.momentum_update()
    after = dict(model.named_parameters())

    def expect(key, query):
        torch.testing.assert_close(after[key], 0.9 * before[key] + 0.1 * before[query], rtol=1e-6, atol=1e-6)

    expect("h_v.backbone.stem.0.weight", "f_v.backbone.stem.0.weight")
    expect("h_a.backbone.stem.0.weight", "f_a.backbone.stem.0.weight")
    expect("h_v.proj.weight", "f_v.proj.weight")
    expect("h_a.proj.bias", "f_a.proj.bias")
    if fc == "cross":  # the FC on top of h_a follows the FC of f_v, and vice versa
        expect("h_a.fc.weight", "f_v.fc.weight")
        expect("h_a.fc.bias", "f_v.fc.bias")
        expect("h_v.fc.weight", "f_a.fc.weight")
    elif fc == "self":
        expect("h_a.fc.weight", "f_a.fc.weight")
        expect("h_v.fc.weight", "f_v.fc.weight")
    else:
        assert model.h_a.fc is None and model.f_v.fc is None
    for n in before:  # query encoders untouched
        if n.startswith("f_"):
            assert torch.equal(after[n], before[n])


def test_queue_is_fifo_and_enqueues_the_batch_keys():
    model = make(negatives="queue")
    model.train()
    for step in range(K // M + 2):  # wrap around the queue once
        v, a = batch(step)
        ids = torch.arange(step * M, (step + 1) * M)
        ptr = int(model.queue_ptr)
        with torch.no_grad():
            out = model(v, a, ids, generator=torch.Generator().manual_seed(step))
        assert torch.equal(model.D_v_ids[ptr:ptr + M], ids) and torch.equal(model.D_a_ids[ptr:ptr + M], ids)
        assert int(model.queue_ptr) == (ptr + M) % K
        assert torch.equal(out.written_v, ids)
    # after K/M + 2 steps the queue holds the last K/M batches, oldest overwritten first
    held = sorted(model.D_v_ids.tolist())
    assert held == list(range(2 * M, (K // M + 2) * M))


def test_enqueued_keys_are_the_key_encoder_outputs():
    model = make(negatives="queue", shuffle_bn=False)
    v, a = batch(1)
    with torch.no_grad():
        kv, ka = model.h_v(v), model.h_a(a)
        model(v, a, torch.arange(M))
    torch.testing.assert_close(model.D_v[:M], kv)
    torch.testing.assert_close(model.D_a[:M], ka)


def test_shuffle_bn_unshuffles_keys():
    """With one BN split the shuffle cannot change any key: keys come back in batch order."""
    torch.manual_seed(0)
    f_v = build_encoder("video", "tiny", d=d, bn_splits=1)
    f_a = build_encoder("audio", "tiny", d=d, bn_splits=1)
    model = CrossModalMoCo(f_v, f_a, K=K, M=M, N=N, m=0.9, tau=0.2, negatives="queue", shuffle_bn=True)
    v, _ = batch(2)
    with torch.no_grad():
        k = model._keys(model.h_v, v, model._shuffle(v.shape[0], torch.Generator().manual_seed(3)))
        torch.testing.assert_close(k, model.h_v(v), rtol=1e-5, atol=1e-5)


def test_loss_is_bidirectional_infonce():
    model = make(negatives="queue", shuffle_bn=False)
    v, a = batch(3)
    D_v, D_a = model.D_v.clone(), model.D_a.clone()
    out = model(v, a, torch.arange(M))
    with torch.no_grad():
        q_v, q_a, k_v, k_a = model.f_v(v), model.f_a(a), model.h_v(v), model.h_a(a)
    def ref(q, k, D):
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ D.T], 1) / 0.2
        return F.cross_entropy(logits, torch.zeros(M, dtype=torch.long))
    torch.testing.assert_close(out.loss_v, ref(q_v, k_a, D_a), rtol=1e-5, atol=1e-5)  # q_v vs [k_a+; D_a]
    torch.testing.assert_close(out.loss_a, ref(q_a, k_v, D_v), rtol=1e-5, atol=1e-5)
    out.loss.backward()
    assert model.f_v.proj.weight.grad is not None and model.h_v.proj.weight.grad is None


def test_age_gap_compares_the_newest_block_of_the_queue_with_the_oldest():
    """Blocks of M slots, written FIFO: with the pointer at slot p (the next block to overwrite),
    slots p-M..p-1 are the newest and p..p+M-1 the oldest (wrapping around K)."""
    e = torch.eye(3)
    D = torch.stack([e[0], e[0], e[1], e[1], e[2], e[2]])  # K = 6, M = 2: blocks e0 | e1 | e2
    q = torch.stack([e[0], 0.5 * e[0] + 0.5 * e[2]])
    # pointer 2: newest = block e0 (slots 0, 1), oldest = block e1 (slots 2, 3)
    assert age_gap(q, D, torch.tensor(2), 2).item() == pytest.approx((1 + 0.5) / 2 - 0)
    # pointer 0: newest = block e2 (slots 4, 5, wrapped), oldest = block e0
    assert age_gap(q, D, torch.tensor(0), 2).item() == pytest.approx((0 + 0.5) / 2 - (1 + 0.5) / 2)
    assert age_gap(q, D[:2], torch.tensor(0), 2).item() == 0.0  # one block: nothing is older


@pytest.mark.parametrize("negatives", ["queue", "gradient"])
def test_step_reports_the_age_gap_of_the_dictionaries_it_contrasted_with(negatives):
    model = make(negatives=negatives, shuffle_bn=False, sampler=SamplerOptions(backend="torch"))
    g = torch.Generator().manual_seed(2)
    if negatives != "queue":
        model.set_pool(torch.arange(100, 100 + N), F.normalize(torch.randn(N, d, generator=g), dim=1),
                       F.normalize(torch.randn(N, d, generator=g), dim=1))
    model.init_queues(F.normalize(torch.randn(K, d, generator=g), dim=1),
                      F.normalize(torch.randn(K, d, generator=g), dim=1), torch.arange(K))
    model.queue_ptr.fill_(M)  # K = 3M: three blocks
    v, a = batch(8)
    D_v, D_a = model.D_v.clone(), model.D_a.clone()
    with torch.no_grad():
        out = model(v, a, torch.arange(1000, 1000 + M), generator=torch.Generator().manual_seed(0))
        q_v, q_a = model.f_v(v), model.f_a(a)
    if negatives == "queue":  # the loss met D as it was; the batch is enqueued after it, at slots M..2M-1
        newest, oldest = range(0, M), range(M, 2 * M)
    else:  # the picks were enqueued before the loss, at slots M..2M-1: they are the newest
        D_v[M:2 * M], D_a[M:2 * M] = model.D_v[M:2 * M], model.D_a[M:2 * M]
        newest, oldest = range(M, 2 * M), range(2 * M, 3 * M)
    def gap(q, D):
        return (q @ D[list(newest)].T).mean() - (q @ D[list(oldest)].T).mean()
    torch.testing.assert_close(out.age_gap_v, gap(q_a, D_v), rtol=1e-5, atol=1e-6)  # cross: q_a meets D_v
    torch.testing.assert_close(out.age_gap_a, gap(q_v, D_a), rtol=1e-5, atol=1e-6)


def test_unimodal_objective_uses_own_modality_keys():
    model = make(negatives="queue", objective="self", fc="none", shuffle_bn=False)
    v, a = batch(4)
    v2, a2 = batch(5)
    D_v = model.D_v.clone()
    out = model(v, a, torch.arange(M), v2, a2)
    with torch.no_grad():
        q_v, k_v = model.f_v(v), model.h_v(v2)
    torch.testing.assert_close(out.loss_v, infonce(q_v, k_v, D_v, 0.2)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("negatives", ["gradient", "feature", "key_gradient", "ohem", "random"])
def test_pool_picks_come_from_U_minus_D_and_not_the_batch(negatives):
    model = make(negatives=negatives, sampler=SamplerOptions(backend="torch"))
    g = torch.Generator().manual_seed(0)
    pool_ids = torch.arange(100, 100 + N)
    model.set_pool(pool_ids, F.normalize(torch.randn(N, d, generator=g), dim=1),
                   F.normalize(torch.randn(N, d, generator=g), dim=1))
    queue_ids = pool_ids[:K]  # the dictionary already holds the first K pool clips
    model.init_queues(model.U_v[:K].clone(), model.U_a[:K].clone(), queue_ids)
    batch_ids = pool_ids[K:K + M]  # and the mini-batch is the next M
    v, a = batch(6)
    with torch.no_grad():
        out = model(v, a, batch_ids, generator=torch.Generator().manual_seed(1))
    allowed = set(pool_ids[K + M:].tolist())
    assert set(out.written_v.tolist()) <= allowed and set(out.written_a.tolist()) <= allowed
    assert len(set(out.written_v.tolist())) == M
    assert torch.equal(model.D_v_ids[:M], out.written_v)  # enqueued before the loss (Alg. 1 l.21)
    # the enqueued keys are the pool's keys of the picked clips, in pick order
    pos = {int(i): n for n, i in enumerate(model.U_ids.tolist())}
    rows = torch.tensor([pos[int(i)] for i in out.written_v])
    torch.testing.assert_close(model.D_v[:M], model.U_v[rows])


def test_active_sampling_uses_other_modality_queries(monkeypatch):
    """Alg. 1 l.14-20: video negatives are chosen with the audio queries, and vice versa."""
    model = make(negatives="gradient", sampler=SamplerOptions(backend="torch"))
    model.set_pool(torch.arange(N), F.normalize(torch.randn(N, d), dim=1), F.normalize(torch.randn(N, d), dim=1))
    seen = []
    import cmacc.sampling as S
    real = S.select
    def spy(pool, queries, num, **kw):
        seen.append((pool.data_ptr(), queries.clone()))
        return real(pool, queries, num, **kw)
    monkeypatch.setattr(S, "select", spy)
    v, a = batch(7)
    with torch.no_grad():
        model(v, a, torch.arange(1000, 1000 + M), generator=torch.Generator().manual_seed(0))
        q_v, q_a = model.f_v(v), model.f_a(a)
    assert seen[0][0] == model.U_v.data_ptr() and seen[1][0] == model.U_a.data_ptr()
    torch.testing.assert_close(seen[0][1], q_a)
    torch.testing.assert_close(seen[1][1], q_v)


def test_constructor_rejects_inconsistent_setups():
    f_v = build_encoder("video", "tiny", d=d, with_fc=False)
    f_a = build_encoder("audio", "tiny", d=d, with_fc=False)
    with pytest.raises(ValueError, match="FC layer"):
        CrossModalMoCo(f_v, f_a, K=K, M=M, N=N, m=0.9, tau=0.2, fc="cross")
    with pytest.raises(ValueError, match="multiple of M"):
        CrossModalMoCo(f_v, f_a, K=10, M=M, N=N, m=0.9, tau=0.2, fc="none")
