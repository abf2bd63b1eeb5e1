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


# Z, from the equations: the mean of e^s over the first batch's negatives of the term(s) z_from names.
# AVID's code keeps one NCE criterion, whose first call (v->a for Cross, Joint and CMA; v->v for
# Self) fixes Z: z_from="first". z_from="all" averages the per-term means of every term.
FIRST_TERM = {"self": [("v", "v")], "cross": [("v", "a")], "joint": [("v", "a")], "cma": [("v", "a")]}
ALL_TERMS = {"self": [("v", "v"), ("a", "a")], "cross": [("v", "a"), ("a", "v")],
             "joint": [("v", "a"), ("a", "v"), ("v", "v"), ("a", "a")],
             "cma": [("v", "a"), ("a", "v"), ("v", "v"), ("a", "a")]}


def _cma_model(n=30, K=10, pos_k=5, **kw):
    model = _model("cma", n=n, K=K, pos_k=pos_k, **kw)
    model.find_positives()
    return model


@pytest.mark.parametrize("objective", ["self", "cross", "joint", "cma"])
@pytest.mark.parametrize("z_from", ["first", "all"])
def test_z_is_the_mean_exp_score_of_the_chosen_terms_negatives_then_kept(objective, z_from):
    model = _cma_model(within_negatives=4, z_from=z_from) if objective == "cma" else _model(objective, z_from=z_from)
    assert float(model.Z) < 0
    v, a = _batch()
    ids = torch.tensor([1, 2, 3, 4, 5, 6])
    neg_ids, _ = model._uniform(ids, torch.Generator().manual_seed(0))
    banks = {"v": model.bank_v.clone(), "a": model.bank_a.clone()}
    with torch.no_grad():
        q = {"v": model.f_v(v).double(), "a": model.f_a(a).double()}
    means = []
    for m, t in (FIRST_TERM if z_from == "first" else ALL_TERMS)[objective]:
        within_set = objective == "cma" and m == t  # CMA's within-modal term: its first 4 negatives
        negs = neg_ids[:, :4] if within_set else neg_ids
        scores = [[float(q[m][r] @ banks[t][j].double()) / 0.07 for j in negs[r].tolist()] for r in range(6)]
        means.append(sum(math.exp(x) for row in scores for x in row) / sum(len(row) for row in scores))
    want = sum(means) / len(means)
    model(v, a, ids, generator=torch.Generator().manual_seed(0))
    Z1 = float(model.Z)
    assert Z1 == pytest.approx(want, rel=1e-5)
    model(*_batch(seed=1), torch.tensor([7, 8, 9, 10, 11, 12]), generator=torch.Generator().manual_seed(1))
    assert float(model.Z) == Z1


def test_the_two_z_choices_differ_on_the_same_inputs():
    """What the choice changes: on one batch, Cross's v->a mean and the mean over v->a and a->v."""
    zs = {}
    for z_from in ("first", "all"):
        model = _model("cross", z_from=z_from)
        model(*_batch(), torch.tensor([1, 2, 3, 4, 5, 6]), generator=torch.Generator().manual_seed(0))
        zs[z_from] = float(model.Z)
    assert abs(zs["first"] / zs["all"] - 1) > 1e-3


def _nce_by_hand(q, pos_rows, neg_rows, Z, tau=0.07):
    """One row of Wu et al.'s NCE, written out: -mean_p log h(s_p) - sum_n log(1 - h(s_n)),
    h(s) = e^s / (e^s + K Z) with K = len(neg_rows)."""
    K = len(neg_rows)
    h = lambda s: math.exp(s) / (math.exp(s) + K * Z)  # noqa: E731
    s_pos = [float(q @ r) / tau for r in pos_rows]
    s_neg = [float(q @ r) / tau for r in neg_rows]
    return -sum(math.log(h(x)) for x in s_pos) / len(s_pos) - sum(math.log(1 - h(x)) for x in s_neg)


