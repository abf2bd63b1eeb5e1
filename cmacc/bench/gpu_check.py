"""The device check: everything this project's GPU paths must show on a real CUDA GPU, in one
command, within a time budget, as one JSON and one log (``benchmarks/gpu_check.sh OUT`` runs it
from a source tree with nothing installed).

Phases, each in its own process (a crash, an OOM or a hang costs that phase, not the report),
each with a share of ``--budget`` seconds; the JSON is rewritten after every phase, so what was
measured survives a check killed at its limit:

  environment   the GPU (name, capability, memory, driver), torch / CUDA / Triton versions, the
                git revision; no CUDA device: the check fails here, loudly (exit 3)
  kernel_tests  the Triton kernels' tests on the GPU (tests/sampling/test_kmeanspp.py,
                test_pseudo_posterior.py: KERNEL_DEVICE is cuda there, not the interpreter) and
                the ahead-of-time compile test, with per-test outcomes (JUnit XML)
  sampler       ``cmacc bench sampler --device cuda`` at the paper's size (N=38,400, M=128,
                d=128, 128 rounds), fp32 and bf16 keys, materialised / factorised / triton,
                each against the traffic floor (its bytes at the measured copy bandwidth)
  train_bf16,   20 timed paper-size CM-ACC training steps on the built-in data
  train_fp32    (``cmacc.bench.steps``): step / data / compute / sampler / picks seconds,
                torch.cuda.max_memory_allocated, the pool refresh's encode rate

``--dry-run`` writes the JSON skeleton (every phase, its command and budget, nothing run) on any
machine. ``--plan tiny --device cpu`` runs the phases at CPU sizes: the CI smoke of this file.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict
from pathlib import Path

JSON_NAME, LOG_NAME = "gpu_check.json", "gpu_check.log"
PHASES = ("environment", "kernel_tests", "sampler", "train_bf16", "train_fp32")
KERNEL_TESTS = ("tests/sampling/test_kmeanspp.py", "tests/sampling/test_pseudo_posterior.py",
                "tests/sampling/test_kernels_compile.py")
# The most each phase may take (seconds), before the budget's remainder caps it further.
CAPS = {"environment": 60, "kernel_tests": 200, "sampler": 120, "train_bf16": 150, "train_fp32": 180}
EXIT_NO_CUDA, EXIT_FAILED = 3, 1
# What the GPU image may lack (the synthetic data's training path needs none of them).
OPTIONAL_MODULES = ("av", "librosa", "soundfile", "nvidia.dali", "numba", "sklearn", "matplotlib")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Check:
    """The report being built: JSON and log in ``out``, rewritten after every phase."""

    def __init__(self, out: Path, args: argparse.Namespace) -> None:
        self.out, self.args, self.t0 = out, args, time.monotonic()
        out.mkdir(parents=True, exist_ok=True)
        self.json_path, self.log_path = out / JSON_NAME, out / LOG_NAME
        self.log_path.write_text("")
        self.report = {"check": "cmacc gpu_check", "schema": 1, "started": _now(), "finished": None,
                       "dry_run": args.dry_run, "status": "running", "budget_s": args.budget,
                       "plan": {"name": args.plan, "device": args.device, "workers": args.workers,
                                "steps": asdict(_plan(args))},
                       "cmacc_path": str(Path(__file__).resolve().parents[1]),
                       "phases": {name: {"status": "pending"} for name in args.phases}, "problems": []}

    def remaining(self) -> float:
        return self.args.budget - (time.monotonic() - self.t0)

    def log(self, text: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log(text)

    def write(self) -> None:
        from ..system.checkpoint import write_atomic
        self.report["elapsed_s"] = round(time.monotonic() - self.t0, 2)
        write_atomic(self.json_path, json.dumps(self.report, indent=2, default=str))

    def phase(self, name: str, result: dict) -> None:
        self.report["phases"][name] = result
        if result.get("status") not in ("ok", "not run (dry run)"):
            self.report["problems"].append(f"{name}: {result.get('status')}: {result.get('error', '')}".rstrip(": "))
        self.write()


def _plan(args):
    from .steps import StepPlan
    workers = args.workers
    if args.plan == "tiny":
        return StepPlan.tiny(**({"workers": workers} if workers is not None else {}))
    return StepPlan(workers=workers if workers is not None else max(1, min(14, (os.cpu_count() or 4) - 2)))


# ---- running a child ----
def run_child(check: Check, name: str, cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run ``cmd`` with a timeout, its output appended to the log; returns status, rc, wall_s."""
    check.log(f"\n===== {name}: {' '.join(cmd)} (timeout {timeout:.0f} s) =====")
    t0 = time.monotonic()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        rc, stdout, stderr, status = res.returncode, res.stdout, res.stderr, "ok" if res.returncode == 0 else "failed"
    except subprocess.TimeoutExpired as e:
        rc, status = None, "timeout"
        stdout = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    check.log(stdout)
    check.log(stderr)
    out = {"status": status, "rc": rc, "wall_s": round(time.monotonic() - t0, 2), "command": cmd,
           "timeout_s": round(timeout, 1)}
    if status != "ok":
        tail = [ln for ln in (stderr or stdout).strip().splitlines() if ln.strip()]
        out["error"] = tail[-1][:500] if tail else f"exit {rc}"
    return out


