"""Helpers to run code and the CLI on several local processes (Gloo), for test_distributed.py.

Every launch gets its own file store (no port collisions), a timeout after which every process
is killed and the test fails, and the exit code of every rank is returned for the test to
assert: a crashed child fails the test.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent


@dataclass
class Result:
    rank: int
    returncode: int
    stdout: str
    stderr: str


def base_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "TORCHELASTIC_")) and k not in
           ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONHASHSEED="0", PYTHONPATH=str(TESTS) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def rank_env(rank: int, world: int, store: Path, how: str = "env", port: int | None = None) -> dict:
    env = base_env()
    if how == "env":  # what torchrun sets, with a file store instead of a TCP rendezvous
        env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                   CMACC_INIT_METHOD=f"file://{store}")
    elif how == "slurm":  # what srun sets; MASTER_ADDR/PORT are derived from the node list and job id
        assert port is not None and 15000 <= port < 35000
        env.update(SLURM_PROCID=str(rank), SLURM_NTASKS=str(world), SLURM_LOCALID=str(rank),
                   SLURM_NTASKS_PER_NODE=str(world), SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID=str(port - 15000))
    else:
        raise ValueError(how)
    return env


def free_port(lo: int = 20000, hi: int = 34999) -> int:
    """A TCP port that is free now (in [lo, hi], so that a SLURM job id can map onto it)."""
    import random
    for _ in range(200):
        p = random.randint(lo, hi)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
            return p
    raise RuntimeError("no free port")


def start(cmd: list[str], world: int, tmp_path: Path, how: str = "env", ranks: list[int] | None = None,
          store: Path | None = None) -> list[subprocess.Popen]:
    store = store or tmp_path / f"store-{uuid.uuid4().hex}"
    port = free_port() if how == "slurm" else None
    procs = []
    for r in (ranks if ranks is not None else range(world)):
        tag = uuid.uuid4().hex[:8]  # files, not pipes: a full pipe would block a rank mid-collective
        p = subprocess.Popen(cmd, env=rank_env(r, world, store, how, port),
                             stdout=open(tmp_path / f"rank{r}-{tag}.out", "w"),
                             stderr=open(tmp_path / f"rank{r}-{tag}.err", "w"))
        p.logs = (tmp_path / f"rank{r}-{tag}.out", tmp_path / f"rank{r}-{tag}.err")
        procs.append(p)
    return procs


def wait(procs: list[subprocess.Popen], timeout: float = 180.0) -> list[Result]:
    """Wait for every process; kill them all and fail if the deadline passes."""
    deadline = time.time() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise AssertionError(f"ranks still running after {timeout:.0f} s (a hang)") from None
    logs = [getattr(p, "logs", None) for p in procs]
    return [Result(r, p.returncode, lg[0].read_text() if lg else "", lg[1].read_text() if lg else "")
            for r, (p, lg) in enumerate(zip(procs, logs))]


def run(cmd: list[str], world: int, tmp_path: Path, how: str = "env", timeout: float = 180.0) -> list[Result]:
    return wait(start(cmd, world, tmp_path, how), timeout)


def cli(out: Path, sets: list[str], resume: bool = False) -> list[str]:
    args = [a for kv in sets for a in ("--set", kv)]
    return [sys.executable, "-m", "cmacc", "pretrain", "--out", str(out), *args, *(["--resume"] if resume else [])]


def case(name: str, *args: str) -> list[str]:
    """Command running dist_cases.<name>(*args) in a fresh interpreter."""
    return [sys.executable, "-c", f"import sys, dist_cases; dist_cases.{name}(*sys.argv[1:])", *args]


def assert_ok(results: list[Result]) -> None:
    for r in results:
        assert r.returncode == 0, f"rank {r.rank} exited {r.returncode}:\n{r.stderr[-3000:]}"