@pytest.mark.parametrize("cross_positives", ["instance", "instance+set"])
@pytest.mark.parametrize("num_positives, within_negatives", [(0, 4), (3, 0), (0, 50)])
def test_cma_loss_term_by_term(cross_positives, num_positives, within_negatives):
    """AVID-CMA's loss from its definition, row by row in float64: the cross-modal NCE of v_i against
    ā (and a_i against v̄) whose positives are i (``instance``, AVID-CMA's code) or i and the step's
    positives of P_i; plus within_weight x the within-modal NCE whose positives are the step's
    positives and whose negatives are the first ``within_negatives`` of the clip's K (0 or >= K:
    all). The step's positives: all of P_i (num_positives=0, AVID-CMA's code) or num_positives draws."""
    model = _cma_model(K=10, pos_k=5, num_positives=num_positives, within_negatives=within_negatives,
                       cross_positives=cross_positives, within_weight=0.5)
    model.Z.fill_(3.0)  # CMA's Z comes from its source run
    v, a = _batch()
    ids = torch.tensor([0, 4, 9, 13, 21, 29])
    neg_ids, pos_ids = model._uniform(ids, torch.Generator().manual_seed(2))
    P = model.positives[ids]
    if num_positives == 0:
        assert torch.equal(pos_ids, P)  # every positive of P_i, every step
    else:
        assert pos_ids.shape == (6, num_positives) and all(set(pos_ids[r].tolist()) <= set(P[r].tolist())
                                                           for r in range(6))
    W = within_negatives if 0 < within_negatives < 10 else 10
    banks = {"v": model.bank_v.double().clone(), "a": model.bank_a.double().clone()}
    out = model(v, a, ids, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        q = {"v": model.f_v(v).double(), "a": model.f_a(a).double()}
    want = {"v": 0.0, "a": 0.0}
    for r, i in enumerate(ids.tolist()):
        pos, neg = pos_ids[r].tolist(), neg_ids[r].tolist()
        for m, t in (("v", "a"), ("a", "v")):
            cross_rows = [i] + (pos if cross_positives == "instance+set" else [])
            want[m] += _nce_by_hand(q[m][r], banks[t][cross_rows], banks[t][neg], 3.0) / 6
            want[m] += 0.5 * _nce_by_hand(q[m][r], banks[m][pos], banks[m][neg[:W]], 3.0) / 6
    assert float(out.loss_v) == pytest.approx(want["v"], rel=1e-5)
    assert float(out.loss_a) == pytest.approx(want["a"], rel=1e-5)


def test_cma_defaults_are_the_released_code():
    cfg = load_config(overrides=["method=avid_cross"])
    c = cfg.cma
    assert (cfg.avid.z_from, c.num_positives, c.cross_positives, c.within_negatives, c.pos_k, c.within_weight) == \
        ("first", 0, "instance", 64, 32, 1.0)
    assert load_config(overrides=["preset=paper"]).cma.resample_every == 5  # the released configs' resample_freq


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


@pytest.mark.parametrize("key, value, match", [
    ("avid.z_from", "last", "avid.z_from"), ("cma.cross_positives", "set", "cma.cross_positives"),
    ("cma.num_positives", -1, "cma.num_positives"), ("cma.num_positives", 7, "cma.num_positives"),
    ("cma.within_negatives", -2, "cma.within_negatives")])
def test_bad_cma_and_z_options_name_their_key(avid_run, key, value, match):
    with pytest.raises(ConfigError, match=match):
        tiny("method=avid_cma", f"init_from={avid_run}", "cma.pos_k=6", f"{key}={value}")


@pytest.fixture(scope="module")
def avid_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("avid") / "run"
    pretrain(tiny("method=avid_cross", "steps=1"), out)
    return out


@pytest.mark.parametrize("how", ["encode", "random"])
def test_bank_init(tmp_path, how):
    """encode: before any update, every bank row is the initial encoders' embedding of its clip
    (train-mode BN over mini-batches of M, as the run encodes them); random: unit Gaussian rows."""
    from cmacc.data import ClipRequest
    from cmacc.data.build import build_data
    from cmacc.engine.assembly import build_encoders
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
