"""What produced a result: git revision, library versions, device, command line.

``cmacc --version`` prints the same fields, and the Docker image's labels are checked against them
at build time (``cmacc --version --expect KEY=VALUE``), so a label, the CLI and run.json agree.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import torch

PACKAGES = ("torch", "numpy", "scikit-learn", "librosa", "av", "triton", "PyYAML")
DALI_WHEELS = ("nvidia-dali-cuda120", "nvidia-dali-cuda130", "nvidia-dali-cuda110")  # one per CUDA major
REVISION_ENV = "CMACC_GIT_REVISION"  # set by the Docker image (no .git inside); "<sha>" or "<sha>-dirty"


def git_revision(here: Path | None = None) -> dict[str, object]:
    """Revision of the source tree cmacc was imported from; outside a git checkout (an installed
    wheel, the Docker image) the revision the package was built from, if $CMACC_GIT_REVISION says."""
    here = here or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if rev.returncode == 0:
            status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10)
            return {"revision": rev.stdout.strip(), "dirty": bool(status.stdout.strip()), "source": "git"}
    except (OSError, subprocess.SubprocessError):
        pass
    built = os.environ.get(REVISION_ENV, "").strip()
    if built and built != "unknown":
        sha, dirty = built.removesuffix("-dirty"), built.endswith("-dirty")
        return {"revision": sha, "dirty": dirty, "source": REVISION_ENV}
    return {"revision": None, "dirty": None, "source": None}


def dali() -> tuple[str | None, str | None]:
    """(wheel name, version) of the installed DALI, e.g. ("nvidia-dali-cuda120", "2.4.0")."""
    for wheel in DALI_WHEELS:
        try:
            return wheel, importlib.metadata.version(wheel)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None, None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("cmacc", *PACKAGES):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["torch_cuda"] = torch.version.cuda
    out["dali_wheel"], out["dali"] = dali()
    return out


def report(git: dict[str, object], v: dict[str, str | None]) -> str:
    """``cmacc --version``: the fields run.json records under "git" and "versions"."""
    rev, where = git.get("revision"), "git revision unknown"
    if rev:
        source = f" from ${REVISION_ENV}" if git.get("source") == REVISION_ENV else ""
        where = f"git {rev}{' (dirty)' if git.get('dirty') else ''}{source}"
    lines = [f"cmacc {v.get('cmacc')} ({where})", f"python {v.get('python')}",
             f"torch {v.get('torch')} (CUDA {v.get('torch_cuda') or 'none'})", f"triton {v.get('triton')}",
             f"DALI {v.get('dali')} ({v.get('dali_wheel')})" if v.get("dali") else "DALI None"]
    rest = [k for k in PACKAGES if k not in ("torch", "triton")]
    lines.append(", ".join(f"{k} {v.get(k)}" for k in rest))
    return "\n".join(lines)


def expectation_mismatches(expect: dict[str, str]) -> list[str]:
    """What differs between ``expect`` (the Docker image's labels: revision, torch, cuda, dali,
    dali_wheel) and what this process records in run.json; [] when they agree."""
    v, git = versions(), git_revision()
    revision = git["revision"] + ("-dirty" if git["dirty"] else "") if git["revision"] else "unknown"
    seen = {"revision": revision, "torch": (v["torch"] or "").split("+")[0], "cuda": v["torch_cuda"],
            "dali": v["dali"], "dali_wheel": v["dali_wheel"]}
    bad = []
    for key, want in expect.items():
        if key not in seen:
            bad.append(f"unknown key {key!r} (one of {', '.join(seen)})")
        elif str(seen[key]) != want:
            bad.append(f"{key}: expected {want}, this environment has {seen[key]}")
    return bad


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu} ({torch.get_num_threads()} torch threads)"


def collect(device: torch.device | str = "cpu") -> dict[str, object]:
    device = torch.device(device)
    return {
        "git": git_revision(),
        "versions": versions(),
        "device": str(device),
        "device_name": device_name(device),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "argv": sys.argv,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
