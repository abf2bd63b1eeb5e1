"""The device check (benchmarks/gpu_check.sh, cmacc.bench.gpu_check) on a machine without a GPU:
its dry run writes the JSON skeleton, it fails loudly without CUDA, its arguments are checked,
its report survives failing and timed-out phases (GPU phases mocked), and its CPU-sized plan runs
the real phases end to end from a staged source tree with PyAV, librosa and soundfile blocked
(the GPU image has none of them)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

from cmacc.bench import gpu_check

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _script(*args, env_extra=None, timeout=600):
    env = {**os.environ, "PYTHON": sys.executable, **(env_extra or {})}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_dry_run_writes_the_skeleton(tmp_path):
    res = _script(tmp_path / "out", "--dry-run")
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["dry_run"] and report["status"] == "dry run" and report["finished"]
    assert list(report["phases"]) == list(gpu_check.PHASES)
    for name in gpu_check.PHASES[1:]:
        assert report["phases"][name]["status"] == "not run (dry run)"
        assert report["phases"][name]["cap_s"] == gpu_check.CAPS[name]
    plan = report["plan"]["steps"]
    assert (plan["M"], plan["K"], plan["N"], plan["video"], plan["size"], plan["steps"]) == \
        (128, 3840, 38400, "r18", 224, 20)
    # imported from the staged copy of this tree (PYTHONPATH), with the revision it was staged from
    assert "cmacc-gpu-check-src" in report["cmacc_path"]
    git = report["environment"]["provenance"]["git"]
    assert git["source"] == "CMACC_GIT_REVISION" and len(git["revision"]) == 40
    assert (tmp_path / "out" / "gpu_check.log").read_text().startswith("cmacc gpu_check")


def test_without_cuda_it_fails_loudly(tmp_path):
    res = _script(tmp_path / "out")
    assert res.returncode == gpu_check.EXIT_NO_CUDA
    assert "error: no CUDA device" in res.stderr and "Traceback" not in res.stderr
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["status"] == "failed" and report["phases"]["environment"]["status"] == "failed"
    assert report["phases"]["sampler"]["status"] == "pending"


@pytest.mark.parametrize("argv, message", [
    (["--phases", "sampler,bogus"], "--phases bogus"),
    (["--device", "cpu"], "only --plan tiny runs on the CPU"),
    (["--budget", "0"], "--budget must be > 0"),
    ([], "--out DIR is required"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.parse_args(argv + (["--out", "x"] if argv else []))
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_usage_without_out():
    res = _script("--dry-run")
    assert res.returncode == 2 and "usage: bash benchmarks/gpu_check.sh OUT" in res.stderr


def test_report_with_the_gpu_phases_mocked(tmp_path, monkeypatch):
    """Phases that pass, fail, time out and crash, and one the budget leaves out: every one is in the
    JSON with its status, the problems are listed, the exit code is 1, and the JSON is rewritten
    after each phase (the timed-out phase's predecessor is on disk before it runs)."""
    out = tmp_path / "out"
    seen = {}

    def fake_env(check):
        return {"status": "ok", "cuda_available": True, "gpu": {"name": "FAKE H200", "capability": "9.0"}}

    def kernels(check, timeout):
        return {"status": "ok", "tests": 100, "passed": 99, "skipped": 1, "failed": 0, "wall_s": 50.0}

    def sampler(check, timeout):
        seen["on_disk_before_sampler"] = json.loads(check.json_path.read_text())["phases"]["kernel_tests"]["status"]
        return {"status": "failed", "error": "bf16: exit 1", "rows": []}

    def train_bf16(check, timeout):
        check.t0 -= check.args.budget  # the budget is spent here
        return check and gpu_check.run_child(check, "sleep", [sys.executable, "-c", "import time; time.sleep(5)"], 0.5)

    monkeypatch.setattr(gpu_check, "environment", fake_env)
    monkeypatch.setitem(gpu_check.RUNNERS, "kernel_tests", kernels)
    monkeypatch.setitem(gpu_check.RUNNERS, "sampler", sampler)
    monkeypatch.setitem(gpu_check.RUNNERS, "train_bf16", train_bf16)
    monkeypatch.setitem(gpu_check.RUNNERS, "train_fp32", lambda c, t: pytest.fail("the budget was spent"))
    rc = gpu_check.main(["--out", str(out), "--budget", "400"])
    report = json.loads((out / "gpu_check.json").read_text())
    assert rc == gpu_check.EXIT_FAILED and report["status"] == "failed"
    assert seen["on_disk_before_sampler"] == "ok"
    phases = report["phases"]
    assert [phases[n]["status"] for n in gpu_check.PHASES] == ["ok", "ok", "failed", "timeout", "skipped"]
    assert phases["train_bf16"]["rc"] is None and phases["train_bf16"]["timeout_s"] == 0.5
    assert "budget" in phases["train_fp32"]["error"]
    assert [p.split(":")[:2] for p in report["problems"]] == \
        [["sampler", " failed"], ["train_bf16", " timeout"], ["train_fp32", " skipped"]]
    assert report["environment"]["gpu"]["name"] == "FAKE H200"
    log = (out / "gpu_check.log").read_text()
    assert "===== sleep:" in log and "kernel_tests: ok: 99 passed, 1 skipped of 100" in log


def test_a_crashing_phase_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "environment", lambda check: {"status": "ok"})

    def boom(check, timeout):
        raise RuntimeError("CUDA error: an illegal memory access")
    for name in gpu_check.RUNNERS:
        monkeypatch.setitem(gpu_check.RUNNERS, name, boom)
    assert gpu_check.main(["--out", str(tmp_path), "--phases", "sampler"]) == gpu_check.EXIT_FAILED
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["phases"]["sampler"] == {"status": "failed",
                                           "error": "RuntimeError: CUDA error: an illegal memory access"}


