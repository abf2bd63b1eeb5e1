"""AVID (Self/Cross/Joint) and AVID-CMA: NCE, memory banks, negatives, positive sets, Z, resume."""
import json
import math

import pytest
import torch
from runs import TINY, Crash, crash_then_resume, losses

from cmacc.methods.avid.model import AVID
from cmacc.methods.avid.positives import agreement_topk, draw_outside
from cmacc.methods.losses import infonce_multi, nce
from cmacc.config import ConfigError, load_config
from cmacc.models import build_encoder
from cmacc.engine.train import pretrain

AVID_TINY = TINY + ["avid.num_negatives=24", "probe.enabled=false"]


def tiny(*extra):
    return load_config(overrides=AVID_TINY + list(extra))


def _direct_nce(pos, neg, Z):
    """Wu et al. (2018) as printed: P(data | s) = e^s / (e^s + K Z)."""
    K = neg.shape[1]
    h_pos = pos.exp() / (pos.exp() + K * Z)
    h_neg = neg.exp() / (neg.exp() + K * Z)
    return (-(h_pos.log()).mean(1) - (1 - h_neg).log().sum(1)).mean()


@pytest.mark.parametrize("P", [1, 3])
def test_nce_equals_the_direct_formula_and_its_gradient(P):
    g = torch.Generator().manual_seed(0)
    pos = (torch.randn(5, P, generator=g, dtype=torch.float64) * 3).requires_grad_()
    neg = (torch.randn(5, 7, generator=g, dtype=torch.float64) * 3).requires_grad_()
    Z = torch.tensor(2.5, dtype=torch.float64)
    loss = nce(pos, neg, Z)
    torch.testing.assert_close(loss, _direct_nce(pos, neg, Z))
    loss.backward()
    h = lambda s: s.exp() / (s.exp() + 7 * Z)  # noqa: E731
    with torch.no_grad():  # analytic: dL/ds_pos = -(1 - h) / (P m), dL/ds_neg = h / m
        torch.testing.assert_close(pos.grad, -(1 - h(pos)) / (P * 5))
        torch.testing.assert_close(neg.grad, h(neg) / 5)
    big = nce(torch.tensor([[80.0]]), torch.tensor([[-80.0, 90.0]]), torch.tensor(1.0, dtype=torch.float64))
    assert torch.isfinite(big)  # softplus form: no overflow where e^s is inf in fp32


def test_infonce_variant_is_cross_entropy_with_the_positive_first():
    g = torch.Generator().manual_seed(1)
    pos, neg = torch.randn(4, 1, generator=g), torch.randn(4, 9, generator=g)
    ce = torch.nn.functional.cross_entropy(torch.cat([pos, neg], 1), torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(infonce_multi(pos, neg), ce)


def _model(objective="cross", n=40, K=8, **kw):
    torch.manual_seed(0)
    f_v = build_encoder("video", "tiny", d=16, with_fc=False)
    f_a = build_encoder("audio", "tiny", d=16, with_fc=False, mel_bands=80)
    return AVID(f_v, f_a, n, objective=objective, K=K, **kw)


def _batch(m=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, 3, 4, 16, 16, generator=g), torch.randn(m, 80, 16, generator=g)


def test_bank_update_rule():
    model = _model(momentum=0.5)
    ids = torch.tensor([3, 7, 11])
    before_v, before_a = model.bank_v.clone(), model.bank_a.clone()
    x_v = torch.nn.functional.normalize(torch.randn(3, 16), dim=1)
    x_a = torch.nn.functional.normalize(torch.randn(3, 16), dim=1)
    model.update_banks(ids, x_v, x_a)
    want = torch.nn.functional.normalize(0.5 * before_v[ids] + 0.5 * x_v, dim=1)
    torch.testing.assert_close(model.bank_v[ids], want)
    torch.testing.assert_close(model.bank_a[ids], torch.nn.functional.normalize(0.5 * before_a[ids] + 0.5 * x_a, dim=1))
    others = torch.ones(40, dtype=torch.bool)
    others[ids] = False
    assert torch.equal(model.bank_v[others], before_v[others]) and torch.equal(model.bank_a[others], before_a[others])
    torch.testing.assert_close(model.bank_v.norm(dim=1), torch.ones(40))


def test_negatives_never_include_the_clip_nor_its_positives():
    g = torch.Generator().manual_seed(0)
    excluded = torch.tensor([[0, 5, 6, 19], [2, 3, 4, 18], [15, 16, 17, 19]])
    idx = draw_outside(20, excluded, 4000, g)
    for row, ex in zip(idx, excluded):
        assert not torch.isin(row, ex).any()
        counts = torch.bincount(row, minlength=20)
        allowed = ~torch.isin(torch.arange(20), ex)
        assert (counts[allowed] > 180).all() and (counts[~allowed] == 0).all()  # uniform over the other 16 (~250)
    # inside a step: K negatives per query, never the query's own clip
    model = _model(n=12, K=11)
    ids = torch.tensor([0, 4, 11])
    neg, pos = model._uniform(ids, torch.Generator().manual_seed(3))
    assert pos is None and neg.shape == (3, 11) and not (neg == ids[:, None]).any()


def test_cma_positives_equal_brute_force_and_are_never_negatives():
    g = torch.Generator().manual_seed(0)
    bv = torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=1)
    ba = torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=1)
    for how, combine in (("consensus", min), ("union", max), ("video", lambda v, a: v), ("audio", lambda v, a: a)):
        got = agreement_topk(bv, ba, 5, how, chunk=7)
        for i in range(30):
            score = {j: combine(float(bv[i] @ bv[j]), float(ba[i] @ ba[j])) for j in range(30) if j != i}
            want = sorted(sorted(score, key=score.get, reverse=True)[:5])
            assert got[i].tolist() == want, (how, i)
    model = _model("cma", n=30, K=10, pos_k=5, num_positives=3)
    model.bank_v.copy_(bv)
    model.bank_a.copy_(ba)
    model.find_positives()
    ids = torch.arange(30)
    neg, pos = model._uniform(ids, torch.Generator().manual_seed(0))
    P = agreement_topk(bv, ba, 5)
    for i in range(30):
        assert set(pos[i].tolist()) <= set(P[i].tolist())
        assert not set(neg[i].tolist()) & (set(P[i].tolist()) | {i})


