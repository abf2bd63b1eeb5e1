"""The training loop end to end on a tiny configuration: resume, checkpoints, summary, errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cmacc.cli import main
from cmacc.config import load_config
from cmacc.engine.train import pretrain

from runs import TINY, crash_then_resume, losses, tiny


@pytest.mark.parametrize("method", ["cmacc", "xmoco", "smoco"])
def test_resume_reproduces_uninterrupted_losses(tmp_path, method):
    cfg = tiny(f"method={method}", "probe.enabled=false")
    pretrain(cfg, tmp_path / "a")
    steps_a, loss_a = losses(tmp_path / "a")
    assert steps_a == list(range(1, 13))
    crash_then_resume(cfg, tmp_path / "b", 7)  # killed after step 7's metrics, last checkpoint at step 4
    steps_b, loss_b = losses(tmp_path / "b")
    assert steps_b == steps_a
    assert loss_b == loss_a  # bit-identical on CPU


def test_summary_and_outputs(tmp_path):
    pretrain(tiny(), tmp_path / "r")
    out = tmp_path / "r"
    for f in ("config.yaml", "run.json", "metrics.jsonl", "summary.json", "checkpoints/last.pt"):
        assert (out / f).is_file(), f
    assert not list(out.rglob(".*.tmp-*"))  # no half-written files left behind
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "cmacc" and summary["steps"] == 12
    for mod in ("video", "audio"):
        assert set(summary["probe"][mod]) == {"pretrained", "random_init"}
        assert 0.0 <= summary["probe"][mod]["pretrained"] <= 100.0
    assert 1.0 <= summary["negatives"]["mean_categories"] <= 8.0
    assert summary["provenance"]["versions"]["torch"] and summary["sampler_backend"] == "numba"
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("loss", "lr", "time_data", "time_compute", "time_sampler", "neg_categories"):
        assert key in rec
    assert len(list((out / "checkpoints").glob("step_*.pt"))) == 1  # keep_checkpoints=1
    with pytest.raises(FileExistsError, match="--resume"):
        pretrain(tiny(), out)


def test_stale_pool_keys_option_runs(tmp_path):
    pretrain(tiny("sampler.fresh_keys=false", "probe.enabled=false", "steps=4"), tmp_path / "r")


def test_cli_config_errors_name_the_key(tmp_path, capsys):
    assert main(["pretrain", "--out", str(tmp_path / "x"), "--set", "K=100"]) == 2
    assert "config key 'K'" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(tmp_path / "x"), "--set", "nope=1"]) == 2
    assert "unknown config key 'nope'" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(tmp_path / "missing"), "--resume"]) == 2


def _cli(out: Path, *extra: str) -> list[str]:
    sets = [a for kv in TINY + ["probe.enabled=false", "steps=40", *extra] for a in ("--set", kv)]
    return [sys.executable, "-m", "cmacc", "pretrain", "--out", str(out), *sets]


def _wait_for_checkpoint(proc, out: Path, step: int, timeout: float = 120.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        ck = sorted((out / "checkpoints").glob("step_*.pt")) if (out / "checkpoints").exists() else []
        if ck and int(ck[-1].stem.split("_")[1]) >= step:
            return
        assert proc.poll() is None, "training ended before it could be interrupted"
        time.sleep(0.05)
    raise TimeoutError("no checkpoint appeared")


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    ref = subprocess.run(_cli(tmp_path / "ref"), env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen(_cli(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(proc, tmp_path / "killed", 8)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = subprocess.run(_cli(tmp_path / "killed") + ["--resume"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert losses(tmp_path / "killed") == losses(tmp_path / "ref")


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits(tmp_path):
    out = tmp_path / "t"
    proc = subprocess.Popen(_cli(out, "run.checkpoint_every=1000"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 3:
        assert proc.poll() is None and time.time() - t0 < 120
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err
    assert "--resume" in err
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == len((out / "metrics.jsonl").read_text().splitlines()) >= 3


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_resumes_and_keeps_the_sampler_fp32(tmp_path, monkeypatch, precision):
    import cmacc.sampling as sampling
    real, dtypes = sampling.select, set()

    def spy(pool_keys, queries, *a, **kw):
        dtypes.update({pool_keys.dtype, queries.dtype})
        return real(pool_keys, queries, *a, **kw)
    monkeypatch.setattr(sampling, "select", spy)
    cfg = tiny("probe.enabled=false", f"run.precision={precision}")
    pretrain(cfg, tmp_path / "a")
    assert dtypes == {torch.float32}  # the sampler's inputs stay fp32 under autocast
    _, loss_a = losses(tmp_path / "a")
    pretrain(tiny("probe.enabled=false", "steps=1"), tmp_path / "fp32")
    assert loss_a[0] == pytest.approx(losses(tmp_path / "fp32")[1][0], rel=2e-2)  # step 1: rounding only
    state = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    assert ("scale" in state["scaler"]) == (precision == "fp16")  # the fp16 loss scale is checkpointed
    crash_then_resume(cfg, tmp_path / "b", 7)
    assert losses(tmp_path / "b") == losses(tmp_path / "a")


@pytest.mark.long
def test_bf16_default_run_probes_like_fp32(tmp_path):
    """The built-in default run (360 steps) in bf16 vs fp32: probes within 10 points (README)."""
    res = {}
    for p in ("fp32", "bf16"):
        res[p] = pretrain(load_config(overrides=[f"run.precision={p}", "run.progress=false"]), tmp_path / p)["probe"]
    for mod in ("video", "audio"):
        assert abs(res["bf16"][mod]["pretrained"] - res["fp32"][mod]["pretrained"]) <= 10.0, (mod, res)
        assert res["bf16"][mod]["pretrained"] > res["bf16"][mod]["random_init"] + 10.0, (mod, res)


@pytest.mark.long
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_run_learns_in_both_modalities(tmp_path, seed):
    """README's first command, at seeds 0, 1, 2: at least +10 points over random init in both
    modalities (at K = 512, seed 0's audio once gained only +7; README, "Dictionary consistency")."""
    res = pretrain(load_config(overrides=[f"seed={seed}", "run.progress=false"]), tmp_path)
    for mod in ("video", "audio"):
        p = res["probe"][mod]
        assert p["pretrained"] >= p["random_init"] + 10.0, (mod, res["probe"])


def late_age_gap(out: Path, last: int) -> float:
    """The larger modality's mean age_gap over the run's last ``last`` steps (metrics.jsonl)."""
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()][-last:]
    return max(sum(r[f"age_gap_{m}"] for r in recs) / len(recs) for m in ("v", "a"))


