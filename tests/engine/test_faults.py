"""Faults and bad input in pretraining: a diverged step is never saved, every error is named
(exit 2, one line, no traceback), resumes tell the truth, failed starts leave nothing behind."""
import json
import math
from pathlib import Path

import pytest
import torch

import cmacc.methods.moco.model as moco
import cmacc.methods.shared as shared
import cmacc.engine.train as train
from cmacc.system import checkpoint
from cmacc.cli import main
from cmacc.system.cores import plan
from cmacc.engine.health import CollapseWatch, all_finite
from cmacc.engine.train import Diverged, pretrain
from runs import TINY, tiny


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "nothing on stderr"
    assert not any("Traceback" in ln for ln in err), "\n".join(err)
    return err[-1]


def _cli(out: Path, *sets: str, resume: bool = False) -> list[str]:
    args = ["pretrain", "--out", str(out)] + (["--resume"] if resume else [])
    for s in [*TINY, "probe.enabled=false", *sets]:
        args += ["--set", s]
    return args


def _finite_checkpoint(path: Path) -> int:
    state = checkpoint.load(path)
    assert all(bool(torch.isfinite(t).all()) for t in state["model"].values() if t.is_floating_point())
    return int(state["step"])


# ---- 1. a diverged step is never checkpointed, and the message says how to recover ----
def _poison_adam_at(monkeypatch, step: int):
    real = torch.optim.Adam.step
    calls = {"n": 0}

    def step_then_poison(self, *a, **kw):
        out = real(self, *a, **kw)
        calls["n"] += 1
        if calls["n"] == step:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out
    monkeypatch.setattr(torch.optim.Adam, "step", step_then_poison)