def test_z_is_fixed_by_the_first_batch():
    model = _model()
    assert float(model.Z) < 0
    v, a = _batch()
    ids = torch.tensor([1, 2, 3, 4, 5, 6])
    g = torch.Generator().manual_seed(0)
    neg_ids, _ = model._uniform(ids, g)
    with torch.no_grad():
        q_v, q_a = model.f_v(v), model.f_a(a)
        s_va = torch.einsum("md,mkd->mk", q_v, model.bank_a[neg_ids]) / 0.07  # v against ā's negatives
        s_av = torch.einsum("md,mkd->mk", q_a, model.bank_v[neg_ids]) / 0.07
        want = torch.stack([s_va.exp().mean(), s_av.exp().mean()]).mean()
    model(v, a, ids, generator=torch.Generator().manual_seed(0))
    Z1 = float(model.Z)
    assert Z1 == pytest.approx(float(want), rel=1e-5)
    model(*_batch(seed=1), torch.tensor([7, 8, 9, 10, 11, 12]), generator=torch.Generator().manual_seed(1))
    assert float(model.Z) == Z1


@pytest.mark.parametrize("objective, terms", [("self", {("v", "v"), ("a", "a")}), ("cross", {("v", "a"), ("a", "v")}),
                                              ("joint", {("v", "v"), ("a", "a"), ("v", "a"), ("a", "v")})])
def test_each_variant_contrasts_what_its_equation_says(objective, terms):
    """Eq. 1-3: the loss equals the sum of NCE terms (query modality -> bank) recomputed here."""
    model = _model(objective)
    v, a = _batch()
    ids = torch.tensor([0, 5, 9, 13, 21, 30])
    banks = {"v": model.bank_v.clone(), "a": model.bank_a.clone()}
    neg_ids, _ = model._uniform(ids, torch.Generator().manual_seed(4))
    out = model(v, a, ids, generator=torch.Generator().manual_seed(4))
    q = {"v": model.f_v(v), "a": model.f_a(a)}
    want = 0
    for m, t in terms:
        pos = (q[m] * banks[t][ids]).sum(1, keepdim=True) / 0.07
        neg = torch.einsum("md,mkd->mk", q[m], banks[t][neg_ids]) / 0.07
        want = want + nce(pos, neg, model.Z)
    torch.testing.assert_close(out.loss, want)
    assert not torch.equal(model.bank_v[ids], banks["v"][ids])  # updated after the loss


def test_active_negatives_come_from_the_sampler_and_skip_the_batch():
    model = _model(negatives="gradient", n=40, K=8)
    ids = torch.tensor([0, 1, 2, 3, 4, 5])
    out = model(*_batch(), ids, generator=torch.Generator().manual_seed(0))
    for negs in (out.negatives_v, out.negatives_a):
        assert negs.shape == (8,) and len(set(negs.tolist())) == 8 and not torch.isin(negs, ids).any()
    assert out.timings["sampler"] >= 0


@pytest.mark.parametrize("method", ["avid_cross", "avid_joint"])
def test_resume_reproduces_uninterrupted_losses_and_keeps_z(tmp_path, method):
    cfg = tiny(f"method={method}")
    pretrain(cfg, tmp_path / "a")
    steps_a, loss_a = losses(tmp_path / "a")

    def crash(step, rec):
        if step == 7:
            raise Crash
    with pytest.raises(Crash):
        pretrain(cfg, tmp_path / "b", on_step=crash)
    z_saved = float(torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)["model"]["Z"])
    assert z_saved > 0
    pretrain(cfg, tmp_path / "b", resume=True)
    assert losses(tmp_path / "b") == (steps_a, loss_a)  # bit-identical on CPU
    z_a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=False)["model"]["Z"]
    assert float(z_a) == z_saved  # the first batch's Z, kept through the run and the resume


