"""Distributed pretraining on CPU with Gloo: 2 processes, a file store or torchrun, a timeout,
exit codes asserted (see distributed.py)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cmacc.system import dist
from cmacc.config import ConfigError, load_config
from cmacc.engine.bn import bn_layout
from distributed import assert_ok, case, cli, free_port, rank_env, run, start, wait
from runs import TINY

# 2 ranks x M/2 against one process with the same global BN groups (model.bn_splits=2)
EQUIV = TINY + ["probe.enabled=false", "model.bn_splits=2", "lr=1e-3", "steps=6", "run.checkpoint_every=3"]


def metrics(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def params(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]


# ---- launch environments and world size 1 ----
def test_launch_from_torchrun_slurm_or_nothing():
    assert dist.detect_launch({}) == dist.Launch()
    tr = dist.detect_launch({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                             "MASTER_ADDR": "n1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x"})
    assert (tr.rank, tr.world, tr.local_rank, tr.local_world, tr.source, tr.master) == (3, 8, 1, 4, "torchrun", "n1:29500")
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "4(x2)",
           "SLURM_JOB_NODELIST": "gpu[07-08],cpu1", "SLURM_JOB_ID": "123456"}
    sl = dist.detect_launch(env)
    assert (sl.rank, sl.world, sl.local_rank, sl.local_world, sl.source) == (5, 8, 1, 4, "slurm")
    assert env["MASTER_ADDR"] == "gpu07" and env["MASTER_PORT"] == str(15000 + 123456 % 20000)
    assert env["RANK"] == "5" and env["WORLD_SIZE"] == "8" and env["LOCAL_RANK"] == "1"
    assert dist.first_host("node12") == "node12" and dist.first_host("a[1,3-4]") == "a1"
    with pytest.raises(dist.LaunchError, match="WORLD_SIZE"):
        dist.detect_launch({"RANK": "0"})
    with pytest.raises(dist.LaunchError, match="RANK='x'"):
        dist.detect_launch({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(dist.LaunchError, match="outside"):
        dist.detect_launch({"RANK": "2", "WORLD_SIZE": "2"})


def test_world_size_one_collectives_are_the_identity():
    c = dist.init("cpu", env={})
    assert (c.rank, c.world, c.backend, c.distributed) == (0, 1, None, False)
    x = torch.randn(6, 3)
    src = torch.randperm(6)
    assert c.gather(x) is x and torch.equal(c.shard(x), x) and torch.equal(c.permute(x, src), x[src])
    t = x.clone()
    c.broadcast_([t])
    c.average_([t])
    assert torch.equal(t, x)
    assert c.gather_values([1.0, 2.0]).tolist() == [[1.0, 2.0]]
    assert c.assert_same({"x": x}) == c.assert_same({"x": x.clone()})
    with pytest.raises(FileExistsError):
        c.agree(FileExistsError("taken"))


def test_world_size_rules_name_the_key():
    cfg = load_config(overrides=TINY)  # M=8, bn_splits=0: one BN group per rank
    assert bn_layout(cfg, 1, False) == (1, None) and bn_layout(cfg, 2, False) == (1, None)
    assert bn_layout(load_config(overrides=TINY + ["model.bn_splits=4"]), 2, False) == (2, None)
    with pytest.raises(ConfigError, match="config key 'M'.*3 equal shares"):
        bn_layout(cfg, 3, False)
    with pytest.raises(ConfigError, match="config key 'M'"):
        bn_layout(cfg, 8, False)  # one clip per rank cannot be batch-normalised
    with pytest.raises(ConfigError, match="config key 'model.bn_splits'.*multiple of 2"):
        bn_layout(load_config(overrides=TINY + ["model.bn_splits=1"]), 2, False)
    with pytest.raises(ConfigError, match="config key 'model.sync_bn'.*CUDA"):
        bn_layout(load_config(overrides=TINY + ["model.bn_splits=1", "model.sync_bn=true"]), 2, False)
    assert bn_layout(load_config(overrides=TINY + ["model.bn_splits=2", "model.sync_bn=true"]), 4, True) == \
        (1, [[0, 2], [1, 3]])
    paper = load_config(overrides=["preset=paper"])  # bn_splits=4: groups of 32
    assert bn_layout(paper, 4, True) == (1, None) and bn_layout(paper, 1, True) == (4, None)
    with pytest.raises(ConfigError, match="model.bn_splits"):
        bn_layout(paper, 8, True)  # README: use bn_splits=0 or sync_bn on 8 GPUs
    assert bn_layout(load_config(overrides=["preset=paper", "model.bn_splits=0"]), 8, True) == (1, None)
    assert bn_layout(load_config(overrides=["preset=paper", "model.sync_bn=true"]), 8, True)[1] == \
        [[0, 4], [1, 5], [2, 6], [3, 7]]


# ---- collectives and the shuffled keys, on two processes ----
def test_collectives_on_two_ranks(tmp_path):
    assert_ok(run(case("collectives"), 2, tmp_path, timeout=120))


@pytest.mark.parametrize("bn_splits", [2, 4])
def test_cross_rank_shuffle_reproduces_single_process_split_bn(tmp_path, bn_splits):
    assert_ok(run(case("shuffled_keys", str(bn_splits)), 2, tmp_path, timeout=120))


# ---- end to end through the CLI ----
@pytest.mark.slow
@pytest.mark.parametrize("method,how", [("cmacc", "env"), ("xmoco", "slurm"), ("avid_joint", "env")])
def test_two_ranks_reproduce_one_process(tmp_path, method, how):
    """2 ranks x M/2 == 1 process x M with model.bn_splits=2: losses within 1e-4 (relative), the
    same enqueued clips at every step, every parameter tensor within 1e-3 (relative norm) after
    6 steps; and every rank holds bitwise the same picks, queues, pool and encoders -- or, for
    AVID, the same memory banks and Z -- at every step (run.check_sync_every=1)."""
    sets = EQUIV + [f"method={method}", "avid.num_negatives=24"]
    one = subprocess.run(cli(tmp_path / "one", sets), capture_output=True, text=True, timeout=180)
    assert one.returncode == 0, one.stderr
    res = run(cli(tmp_path / "two", sets + ["run.check_sync_every=1"]), 2, tmp_path, how=how)
    assert_ok(res)
    a, b = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["step"] for r in b] == list(range(1, 7))
    for x, y in zip(a, b, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4), x["step"]
        assert y["picks_digest"] == x["picks_digest"], x["step"]  # the same clip ids enqueued
        assert len(y["state_digest"]) == 16 and y["time_comm"] > 0
    pa, pb = params(tmp_path / "one"), params(tmp_path / "two")
    assert pa.keys() == pb.keys()
    for k in pa:
        if pa[k].is_floating_point():
            # Adam moves an element whose gradient is ~0 by ~lr whatever its sign, so float noise
            # can flip single elements: compare each tensor as a whole (relative norm)
            err = float((pb[k].float() - pa[k].float()).norm() / (pa[k].float().norm() + 1e-6))
            assert err <= 1e-3, f"{k}: relative difference {err:.2e}"
        else:
            assert torch.equal(pb[k], pa[k]), k  # queue ids, pointer, pool ids, BN counters
    run_json = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run_json["distributed"]["world_size"] == 2
    assert run_json["distributed"]["launcher"] == ("slurm" if how == "slurm" else "env")


@pytest.mark.slow
def test_torchrun_writes_one_run_folder(tmp_path):
    out = tmp_path / "run"
    args = [a for kv in TINY + ["steps=6"] for a in ("--set", kv)]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "cmacc", "pretrain", "--out", str(out), *args],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["step"] for r in metrics(out)] == list(range(1, 7))  # one line per step, from rank 0 only
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["probe"]["video"]) == {"pretrained", "random_init"}
    assert summary["distributed"]["world_size"] == 2 and summary["time"]["comm_per_step"] > 0
    run_json = json.loads((out / "run.json").read_text())
    d = run_json["distributed"]
    assert (d["world_size"], d["backend"], d["launcher"], d["batch_per_rank"]) == (2, "gloo", "torchrun", 4)
    assert len(d["hosts"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl", "run.json",
                                                     "skipped.jsonl", "summary.json"]
    assert res.stdout.count("linear probe video") == 1  # the summary is printed once


def _wait_for_step(out: Path, step: int, procs, timeout: float = 120.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        ck = sorted((out / "checkpoints").glob("step_*.pt")) if (out / "checkpoints").exists() else []
        if ck and int(ck[-1].stem.split("_")[1]) >= step:
            return
        assert all(p.poll() is None for p in procs), "training ended before it could be interrupted"
        time.sleep(0.02)
    raise TimeoutError("no checkpoint appeared")


def _wait_for_lines(out: Path, n: int, procs, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < n:
        assert all(p.poll() is None for p in procs), "training ended before it could be interrupted"
        assert time.time() - t0 < timeout, "no metrics appeared"
        time.sleep(0.02)


def _signal_rank_one(out: Path, sets: list[str], after: int, sig, tmp_path: Path):
    """Start a long 2-rank run, send ``sig`` to rank 1 after ``after`` steps, wait (90 s at most)."""
    procs = start(cli(out, TINY + ["probe.enabled=false", "steps=400", *sets]), 2, tmp_path)
    _wait_for_lines(out, after, procs)
    procs[1].send_signal(sig)
    return wait(procs, timeout=90)


@pytest.mark.slow
def test_killed_run_resumes_on_two_or_one_ranks(tmp_path):
    """SIGKILL both ranks after a checkpoint; resume with 2 ranks (bit-identical losses) and with
    1 rank (model.bn_splits=2 keeps the BN groups: losses within 1e-3 relative over 6 steps)."""
    sets = TINY + ["probe.enabled=false", "model.bn_splits=2", "lr=1e-3", "steps=40", "run.checkpoint_every=4"]
    assert_ok(run(cli(tmp_path / "ref", sets), 2, tmp_path))
    ref = metrics(tmp_path / "ref")
    procs = start(cli(tmp_path / "killed", sets), 2, tmp_path)
    _wait_for_step(tmp_path / "killed", 8, procs)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    wait(procs)
    shutil.copytree(tmp_path / "killed", tmp_path / "one")
    assert_ok(run(cli(tmp_path / "killed", sets, resume=True), 2, tmp_path))
    assert [(r["step"], r["loss"]) for r in metrics(tmp_path / "killed")] == [(r["step"], r["loss"]) for r in ref]
    ck = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 8 <= ck < 34
    one = subprocess.run(cli(tmp_path / "one", sets + [f"steps={ck + 6}"], resume=True),
                         capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr
    got = metrics(tmp_path / "one")
    assert [r["step"] for r in got] == list(range(1, ck + 7))
    assert [r["loss"] for r in got[:ck]] == [r["loss"] for r in ref[:ck]]  # written by the 2-rank run
    for x, y in zip(ref[ck:ck + 6], got[ck:], strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-3), x["step"]


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_every_rank_at_one_step(tmp_path):
    out = tmp_path / "t"
    res = _signal_rank_one(out, ["run.checkpoint_every=1000"], 3, signal.SIGTERM, tmp_path)
    assert [r.returncode for r in res] == [143, 143], [r.stderr[-2000:] for r in res]
    assert "--resume" in res[0].stderr and "Traceback" not in res[0].stderr + res[1].stderr
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    n = len((out / "metrics.jsonl").read_text().splitlines())
    assert state["step"] == n >= 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt", f"step_{n:08d}.pt"]


@pytest.mark.slow
def test_a_dead_rank_ends_the_run_with_an_error_naming_it(tmp_path):
    res = _signal_rank_one(tmp_path / "d", ["run.dist_timeout=60"], 2, signal.SIGKILL, tmp_path)  # no hang
    assert res[1].returncode == -signal.SIGKILL
    assert res[0].returncode == 1, res[0].stderr[-2000:]
    err = res[0].stderr.strip().splitlines()[-1]
    assert err.startswith("error: rank 0:") and "failed during step" in err and "rank 1 is silent" in err, err


@pytest.mark.slow
def test_bad_config_on_two_ranks_exits_2_on_both(tmp_path):
    res = run(cli(tmp_path / "x", TINY + ["model.bn_splits=1"]), 2, tmp_path, timeout=120)
    for r in res:
        assert r.returncode == 2, r.stderr[-2000:]
        assert "config key 'model.bn_splits'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_rank_env_helper_matches_torchrun_names(tmp_path):
    env = rank_env(1, 2, tmp_path / "s")
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("1", "2", "1")
    assert 15000 <= free_port() < 35000


FAKE_SRUN = """#!{python}
# srun stand-in: SLURM_NTASKS copies of the command with SLURM_PROCID / SLURM_LOCALID, all killed
# when one fails (--kill-on-bad-exit); exits with the worst exit code.
import os, subprocess, sys, time
first = next(i for i, a in enumerate(sys.argv[1:], 1) if not a.startswith("--"))  # srun's options end
args = sys.argv[first:]
n = int(os.environ["SLURM_NTASKS"])
procs = [subprocess.Popen(args, env={{**os.environ, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)}})
         for r in range(n)]
