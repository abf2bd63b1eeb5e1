"""The kernels compiled for real GPUs (sm_80, sm_90, and sm_100 where this Triton knows it) at the
sizes and dtypes the host wrappers choose, without a GPU: every variant must compile, use no
local memory (no spills, no stack frame) and fit the target's shared memory. The resource table
is printed at the end of the run."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, SUMMARY_TABLES

pytest.importorskip("triton")

REQUIRED = (80, 90)


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _run(*args, timeout=900):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    probe = _run("-c", "from cmacc.kernels import aot; print(','.join(map(str, aot.known_archs())))")
    assert probe.returncode == 0, probe.stderr[-3000:]
    known = [int(a) for a in probe.stdout.split(",")]
    archs = [*REQUIRED, *([100] if 100 in known else [])]
    out = tmp_path_factory.mktemp("aot") / "kernels.json"
    res = _run("-m", "cmacc.cli", "bench", "kernels", "--compile", "--arch", ",".join(map(str, archs)),
               "--json", str(out))
    table = "\n".join(line for line in res.stdout.splitlines() if line and not line.startswith("wrote"))
    SUMMARY_TABLES.append((f"Triton kernels compiled for sm_{', sm_'.join(map(str, archs))}", table))
    assert out.exists(), res.stdout[-3000:] + res.stderr[-3000:]
    return res, json.loads(out.read_text()), archs


def test_every_variant_compiles_without_spills_within_shared_memory(compiled):
    res, data, archs = compiled
    bad = [f"sm_{r['arch']} {r['variant']} [{r['workload']}]: {'; '.join(r['problems'])}"
           for r in data["rows"] if r["problems"]]
    assert not bad, "\n".join(bad)
    assert res.returncode == 0, res.stderr[-3000:]


def test_every_kernel_and_its_wrapper_variants_were_compiled(compiled):
    _, data, archs = compiled
    rows = data["rows"]
    for arch in archs:
        mine = [r for r in rows if r["arch"] == arch]
        pp = [r for r in mine if r["kernel"] == "_pseudo_posterior_kernel"]
        seed = [r for r in mine if r["kernel"] == "_seed_round_kernel"]
        # fp32/bf16/fp16 keys, and every (RANK1, PRUNE, FIRST) the wrappers launch
        assert {t for r in pp for t in ("fp32", "bf16", "fp16") if f"*{t},*{t}" in r["variant"]} == {"fp32", "bf16", "fp16"}
        combos = {tuple(f"{k}={v}" in r["variant"] for k in ("RANK1", "PRUNE") for v in ("True",))
                  + (r["variant"].split("FIRST=")[1][0],) for r in seed}
        assert combos >= {(r1, pr, f) for r1 in (True, False) for pr in (True,) for f in "012"} | \
            {(False, False, f) for f in "012"}
        paper = [r for r in pp if r["workload"].startswith("paper")]
        assert paper and all("BLOCK_M=128" in r["variant"] for r in paper)
    assert data["versions"]["triton"] and "provenance" in data


def test_the_meta_parameters_come_from_the_wrappers():
    """The recorded launches are what the wrappers pass (here checked against launch_config)."""
    from cmacc.kernels.pseudo_posterior import MAX_M, launch_config
    assert launch_config(128, 128) == dict(BLOCK_N=32, BLOCK_M=128, BLOCK_D=16, num_warps=8, num_stages=1)
    assert launch_config(3, 5)["BLOCK_M"] == 16 and launch_config(512, 128)["num_warps"] == 4
    with pytest.raises(ValueError, match="at most 512 queries"):
        launch_config(MAX_M + 1, 128)


def test_occupancy_and_limits_by_hand():
    from cmacc.kernels import aot
    # 128 registers x 32 lanes = 4096 per warp: 16 warps = 2 blocks of 8 warps on sm_90
    occ = aot.occupancy(90, 128, 16384, 8)
    assert occ == {"blocks_per_sm": 2, "occupancy": 0.25, "limited_by": "registers"}
    # 98,816 B + 1 KB reserved: one block per SM on sm_86 (100 KB), two on sm_90 (228 KB)
    assert aot.occupancy(86, 32, 98816, 8)["blocks_per_sm"] == 1
    assert aot.occupancy(90, 32, 98816, 8)["blocks_per_sm"] == 2
    ok = dict(spill_stores=0, spill_loads=0, shared=1000, static_shared=0, stack=0, local=0)
    assert aot.problems(90, ok) == []
    assert aot.problems(90, dict(ok, spill_stores=8, spill_loads=8, stack=8))[0].startswith("spills 8 B")
    assert "shared memory" in aot.problems(86, dict(ok, shared=101376 + 1))[0]
    assert aot.problems(90, dict(ok, shared=101377)) == []


def test_a_kernel_the_interpreter_runs_fails_to_compile():
    """The check catches what the interpreter tests cannot: the broken kernel runs here under
    the interpreter (this process) and fails ahead-of-time compilation for sm_90."""
    from broken_kernel import round_index_kernel
    if os.environ.get("TRITON_INTERPRET") == "1":
        out = torch.full((16,), -7, dtype=torch.int32)
        round_index_kernel[(1,)](out, 1, BLOCK=16)
        assert (out == 0).all()
    script = (
        "import sys, torch; sys.path.insert(0, 'tests/sampling')\n"
        "from broken_kernel import round_index_kernel as k\n"
        "from cmacc.kernels import aot\n"
        "launch = aot.Launch(k, (1,), (torch.zeros(16, dtype=torch.int32), 1), {'BLOCK': 16})\n"
        "try:\n    aot.compile_launch(launch, 90)\nexcept Exception as e:\n    print('FAILED', type(e).__name__)\n"
        "else:\n    print('COMPILED')\n"
        "launch = aot.Launch(k, (1,), (torch.zeros(16, dtype=torch.int32), 2), {'BLOCK': 16})\n"
        "aot.compile_launch(launch, 90); print('t=2 COMPILED')\n")
    res = _run("-c", script, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "FAILED CompilationError" in res.stdout and "t=2 COMPILED" in res.stdout, res.stdout