def test_non_finite_update_is_not_saved_and_resume_may_lower_lr(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r"
    _poison_adam_at(monkeypatch, 3)  # the loss of step 3 is finite; its update is not
    assert main(_cli(out, "method=xmoco", "run.checkpoint_every=1")) == 1
    msg = _err(capsys)
    assert msg.startswith("error: step 3: the update made") and "non-finite" in msg
    assert f"last good checkpoint is {out / 'checkpoints' / 'last.pt'} (step 2)" in msg
    assert "--resume --set lr=" in msg
    assert _finite_checkpoint(out / "checkpoints" / "last.pt") == 2
    monkeypatch.undo()
    assert main(_cli(out, "method=xmoco", "run.checkpoint_every=1", "lr=5e-4", resume=True)) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["resumes"][-1]["step"] == 2 and run["resumes"][-1]["changed"] == {"lr": [2e-3, 5e-4]}
    assert "lr: 0.0005" in (out / "config.yaml").read_text()
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


def test_divergence_at_the_first_step_names_the_start_checkpoint(tmp_path, monkeypatch):
    real = moco.infonce

    def poisoned(q, k, D, tau):
        loss, acc = real(q, k, D, tau)
        return loss * float("nan"), acc
    monkeypatch.setattr(moco, "infonce", poisoned)
    with pytest.raises(Diverged, match=r"step 1: non-finite loss on rank\(s\) \[0\]") as e:
        pretrain(tiny("probe.enabled=false"), tmp_path / "r")
    assert "last.pt (step 0)" in str(e.value)  # written at the start: it exists
    assert _finite_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt") == 0


def test_nan_reaching_the_sampler_is_a_named_divergence(tmp_path, monkeypatch):
    real = shared.QueryEncoders.forward
    calls = {"n": 0}

    def nan_queries(self, video, audio):
        calls["n"] += 1
        q_v, q_a = real(self, video, audio)
        return (q_v * float("nan"), q_a) if calls["n"] == 2 else (q_v, q_a)
    monkeypatch.setattr(shared.QueryEncoders, "forward", nan_queries)
    with pytest.raises(Diverged, match="step 2: the sampler's inputs .* hold NaN or Inf"):
        pretrain(tiny("probe.enabled=false", "run.checkpoint_every=1"), tmp_path / "r")
    assert _finite_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt") == 1


def test_all_finite_catches_nan_inf_and_overflow():
    ts = [torch.ones(3), torch.zeros(2, 2)]
    assert all_finite(ts) and all_finite([])
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert not all_finite([*ts, torch.tensor([1.0, bad])])
    assert not all_finite([torch.full((4,), 3e38)])  # its norm overflows: the model is broken anyway


# ---- collapse: loud, in the log, metrics and summary, but not an error ----
def test_collapse_watch():
    chance = math.log(17)
    w = CollapseWatch(lambda: chance, warmup=2, window=3)
    assert w.update(1, (chance, chance), (0.0, 0.0)) is None and w.run == 0  # warm-up is not watched
    assert w.update(3, (1.0, 1.2), (0.0, 0.5)) is None and w.run == 1  # zero spread
    assert w.update(4, (chance, chance + 1e-4), (0.9, 0.9)) is None and w.run == 2  # flat loss
    msg = w.update(5, (1.0, 1.0), (0.005, 0.3))
    assert "collapsed" in msg and "spread" in msg and w.collapsed
    assert w.update(6, (1.0, 1.0), (0.5, 0.5)) is None and not w.collapsed


def test_a_collapsed_model_is_flagged(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setattr(train, "CollapseWatch", lambda chance, warmup: CollapseWatch(chance, warmup, window=4))

    def constant(self, video, audio):  # every clip -> the same unit vector
        q_v, q_a = self.f_v(video), self.f_a(audio)
        e = torch.nn.functional.one_hot(torch.zeros(len(q_v), dtype=torch.long), q_v.shape[1]).float()
        return q_v * 0 + e, q_a * 0 + e
    monkeypatch.setattr(shared.QueryEncoders, "forward", constant)
    assert main(_cli(tmp_path / "r", "method=xmoco", "steps=8")) == 0
    out = capsys.readouterr()
    assert "warning: collapse: the embeddings were collapsed" in out.out
    assert "the embeddings have collapsed: for 4 steps up to step 6" in caplog.text
    recs = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["collapsed"] for r in recs] == [False] * 5 + [True] * 3  # warm-up 2, then a window of 4
    assert recs[-1]["spread_v"] < 1e-3
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["warnings"]


def test_healthy_run_has_spread_and_no_warning(tmp_path):
    s = pretrain(tiny("probe.enabled=false"), tmp_path / "r")
    assert s["warnings"] == []
    recs = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert min(r["spread_v"] for r in recs) > 0.05 and not any(r["collapsed"] for r in recs)  # floor: 0.01


# ---- config validation: named keys, exit 2, no folder ----
@pytest.mark.parametrize("setting,key", [
    ("lr=inf", "lr"), ("lr=1e6", "lr"), ("lr=nan", "lr"), ("tau=1e-40", "tau"), ("tau=inf", "tau"),
    ("sampler.temperature=inf", "sampler.temperature"), ("sampler.temperature=0", "sampler.temperature"),
    ("seed=-1", "seed"), ("seed=18446744073709551616", "seed"), ("run.device=cudax", "run.device"),
    ("m=nan", "m"), ("data.fps=inf", "data.fps"), ("run.dist_timeout=inf", "run.dist_timeout"),
    ("preset=paper", "run.device"),  # no GPU here: the paper preset refuses unless run.device=cpu
])
def test_bad_values_are_refused_by_name(tmp_path, capsys, setting, key):
    if setting == "preset=paper" and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert main(["pretrain", "--out", str(tmp_path / "r"), "--set", setting]) == 2
    assert _err(capsys).startswith(f"error: config key '{key}'")
    assert not (tmp_path / "r").exists()


def test_cpu_budget_caps_workers_and_threads():
    b = plan(threads=0, workers=8, cores=2)  # the paper preset's 8 workers on this machine
    assert (b.workers, b.threads) == (1, 1)
    assert (plan(0, 0, cores=2).threads, plan(0, 0, cores=16, local_world=8).threads) == (2, 2)
    assert plan(3, 0, cores=2).threads == 3  # explicit run.threads is kept (with a warning)
    assert plan(0, 2, cores=1).workers == 0


def test_run_json_records_the_cpu_budget(tmp_path):
    pretrain(tiny("probe.enabled=false", "steps=2", "run.threads=1"), tmp_path / "r")
    cpu = json.loads((tmp_path / "r" / "run.json").read_text())["cpu"]
    assert cpu["threads"] == 1 and cpu["threads_asked"] == 1 and cpu["workers"] == 0
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)