while any(p.poll() is None for p in procs):
    if any(p.poll() not in (None, 0) for p in procs):
        for p in procs:
            p.kill()
    time.sleep(0.05)
sys.exit(max(abs(p.returncode) for p in procs))
"""


@pytest.mark.slow
def test_sbatch_script_launches_and_requeues(tmp_path):
    """docker/pretrain.sbatch with stand-ins for srun, scontrol and apptainer: 2 tasks form one
    run; the same submission again, inside the Apptainer image (IMAGE=...), resumes it."""
    from distributed import base_env
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text(FAKE_SRUN.format(python=sys.executable))
    (fake / "scontrol").write_text("#!/bin/sh\necho localhost\necho node2\n")
    (fake / "apptainer").write_text('#!/bin/sh\n[ "$1 $2 $3" = "exec --nv $IMAGE" ] || exit 9\n'
                                    'echo "$*" >> "$APPTAINER_LOG"\nshift 3\nexec "$@"\n')
    for f in fake.iterdir():
        f.chmod(0o755)
    env = {**base_env(), "PATH": f"{fake}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "localhost,node2", "MASTER_PORT": str(free_port()), "OUT": str(tmp_path / "run")}
    script = Path(__file__).resolve().parents[2] / "docker" / "pretrain.sbatch"
    sets = [a for kv in TINY + ["probe.enabled=false", "steps=4"] for a in ("--set", kv)]
    res = subprocess.run(["bash", str(script), *sets], env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "store localhost:" in res.stdout
    d = json.loads((tmp_path / "run" / "run.json").read_text())["distributed"]
    assert (d["world_size"], d["launcher"], d["master"].split(":")[0]) == (2, "slurm", "localhost")
    sets[sets.index("steps=4")] = "steps=6"
    env.update(IMAGE=str(tmp_path / "cmacc.sif"), APPTAINER_LOG=str(tmp_path / "apptainer.log"))
    res = subprocess.run(["bash", str(script), *sets], env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stderr and [r["step"] for r in metrics(tmp_path / "run")] == list(range(1, 7))
    calls = (tmp_path / "apptainer.log").read_text().splitlines()
    assert len(calls) == 2 and all(c.startswith(f"exec --nv {env['IMAGE']} cmacc pretrain --out ") for c in calls)


@pytest.mark.slow
def test_torchrun_two_nodes_rendezvous(tmp_path):
    """Two torchrun agents (--nnodes=2, one process each) meet at a c10d rendezvous: global ranks
    0 and 1, both LOCAL_RANK 0 -- the layout of a multi-node job, on one machine."""
    from distributed import base_env
    port = free_port()
    out = tmp_path / "run"
    args = [a for kv in TINY + ["probe.enabled=false", "steps=3"] for a in ("--set", kv)]
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={n}",
                               "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                               "--rdzv-id=cmacc-test", "-m", "cmacc", "pretrain", "--out", str(out), *args],
                              env=base_env(), stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"node{n}.err", "w"))
             for n in (0, 1)]
    res = wait(procs, timeout=240)
    assert [r.returncode for r in res] == [0, 0], [(tmp_path / f"node{n}.err").read_text()[-2000:] for n in (0, 1)]
    d = json.loads((out / "run.json").read_text())["distributed"]
    assert (d["world_size"], d["launcher"], d["batch_per_rank"]) == (2, "torchrun", 4)
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]


@pytest.mark.slow
def test_non_finite_loss_on_one_rank_stops_both(tmp_path):
    assert_ok(run(case("nan_on_rank_one", str(tmp_path / "r")), 2, tmp_path, timeout=120))
    state = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 3  # the NaN step was never applied nor saved


@pytest.mark.slow
def test_bench_dist_compares_one_and_two_ranks(tmp_path):
    out = tmp_path / "rows.jsonl"
    sets = [a for kv in [kv for kv in TINY if not kv.startswith(("steps=", "run.device"))] for a in ("--set", kv)]
    res = subprocess.run([sys.executable, "-m", "cmacc", "bench", "dist", "--world", "1,2", "--steps", "5", "--warmup", "1",
                          "--repeats", "1", "--json", str(out), *sets], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [(r["world"], r["steps_timed"]) for r in rows] == [(1, 4), (2, 4)]
    assert all(r["steps_per_s"] > 0 for r in rows) and rows[0]["time_comm"] == 0 < rows[1]["time_comm"]
    assert rows[1]["final_loss"] == pytest.approx(rows[0]["final_loss"], rel=1e-4)  # the same run, split in two
    assert rows[0]["picks_digest_last"] == rows[1]["picks_digest_last"] and rows[0]["git"]["revision"]


@pytest.mark.slow
def test_two_ranks_on_real_videos_share_rank_zeros_scan(media, tmp_path):
    """A manifest without a scan report: rank 0 scans (once) and hands the records to rank 1;
    each rank decodes its share; files left out are reported once."""
    from cmacc.data.manifest import Manifest, Row
    Manifest([Row(Path(p)) for p in media.values()]).write(tmp_path / "m.csv")
    sets = ["data.name=manifest", f"data.manifest={tmp_path / 'm.csv'}", "method=xmoco", "M=4", "K=4", "steps=3",
            "warmup_steps=1", "data.frames=8", "data.size=32", "run.progress=false", "run.device=cpu",
            f"data.cache_dir={tmp_path / 'mel'}"]
    res = run(cli(tmp_path / "run", sets), 2, tmp_path, timeout=240)
    assert_ok(res)
    assert res[1].stderr.count("scanning") == 0 and "scanning" in res[0].stderr
    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    left = {Path(e["path"]).name: e["reason"] for e in summary["data"]["left_out"]}
    assert left["noaudio.mp4"] == "no-audio" and left["empty.webm"] == "zero-length", left
    assert json.loads((out / "scan.json").read_text()) and summary["distributed"]["world_size"] == 2
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]