def test_cma_starts_from_an_avid_run(tmp_path):
    pretrain(tiny("method=avid_cross", "steps=4"), tmp_path / "avid")
    src = torch.load(tmp_path / "avid" / "checkpoints" / "last.pt", weights_only=False)["model"]
    cfg = tiny("method=avid_cma", f"init_from={tmp_path / 'avid'}", "cma.pos_k=6", "cma.num_positives=2", "steps=13")
    seen = {}

    def spy(step, rec):
        seen[step] = rec

    pretrain(cfg, tmp_path / "cma", on_step=spy)
    first = json.loads((tmp_path / "cma" / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(first["loss"])
    assert "time_positives" in seen[13] and all("time_positives" not in seen[s] for s in range(1, 13))  # epoch 12
    end = torch.load(tmp_path / "cma" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert float(end["Z"]) == float(src["Z"])  # Z restored from the AVID run, not re-estimated
    assert end["positives"].shape == (96, 6) and (end["positives"] >= 0).all()


def test_cma_needs_an_avid_run(tmp_path):
    with pytest.raises(ConfigError, match="init_from"):
        tiny("method=avid_cma")
    pretrain(load_config(overrides=TINY + ["method=xmoco", "steps=2", "probe.enabled=false"]), tmp_path / "moco")
    with pytest.raises(ConfigError, match="bank_v|does not fit"):
        pretrain(tiny("method=avid_cma", f"init_from={tmp_path / 'moco'}"), tmp_path / "cma")


@pytest.mark.parametrize("how", ["encode", "random"])
def test_bank_init(tmp_path, how):
    """encode: before any update, every bank row is the initial encoders' embedding of its clip
    (train-mode BN over mini-batches of M, as the run encodes them); random: unit Gaussian rows."""
    from cmacc.data import ClipRequest
    from cmacc.data.build import build_data
    from cmacc.engine.train import build_encoders
    cfg = tiny("method=avid_cross", f"avid.bank_init={how}", "steps=1", "run.keep_checkpoints=3")
    pretrain(cfg, tmp_path / "r")
    bank = torch.load(tmp_path / "r" / "checkpoints" / "step_00000000.pt", weights_only=False)["model"]
    torch.testing.assert_close(bank["bank_v"].norm(dim=1), torch.ones(96))
    f_v, f_a = build_encoders(cfg)
    data = build_data(cfg, torch.device("cpu")).train
    items = [data[ClipRequest(i, 0, "bank")] for i in range(16)]  # the first two mini-batches of M=8
    with torch.no_grad():
        want_v = torch.cat([f_v(torch.stack([it["video"] for it in items[j:j + 8]])) for j in (0, 8)])
        want_a = torch.cat([f_a(torch.stack([it["audio"] for it in items[j:j + 8]])) for j in (0, 8)])
    if how == "encode":
        torch.testing.assert_close(bank["bank_v"][:16], want_v, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bank["bank_a"][:16], want_a, rtol=1e-4, atol=1e-5)
    else:
        assert float((bank["bank_v"][:16] * want_v).sum(1).abs().mean()) < 0.5  # unrelated to the clips


def test_an_avid_run_is_evaluated_block_by_block(tmp_path):
    """AVID's Table 1 is a block-wise linear evaluation: `cmacc eval` reads an AVID run's encoders
    and reports every stage; its layer4 row is the run's own summary probe."""
    from cmacc.cli import main
    summary = pretrain(load_config(overrides=TINY + ["method=avid_self", "avid.num_negatives=24", "steps=3"]),
                       tmp_path / "run")
    assert main(["eval", "synthetic", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "ev")]) == 0
    for mod in ("video", "audio"):
        res = json.loads((tmp_path / "ev" / f"synthetic_{mod}.json").read_text())
        assert set(res["stages"]) == {"conv1", "layer1", "layer2", "layer3", "layer4", "embedding"}
        assert 100 * res["stages"]["layer4"]["mean"] == pytest.approx(summary["probe"][mod]["pretrained"], abs=1e-9)


def test_active_negatives_from_the_bank_end_to_end(tmp_path):
    """avid.negatives=gradient: cmacc.sampling.select over the bank inside training; resumable."""
    cfg = tiny("method=avid_cross", "avid.negatives=gradient", "avid.num_negatives=16", "steps=6",
               "run.checkpoint_every=3")
    pretrain(cfg, tmp_path / "a")
    steps_a, loss_a = losses(tmp_path / "a")
    recs = [json.loads(ln) for ln in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["time_sampler"] > 0 for r in recs) and all(0 <= r["false_neg"] <= 1 for r in recs)
    crash_then_resume(cfg, tmp_path / "b", 4)
    assert losses(tmp_path / "b") == (steps_a, loss_a)