# ---- resume: truthful, or refused by name; nothing on disk lost ----
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "r"
    assert main(_cli(out, "method=xmoco", "run.keep_checkpoints=2")) == 0
    return out


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_resume_below_the_checkpoint_is_refused(finished, capsys):
    before = _snapshot(finished)
    assert main(_cli(finished, "method=xmoco", "run.keep_checkpoints=2", "steps=6", resume=True)) == 2
    assert _err(capsys).startswith("error: config key 'steps': 6 is below step 12")
    assert _snapshot(finished) == before


def test_resume_of_a_finished_run_changes_nothing(finished, capsys):
    before = _snapshot(finished)
    assert main(_cli(finished, "method=xmoco", "run.keep_checkpoints=2", resume=True)) == 0
    assert "finished earlier: nothing to do" in capsys.readouterr().out
    assert _snapshot(finished) == before


def test_resume_bad_config_file_is_named(finished, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    assert main(["pretrain", "--out", str(finished), "--resume", "--config", str(bad)]) == 2
    assert _err(capsys).startswith(f"error: config file {bad} is not valid YAML")
    assert main(["pretrain", "--out", str(finished), "--resume", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in _err(capsys)


def test_truncated_last_checkpoint_falls_back_to_step_file(finished, tmp_path, caplog):
    import shutil
    out = tmp_path / "r"
    shutil.copytree(finished, out)
    (out / "checkpoints" / "step_00000012.pt").unlink()  # the newest intact one is then step 8
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 13, "loss": 4.')  # and a line torn by a kill
    assert main(_cli(out, "method=xmoco", "run.keep_checkpoints=2", "steps=16", resume=True)) == 0
    err = caplog.text
    assert "last.pt cannot be read" in err and "resuming from" in err and "step_00000008.pt (step 8)" in err
    run = json.loads((out / "run.json").read_text())
    assert run["resumes"][-1]["step"] == 8 and "cannot be read" in run["resumes"][-1]["fallback_reason"]
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 17))
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 16 and s["final_loss"] == json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["loss"]
    assert json.loads((out / "summary_step_00000012.json").read_text())["steps"] == 12  # the earlier one kept
    assert "steps: 16" in (out / "config.yaml").read_text()


def test_no_intact_checkpoint_is_a_named_error(finished, tmp_path, capsys):
    import shutil
    out = tmp_path / "r"
    shutil.copytree(finished, out)
    for p in (out / "checkpoints").glob("*.pt"):
        p.write_bytes(p.read_bytes()[:100])
    before = _snapshot(out)
    assert main(_cli(out, "method=xmoco", "run.keep_checkpoints=2", "steps=16", resume=True)) == 2
    msg = _err(capsys)
    assert msg.startswith("error: --resume: checkpoint") and "no intact checkpoint is left" in msg
    assert _snapshot(out) == before


# ---- failed starts leave no folder ----
def test_failed_start_removes_its_folder(tmp_path, monkeypatch, capsys):
    from cmacc.errors import InputError

    def broken(*a, **kw):
        raise InputError("clip x.webm: broken on purpose")
    from cmacc.methods.moco.family import MocoFamily
    monkeypatch.setattr(MocoFamily, "start", broken)
    assert main(_cli(tmp_path / "r")) == 2
    assert _err(capsys) == "error: clip x.webm: broken on purpose"
    assert not (tmp_path / "r").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made is left in place
    assert main(_cli(tmp_path / "mine")) == 2
    assert (tmp_path / "mine").is_dir()


@pytest.mark.parametrize("args,msg", [
    (["--pool", "0"], "--pool must be >= 1, got 0"),
    (["--batch", "200", "--pool", "100"], "--rounds 200 (default: --batch) distinct picks cannot come from --pool 100"),
    (["--dim", "0"], "--dim must be >= 1"),
])
def test_bench_sampler_sizes_are_named(capsys, args, msg):
    assert main(["bench", "sampler", "--device", "cpu", *args]) == 2
    assert msg in _err(capsys)


def test_failed_start_keeps_only_its_scan_report(media, tmp_path, capsys):
    from cmacc.data.manifest import Manifest, Row
    manifest = tmp_path / "bad.csv"
    Manifest([Row(media["empty"]), Row(media["truncated"])]).write(manifest)
    out = tmp_path / "r"
    assert main(["pretrain", "--out", str(out), "--set", "data.name=manifest", "--set", f"data.manifest={manifest}",
                 "--set", "run.progress=false"]) == 2
    assert "no usable clips" in _err(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["scan.json"]  # the scan is worth keeping; nothing else
    assert len(json.loads((out / "scan.json").read_text())) == 2


def test_triton_is_an_extra_not_a_requirement():
    import tomllib
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("triton") for d in project["dependencies"])
    assert any(d.startswith("triton") for d in project["optional-dependencies"]["triton"])
    assert any(d.startswith("triton") for d in project["optional-dependencies"]["dev"])  # the kernel tests


def test_resume_on_a_changed_manifest_is_refused_by_name(media, tmp_path, capsys):
    """run.json and every checkpoint carry the data fingerprint; --resume on a manifest that lost a
    row stops with exit 2 and says what changed, unless run.allow_data_change=true (then recorded)."""
    import torch
    from cmacc.data.manifest import Manifest, Row
    manifest = tmp_path / "m.csv"
    Manifest([Row(media["vp9"], "a"), Row(media["h264"], "b"), Row(media["mjpeg"], "a")]).write(manifest)
    out = tmp_path / "r"
    base = ["--set", "data.name=manifest", "--set", f"data.manifest={manifest}", "--set", "method=xmoco",
            "--set", "M=2", "--set", "K=2", "--set", "data.size=32", "--set", "data.frames=4", "--set", "warmup_steps=1",
            "--set", "run.progress=false", "--set", "probe.enabled=false", "--set", f"data.cache_dir={tmp_path / 'mel'}"]
    assert main(["pretrain", "--out", str(out), *base, "--set", "steps=2"]) == 0
    fp = json.loads((out / "run.json").read_text())["data_fingerprint"]
    assert fp["kind"] == "manifest" and fp["rows"] == 3 and fp["files_used"] == 3 and fp["classes"] == 2
    assert fp["sample_rate"] == 16000 and fp["clip_seconds"] == 0.4 and len(fp["digest"]) == 64
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["data_fingerprint"] == fp
    assert len((out / "data_rows.tsv").read_text().splitlines()) == 3
    capsys.readouterr()
    Manifest([Row(media["vp9"], "a"), Row(media["h264"], "b")]).write(manifest)
    assert main(["pretrain", "--out", str(out), "--resume", "--set", "steps=3"]) == 2
    err = _err(capsys)
    assert "the data changed since" in err and "3 -> 2 rows; 1 removed (e.g. " in err and "mjpeg" in err
    assert "run.allow_data_change=true" in err and "Traceback" not in err
    assert main(["pretrain", "--out", str(out), "--resume", "--set", "steps=3", "--set",
                 "run.allow_data_change=true"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert "1 removed" in run["resumes"][-1]["data_changed"] and run["data_fingerprint"]["rows"] == 2