def test_junit_counts(tmp_path):
    xml = tmp_path / "k.xml"
    xml.write_text('<testsuites><testsuite tests="4" failures="1" errors="1" skipped="1">'
                   '<testcase classname="a" name="t1"/><testcase classname="a" name="t2"><failure message="boom"/>'
                   '</testcase><testcase classname="b" name="t3"><error message="oops"/></testcase>'
                   '<testcase classname="b" name="t4"><skipped/></testcase></testsuite></testsuites>')
    got = gpu_check._junit(xml)
    assert (got["tests"], got["passed"], got["failed"], got["skipped"]) == (4, 1, 2, 1)
    assert [f["test"] for f in got["failures"]] == ["a::t2", "b::t3"]
    assert gpu_check._junit(tmp_path / "missing.xml") == {"tests": None}


@pytest.mark.slow
def test_tiny_plan_runs_every_cpu_phase_without_pyav_or_librosa(tmp_path):
    """The real phases (sampler rows with their floors; timed steps through the engine's loop with
    the pool filled in place of its first refresh) at CPU sizes, from the staged tree, with the
    modules the GPU image lacks made unimportable."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\nfor m in ('av', 'librosa', 'soundfile', 'nvidia.dali'):\n    sys.modules[m] = None\n")
    res = _script(tmp_path / "out", "--plan", "tiny", "--device", "cpu", "--workers", "0",
                  "--phases", "sampler,train_bf16,train_fp32", env_extra={"PYTHONPATH": str(block)})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["status"] == "ok", report["problems"]
    modules = report["environment"]["modules"]
    assert not (modules["av"] or modules["librosa"] or modules["soundfile"]) and modules["numba"]
    rows = report["phases"]["sampler"]["rows"]
    assert {(r["impl"], r["dtype"]) for r in rows} == {(i, t) for i in ("factorised", "numba") for t in ("fp32", "bf16")}
    assert all(r["floor_s"] > 0 and r["times_floor"] == pytest.approx(r["time_s"] / r["floor_s"]) for r in rows)
    for precision in ("bf16", "fp32"):
        t = report["phases"][f"train_{precision}"]
        assert t["status"] == "ok" and t["precision"] == precision and t["method"] == "cmacc"
        assert len(t["per_step"]) == t["plan"]["steps"] == 2 and len(t["losses"]) == 1 + 2
        s = t["steps"]
        assert s["time_step"]["mean"] >= s["time_data"]["mean"] + s["time_compute"]["mean"] * 0.99
        assert 0 < s["time_sampler"]["mean"] < s["time_compute"]["mean"]
        assert t["refresh"]["clips"] == 16 and t["refresh"]["estimated_refresh_s"] > 0
        assert t["max_memory_allocated"] is None  # CPU: no CUDA allocator to ask
    assert not list((tmp_path / "out").glob(".train_*"))