@pytest.mark.slow
def test_the_default_dictionary_stays_consistent_where_a_longer_queue_does_not(tmp_path):
    """The quick twin of the test above: the first 70 steps of the default run. With the default
    K = 4 M the queries cannot tell the dictionary's newest keys from its oldest (age gap below
    0.04 in cosine; 0.011 and 0.016 measured at seeds 0 and 1); with K = 16 M (the old default,
    512) they can, by the key encoders' drift alone (0.126 and 0.133), and that shortcut starved
    the content signal."""
    short = ["steps=70", "probe.enabled=false", "run.progress=false", "run.checkpoint_every=1000"]
    pretrain(load_config(overrides=short), tmp_path / "default")
    pretrain(load_config(overrides=short + ["K=512"]), tmp_path / "k512")
    default, long_queue = late_age_gap(tmp_path / "default", 20), late_age_gap(tmp_path / "k512", 20)
    assert default < 0.04, default
    assert long_queue > 0.06 and long_queue > 2.5 * default, (default, long_queue)


def test_picks_loaded_by_a_worker_during_sampling_give_the_same_run(tmp_path, monkeypatch):
    """data.num_workers=1: the picks of one modality load in a worker process while the main
    process samples the other (PickEncoder.prefetch); the keys, and so the run, are unchanged."""
    from cmacc.engine.feed import Feed
    used, real_one = [], Feed.one

    def one(self, requests, loading=None):
        used.append(loading is not None)
        return real_one(self, requests, loading)
    monkeypatch.setattr(Feed, "one", one)
    runs = {}
    for w in (0, 1):
        pretrain(tiny(f"data.num_workers={w}", "probe.enabled=false", "steps=5"), tmp_path / f"w{w}")
        runs[w] = [json.loads(ln) for ln in (tmp_path / f"w{w}" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(runs[0], runs[1], strict=True):
        assert a["picks_digest"] == b["picks_digest"] and a["loss"] == pytest.approx(b["loss"], rel=1e-6), a["step"]
        assert a["pruned_v"] is not None and 0.0 <= a["pruned_v"] <= 1.0
    assert used == [False] * 10 + [True] * 10  # 5 steps x 2 modalities: in this process, then from the worker
