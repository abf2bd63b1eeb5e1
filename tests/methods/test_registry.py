"""The method registry: every name builds, validates and trains through the one engine; the
families' hooks that the engine relies on (chance-level loss, SyncBN modules) hold on their own."""
import json
import math
import re

import pytest
import torch

from cmacc import methods
from cmacc.cli import main
from cmacc.config import load_config
from cmacc.engine.bn import convert_sync_batchnorm
from cmacc.engine.assembly import build_model
from cmacc.engine.train import pretrain
from cmacc.methods import METHODS
from cmacc.reproduce import METHODS as EXPERIMENTS
from conftest import ROOT
from runs import TINY

ALL = ("cmacc", "xmoco", "xmoco_nofcl", "smoco", "ohem", "feature_active", "key_gradient_active", "random_pool",
       "avid_self", "avid_cross", "avid_joint", "avid_cma")
AVID_TINY = ["avid.num_negatives=24", "cma.pos_k=4", "cma.num_positives=2"]


def test_the_registry_lists_all_twelve_methods_by_family():
    assert tuple(METHODS) == ALL
    assert methods.methods_of("moco") == ALL[:8] and methods.methods_of("avid") == ALL[8:]
    for name, spec in METHODS.items():
        assert methods.family(name).name == spec.family == methods.family_of(name)
    with pytest.raises(KeyError, match="no method or family 'bogus'"):
        methods.family("bogus")


def test_every_experiment_names_registered_methods():
    for experiment, names in EXPERIMENTS.items():
        assert set(names) <= set(METHODS), experiment


@pytest.fixture(scope="module")
def avid_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("avid") / "src"
    pretrain(load_config(overrides=TINY + AVID_TINY + ["method=avid_cross", "steps=2", "probe.enabled=false"]), out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", ALL)
def test_every_registered_method_builds_validates_and_trains_two_steps(tmp_path, method, avid_run):
    extra = [f"init_from={avid_run}"] if method == "avid_cma" else []
    cfg = load_config(overrides=TINY + AVID_TINY + extra + [f"method={method}", "steps=2", "probe.enabled=false"])
    summary = pretrain(cfg, tmp_path / "r")
    recs = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert summary["method"] == method and [r["step"] for r in recs] == [1, 2]
    assert all(math.isfinite(r["loss"]) and len(r["picks_digest"]) == 16 for r in recs)
    family = METHODS[method].family
    assert (recs[0]["age_gap_v"] is None) == (family == "avid")  # only FIFO dictionaries have an age


def test_cmacc_methods_prints_the_registry(capsys):
    assert main(["methods"]) == 0
    head, *lines = capsys.readouterr().out.splitlines()
    assert head.split() == ["method", "family", "options", "paper"]
    assert [ln.split()[0] for ln in lines] == list(ALL)
    assert lines[0].split()[:2] == ["cmacc", "moco"] and "CM-ACC Table 1 row 6" in lines[0]
    assert len({ln.index(" objective=") for ln in lines}) == 1  # aligned columns


def test_the_readme_method_table_is_the_registry():
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` +\| (\w+) +\| ([^|]*?) +\| ([^|]*?) +\|$", text, flags=re.M)
    assert rows, "README.md has no method table"
    want = [(r["method"], r["family"], " ".join(f"{k}={v}" for k, v in r["options"].items()), r["paper"])
            for r in methods.table()]
    assert [(m, f, o.replace("`", ""), p.replace("\\|", "|")) for m, f, o, p in rows] == want


# ---- the families' hooks, on hand-made collapsed models ----
def _collapsed(model, d):
    """Every query and every bank row at the same unit vector: every score is 1 / tau."""
    e = torch.nn.functional.one_hot(torch.zeros((), dtype=torch.long), d).float()
    model.bank_v.copy_(e.expand_as(model.bank_v))
    model.bank_a.copy_(e.expand_as(model.bank_a))
    model.encode_queries.forward = lambda video, audio: (e.expand(len(video), d), e.expand(len(audio), d))
    return model


@pytest.mark.parametrize("method,loss", [("avid_self", "nce"), ("avid_cross", "nce"), ("avid_joint", "nce"),
                                         ("avid_cross", "infonce"), ("avid_joint", "infonce")])
def test_avid_chance_loss_is_the_loss_of_collapsed_embeddings(method, loss):
    """The collapse watch compares each direction's loss with the family's chance level: for AVID
    NCE with K negatives and Z = e^{1/tau} (estimated on the collapsed batch), each term is
    softplus(log K) + K softplus(-log K) = log(1 + K) + K log(1 + 1/K); InfoNCE's is log(1 + K).
    (The engine used log(K + 1) of the MoCo queue size K for every method.)"""
    cfg = load_config(overrides=TINY + AVID_TINY + [f"method={method}", f"avid.loss={loss}"])
    model = _collapsed(build_model(cfg, "torch", n_train=cfg.data.train_size), cfg.model.d)
    ids = torch.arange(cfg.M)
    out = model(torch.zeros(cfg.M, 3, 4, 16, 16), torch.zeros(cfg.M, 80, 8), ids,
                generator=torch.Generator().manual_seed(0))
    K, terms = cfg.avid.num_negatives, 2 if method == "avid_joint" else 1
    per_term = math.log(1 + K) + K * math.log(1 + 1 / K) if loss == "nce" else math.log(1 + K)
    chance = methods.family(method).chance_loss(cfg, model)
    assert chance == pytest.approx(terms * per_term, rel=1e-9)
    assert float(out.loss_v) == pytest.approx(chance, rel=1e-5) and float(out.loss_a) == pytest.approx(chance, rel=1e-5)
    assert abs(chance - math.log(cfg.K + 1)) > 0.1  # what the watch compared with before


def test_moco_chance_loss_is_log_k_plus_one():
    cfg = load_config(overrides=TINY)
    assert methods.family("cmacc").chance_loss(cfg, None) == pytest.approx(math.log(cfg.K + 1))


@pytest.mark.parametrize("method", ["cmacc", "avid_cross"])
def test_sync_bn_converts_every_batchnorm_of_the_model(method):
    """model.sync_bn on CUDA converts the family's encoders' BN layers; checked here on CPU without
    a process group (the conversion only; SyncBatchNorm's forward needs CUDA). An AVID model has
    no key encoders: the engine used to reach for model.h_v and raise AttributeError."""
    cfg = load_config(overrides=TINY + AVID_TINY + [f"method={method}"])
    model = build_model(cfg, "torch", n_train=cfg.data.train_size)
    bn = torch.nn.modules.batchnorm._BatchNorm
    before = sum(isinstance(m, bn) for m in model.modules())
    convert_sync_batchnorm(methods.family(method).sync_bn_modules(model), None)
    synced = [m for m in model.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert before > 0 and len(synced) == before
    assert not [m for m in model.modules() if isinstance(m, bn) and not isinstance(m, torch.nn.SyncBatchNorm)]
    assert all(isinstance(m, torch.nn.SyncBatchNorm) for m in model.encode_queries.modules() if isinstance(m, bn))