def _child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# ---- the phases ----
def environment(check: Check) -> dict:
    import torch
    from ..system import provenance
    cuda = torch.cuda.is_available()
    dev = torch.device(check.args.device if check.args.device != "cuda" or cuda else "cpu")
    env = {"status": "ok", "cuda_available": cuda, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "python": sys.version.split()[0], "cpu_count": os.cpu_count(), "provenance": provenance.collect(dev)}
    env["modules"] = {m: _importable(m) for m in OPTIONAL_MODULES}
    if os.path.isdir("/dev/shm"):  # the data workers hand batches (~0.3 GB at the paper's size) through it
        env["dev_shm_free_gib"] = shutil.disk_usage("/dev/shm").free / 2 ** 30
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError as e:
        env["triton"] = f"not importable: {e}"
    if cuda:
        p = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": p.total_memory / 2 ** 30,
                      "multiprocessors": p.multi_processor_count, "count": torch.cuda.device_count()}
        smi = shutil.which("nvidia-smi")
        if smi:
            q = subprocess.run([smi, "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
            env["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    elif check.args.device.startswith("cuda"):
        env.update(status="failed", error=f"no CUDA device: torch.cuda.is_available() is False (torch "
                                          f"{torch.__version__}, built for CUDA {torch.version.cuda})")
    return env


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def kernel_tests(check: Check, timeout: float) -> dict:
    xml = check.out / "kernel_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *KERNEL_TESTS]
    res = run_child(check, "kernel_tests", cmd, timeout, _child_env())
    res.update(_junit(xml))
    if res["status"] == "failed" and res.get("failures"):
        res["error"] = f"{len(res['failures'])} test(s) failed: {res['failures'][0]['test']}"
    return res


def _junit(path: Path) -> dict:
    if not path.exists():
        return {"tests": None}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failures = []
    for case in root.iter("testcase"):
        for bad in list(case.findall("failure")) + list(case.findall("error")):
            failures.append({"test": f"{case.get('classname')}::{case.get('name')}",
                             "message": (bad.get("message") or "")[:300]})
    return {"tests": counts["tests"], "failed": counts["failures"] + counts["errors"], "skipped": counts["skipped"],
            "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failures": failures, "junit": path.name}


def sampler(check: Check, timeout: float) -> dict:
    from .sampler import traffic_bytes
    plan, dev = _plan(check.args), check.args.device
    impls = "materialised,factorised,triton" if dev.startswith("cuda") else "factorised,numba"
    rows_path = check.out / "sampler.jsonl"
    rows_path.unlink(missing_ok=True)
    res = {"status": "ok", "runs": []}
    for dtype in ("fp32", "bf16"):
        cmd = [sys.executable, "-m", "cmacc.cli", "bench", "sampler", "--device", dev, "--pool", str(plan.N),
               "--batch", str(plan.M), "--dim", "128", "--dtype", dtype, "--repeats", "5", "--impl", impls,
               "--json", str(rows_path)]
        run = run_child(check, f"sampler {dtype}", cmd, max(1.0, timeout / 2), _child_env())
        res["runs"].append(run)
        if run["status"] != "ok":
            res.update(status=run["status"], error=f"{dtype}: {run.get('error')}")
    rows = [json.loads(ln) for ln in rows_path.read_text().splitlines()] if rows_path.exists() else []
    res["rows"] = []
    for r in rows:
        keep = {k: r.get(k) for k in ("impl", "dtype", "N", "M", "d", "num", "time_s", "times_s", "noise_s",
                                      "gbps", "fraction_of_copy_bw", "device_copy_gbps", "skipped",
                                      "same_picks_as_factorised", "device_name")}
        if "time_s" in r and r["impl"] in ("materialised", "factorised", "triton", "numba"):
            floor = traffic_bytes(r["impl"], r["N"], r["M"], r["d"], r["num"]) / (r["device_copy_gbps"] * 1e9)
            keep.update(floor_s=floor, times_floor=r["time_s"] / floor)
        res["rows"].append(keep)
    res["jsonl"] = rows_path.name if rows_path.exists() else None
    return res


def train(check: Check, precision: str, timeout: float) -> dict:
    part = check.out / f".train_{precision}.json"
    cmd = [sys.executable, "-m", "cmacc.bench.gpu_check", "--steps-child", str(part), "--precision", precision,
           "--plan", check.args.plan, "--device", check.args.device, "--work", str(check.work)]
    if check.args.workers is not None:
        cmd += ["--workers", str(check.args.workers)]
    res = run_child(check, f"train {precision}", cmd, timeout, _child_env())
    if part.exists():
        res.update(json.loads(part.read_text()))
        part.unlink()
    return res


def _steps_child(args) -> int:
    """One timed-steps run (a child process of the check); writes its result to args.steps_child."""
    from ..system.checkpoint import write_atomic
    from .steps import timed_steps
    run_dir = Path(args.work) / f"run_{args.precision}"
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        result = timed_steps(_plan(args), run_dir, precision=args.precision, device=args.device)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints of a paper-size model: ~1 GB
    write_atomic(args.steps_child, json.dumps(result, default=str))
    return 0


# ---- the whole check ----
def dry_run_phase(check: Check, name: str) -> dict:
    cmds = {"kernel_tests": [sys.executable, "-m", "pytest", *KERNEL_TESTS],
            "sampler": [sys.executable, "-m", "cmacc.cli", "bench", "sampler", "--device", check.args.device,
                        "--pool", str(_plan(check.args).N)],
            "train_bf16": [sys.executable, "-m", "cmacc.bench.gpu_check", "--steps-child", "...", "--precision", "bf16"],
            "train_fp32": [sys.executable, "-m", "cmacc.bench.gpu_check", "--steps-child", "...", "--precision", "fp32"]}
    return {"status": "not run (dry run)", "cap_s": CAPS[name], **({"command": cmds[name]} if name in cmds else {})}


RUNNERS = {"kernel_tests": kernel_tests, "sampler": sampler,
           "train_bf16": lambda c, t: train(c, "bf16", t), "train_fp32": lambda c, t: train(c, "fp32", t)}


def run_check(args) -> int:
    out = Path(args.out).resolve()
    check = Check(out, args)
    check.work = Path(args.work or tempfile.mkdtemp(prefix="cmacc-gpu-check-"))
    check.say(f"cmacc gpu_check -> {out} (budget {args.budget:.0f} s, phases {', '.join(args.phases)}"
              f"{', DRY RUN' if args.dry_run else ''})")
    env = environment(check)
    check.report["environment"] = env
    check.phase("environment", {"status": env["status"], **({"error": env["error"]} if "error" in env else {})})
    if env["status"] != "ok" and not args.dry_run:
        check.report.update(status="failed", finished=_now())
        check.write()
        print(f"error: {env['error']}; the GPU check needs one CUDA GPU (use --dry-run for the JSON skeleton)",
              file=sys.stderr)
        return EXIT_NO_CUDA
    for name in args.phases:
        if name == "environment":
            continue
        if args.dry_run:
            check.phase(name, dry_run_phase(check, name))
            continue
        timeout = min(CAPS[name], check.remaining() - 5)
        if timeout < 20:
            check.phase(name, {"status": "skipped", "error": f"budget: {check.remaining():.0f} s left"})
            continue
        check.say(f"[{check.args.budget - check.remaining():6.0f} s] {name} (up to {timeout:.0f} s)")
        try:
            result = RUNNERS[name](check, timeout)
        except Exception as e:  # the report must still be written
            result = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        check.phase(name, result)
        check.say(summary_line(name, result))
    failed = [n for n, p in check.report["phases"].items() if p["status"] not in ("ok", "not run (dry run)")]
    check.report.update(status="dry run" if args.dry_run else ("ok" if not failed else "failed"), finished=_now())
    check.write()
    if not args.work:
        shutil.rmtree(check.work, ignore_errors=True)
    check.say(f"wrote {check.json_path} and {check.log_path}: {check.report['status']}"
              + (f" ({', '.join(failed)})" if failed else ""))
    return EXIT_FAILED if failed and not args.dry_run else 0


def summary_line(name: str, r: dict) -> str:
    head = f"  {name}: {r.get('status')}"
    if r.get("status") != "ok":
        return f"{head}: {r.get('error', '')}"
    if name == "kernel_tests":
        return f"{head}: {r.get('passed')} passed, {r.get('skipped')} skipped of {r.get('tests')} ({r['wall_s']:.0f} s)"
    if name == "sampler":
        parts = [f"{x['impl']} {x['dtype']} {1e3 * x['time_s']:.2f} ms ({x['times_floor']:.1f}x floor)"
                 for x in r["rows"] if x.get("time_s") is not None and "times_floor" in x]
        return f"{head}: " + "; ".join(parts)
    s = r["steps"]
    mem = f", peak {r['max_memory_allocated_gib']:.1f} GiB" if r.get("max_memory_allocated_gib") else ""
    return (f"{head}: {1e3 * s['time_step']['mean']:.0f} ms/step (data wait {1e3 * s['time_data']['mean']:.0f}, "
            f"compute {1e3 * s['time_compute']['mean']:.0f}, sampler {1e3 * s['time_sampler']['mean']:.1f}, picks "
            f"{1e3 * s['time_picks']['mean']:.0f}){mem}; refresh ~{r['refresh']['estimated_refresh_s']:.0f} s "
            f"per epoch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cmacc.bench.gpu_check",
                                description="the device check: kernel tests on CUDA, the sampler at the paper's "
                                            "size, timed paper-size training steps; one JSON + log")
    p.add_argument("--out", help="folder for gpu_check.json, gpu_check.log, kernel_tests.xml, sampler.jsonl")
    p.add_argument("--dry-run", action="store_true", help="write the JSON skeleton; run nothing (any machine)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for the whole check (default 450)")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma list of {', '.join(PHASES)}")
    p.add_argument("--plan", choices=("paper", "tiny"), default="paper",
                   help="paper: M=128 K=3840 N=38400, 3-D ResNet-18 at 16x224^2, 1-D ResNet-18 on 80x64 mel (default); tiny: CPU sizes (CI)")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only with --plan tiny")
    p.add_argument("--workers", type=int, default=None, help="data workers (default: cores - 2, at most 14)")
    p.add_argument("--work", help="scratch folder for the training runs (default: a temporary one, removed)")
    p.add_argument("--steps-child", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps_child:
        return args
    if not args.out:
        p.error("--out DIR is required")
    args.phases = [s for s in args.phases.split(",") if s]
    bad = [s for s in args.phases if s not in PHASES]
    if bad:
        p.error(f"--phases {','.join(bad)}: choose from {','.join(PHASES)}")
    if "environment" not in args.phases:
        args.phases.insert(0, "environment")
    if not args.device.startswith("cuda") and args.plan != "tiny":
        p.error(f"--device {args.device}: the check is for a CUDA GPU; only --plan tiny runs on the CPU")
    if args.budget <= 0:
        p.error(f"--budget must be > 0, got {args.budget:g}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.steps_child:
        return _steps_child(args)
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
