"""Code run inside each rank by test_distributed.py (one fresh interpreter per rank).

Each function joins the process group from the environment, asserts, and returns normally;
any failure raises, the process exits non-zero, and the test fails.
"""
import torch

from cmacc.system import dist


def _comm():
    comm = dist.init("cpu", timeout_s=60)
    assert comm.world == 2 and comm.backend == "gloo"
    return comm


def collectives():
    c = _comm()
    r, W = c.rank, c.world
    # gather: global position p comes from rank p % W, local row p // W
    x = torch.arange(5 * 3, dtype=torch.float32).view(5, 3) + 100 * r
    g = c.gather(x)
    assert g.shape == (10, 3)
    for p in range(10):
        assert torch.equal(g[p], torch.arange(3, dtype=torch.float32) + 3 * (p // W) + 100 * (p % W)), p
    assert torch.equal(c.shard(g), x)
    # permute: this rank's share of x_global[src], for several permutations (uneven exchanges)
    for seed in range(6):
        xg = torch.randn(14, 2, 3, generator=torch.Generator().manual_seed(seed))
        src = torch.randperm(14, generator=torch.Generator().manual_seed(100 + seed))
        got = c.permute(c.shard(xg).contiguous(), src)
        assert torch.equal(got, xg[src][r::W]), seed
    # non-contiguous input is made contiguous before the collective
    y = torch.randn(4, 6, generator=torch.Generator().manual_seed(r)).T[:4]
    assert torch.equal(c.shard(c.gather(y)), y)
    # broadcast_, average_, gather_values, gather_objects, broadcast_object
    t = torch.full((3,), float(r + 1))
    c.broadcast_([t])
    assert torch.equal(t, torch.ones(3))
    a, b = torch.full((2, 2), float(r)), torch.full((3,), 2.0 * r)
    c.average_([a, b])
    assert torch.equal(a, torch.full((2, 2), 0.5)) and torch.equal(b, torch.ones(3))
    table = c.gather_values([r, 10.0 + r])
    assert table.tolist() == [[0.0, 10.0], [1.0, 11.0]]
    assert c.gather_objects(f"r{r}") == ["r0", "r1"]
    assert c.broadcast_object({"from": r}) == {"from": 0}
    assert c.seconds > 0
    # assert_same: passes on identical tensors, names the one that differs
    same = {"queue": torch.arange(6.0), "ids": torch.arange(4)}
    d = c.assert_same(same)
    assert d == c.gather_objects(d)[0]
    differ = {"queue": torch.arange(6.0) + (1e-7 if r == 1 else 0.0), "ids": torch.arange(4)}
    try:
        c.assert_same(differ)
    except dist.CommError as e:
        assert "queue" in str(e) and "ids" not in str(e), e
    else:
        raise AssertionError("assert_same accepted different tensors")
    # agree: one rank's setup error reaches every rank
    try:
        c.agree(FileNotFoundError("no such file") if r == 1 else None)
    except (FileNotFoundError, dist.InputError) as e:
        assert "no such file" in str(e) and (r == 1 or "rank 1" in str(e))
    else:
        raise AssertionError("agree did not raise")
    c.close()


def shuffled_keys(bn_splits: str):
    """The cross-rank shuffle + per-rank BN reproduces one process with split BN over the global batch."""
    from cmacc.models import build_encoder
    from cmacc.methods.moco.model import CrossModalMoCo
    c = _comm()
    s = int(bn_splits)
    M, K, N, d = 8, 16, 48, 16

    def make(comm, splits):
        torch.manual_seed(0)
        f_v = build_encoder("video", "tiny", d=d, bn_splits=splits)
        f_a = build_encoder("audio", "tiny", d=d, bn_splits=splits)
        return CrossModalMoCo(f_v, f_a, K=K, M=M, N=N, m=0.9, tau=0.2, negatives="gradient", comm=comm)

    dist_model, ref = make(c, s // c.world), make(None, s)
    gen = torch.Generator().manual_seed(7)
    video, audio = torch.randn(M, 3, 4, 16, 16, generator=gen), torch.randn(M, 80, 16, generator=gen)
    pool_v = torch.nn.functional.normalize(torch.randn(N, d, generator=gen), dim=1)
    pool_a = torch.nn.functional.normalize(torch.randn(N, d, generator=gen), dim=1)
    ids = torch.arange(M) + 100
    for m in (dist_model, ref):
        m.set_pool(torch.arange(N) * 3, pool_v, pool_a)
    with torch.no_grad():
        k_dist = dist_model._keys(dist_model.h_v, c.shard(video),
                                dist_model._shuffle(c.shard(video).shape[0], torch.Generator().manual_seed(3)))
        k_ref = ref._keys(ref.h_v, video, ref._shuffle(video.shape[0], torch.Generator().manual_seed(3)))
    torch.testing.assert_close(k_dist, k_ref, rtol=1e-5, atol=1e-5)
    # one whole step: same picks, same queues, loss = mean of the ranks' losses
    o_dist = dist_model(c.shard(video), c.shard(audio), c.shard(ids), generator=torch.Generator().manual_seed(5))
    o_ref = ref(video, audio, ids, generator=torch.Generator().manual_seed(5))
    assert torch.equal(o_dist.written_v, o_ref.written_v) and torch.equal(o_dist.written_a, o_ref.written_a)
    assert torch.equal(dist_model.D_v_ids, ref.D_v_ids)
    torch.testing.assert_close(dist_model.D_v, ref.D_v, rtol=1e-5, atol=1e-5)
    loss = c.gather_values([float(o_dist.loss)]).mean()
    assert abs(float(loss) - float(o_ref.loss)) < 1e-5 * max(1.0, float(o_ref.loss)), (float(loss), float(o_ref.loss))
    c.close()


def nan_on_rank_one(out: str):
    """A non-finite loss on rank 1 only stops both ranks at the same step, before the update."""
    import json
    import pathlib

    import cmacc.methods.moco.model as moco
    from cmacc.config import load_config
    from cmacc.engine.train import Diverged, pretrain
    from runs import TINY
    rank = int(__import__("os").environ["RANK"])
    real = moco.infonce

    def poisoned(q, k, D, tau):
        loss, acc = real(q, k, D, tau)
        return (loss * float("nan") if rank == 1 and poisoned.calls > 6 else loss), acc
    poisoned.calls = 0

    def counting(*a):
        poisoned.calls += 1
        return poisoned(*a)
    moco.infonce = counting  # 2 calls per step: NaN from step 4 on rank 1
    cfg = load_config(overrides=TINY + ["probe.enabled=false", "run.checkpoint_every=1"])
    try:
        pretrain(cfg, out)
    except Diverged as e:
        assert "step 4: non-finite loss on rank(s) [1]" in str(e) and "last good checkpoint" in str(e) \
            and "(step 3)" in str(e), e
    else:
        raise AssertionError("no Diverged")
    if rank == 0:
        lines = pathlib.Path(out, "metrics.jsonl").read_text().splitlines()
        assert [json.loads(ln)["step"] for ln in lines] == [1, 2, 3]
