"""Which encoders an evaluation measures: an export, a run's last checkpoint, or random weights.

``cmacc export RUN_DIR --out FILE`` writes the query encoders of a run (cmacc.models.io); every
``cmacc eval`` takes ``--encoders FILE``, ``--run RUN_DIR`` or ``--random-init`` (the default
architectures, or those of ``--set model.video=... model.audio=...``: the baseline row of every
table).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..system import checkpoint
from ..config import Config, config_from_dict
from ..models.io import EncoderFileError, arch_of, build_from_arch, load_export, load_into, save_encoders


@dataclass
class Encoders:
    f_v: torch.nn.Module
    f_a: torch.nn.Module
    arch: dict[str, Any]
    name: str  # the export's path, "run:DIR (step N)" or "random-init"
    source: dict[str, Any]  # what the weights came from: run folder, step, method, config


def _run_state(run_dir: Path, which: Path | None = None) -> tuple[Config, dict, Path]:
    if which is None:
        path, state, _ = checkpoint.newest_intact(run_dir / "checkpoints")
    else:
        path, state = which, checkpoint.load(which)
    if "config" not in state or "model" not in state:
        raise EncoderFileError(f"{path} holds no model or config: not a cmacc pretraining checkpoint")
    return config_from_dict(state["config"], source=str(path)), state, path


def from_run(run_dir: str | Path, which: str | Path | None = None) -> Encoders:
    """The query encoders f_v, f_a of a run's newest intact checkpoint, or of checkpoint ``which``
    (e.g. checkpoints/step_00000500.pt: a point of a learning curve)."""
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoints").is_dir():
        raise EncoderFileError(f"{run_dir} is not a cmacc run folder (no checkpoints/ in it)")
    cfg, state, path = _run_state(run_dir, None if which is None else Path(which))
    arch = arch_of(dict(vars(cfg.model)), with_fc=cfg.fc != "none", mel_bands=cfg.data.mel_bands)
    f_v, f_a = build_from_arch(arch)
    for name, f in (("f_v", f_v), ("f_a", f_a)):
        sub = {k[len(name) + 1:]: v for k, v in state["model"].items() if k.startswith(name + ".")}
        load_into(f, sub, f"{path} ({name})")
    source = {"run": str(run_dir.resolve()), "checkpoint": str(path), "step": int(state["step"]),
              "method": cfg.method, "data": cfg.data.name, "audio": dict(vars(cfg.audio)),
              "git": state.get("git"), "config": cfg.to_dict(),
              "data_fingerprint": state.get("data_fingerprint")}
    return Encoders(f_v, f_a, arch, f"run:{run_dir} (step {state['step']})", source)


def from_export(path: str | Path) -> Encoders:
    f_v, f_a, state = load_export(path)
    return Encoders(f_v, f_a, state["arch"], str(path), state.get("source", {}))


def random_init(cfg: Config) -> Encoders:
    """Random weights of cfg.model's architectures at cfg.seed (what pretraining starts from)."""
    arch = arch_of(dict(vars(cfg.model)), with_fc=cfg.fc != "none", mel_bands=cfg.data.mel_bands)
    torch.manual_seed(cfg.seed)
    f_v, f_a = build_from_arch(arch)
    return Encoders(f_v, f_a, arch, "random-init", {"seed": cfg.seed, "data_fingerprint": None})


def resolve(cfg: Config, *, encoders: str | None, run: str | None, random: bool) -> Encoders:
    """Exactly one of --encoders, --run, --random-init (random-init when none is given)."""
    given = [x for x in (encoders, run) if x] + ([True] if random else [])
    if len(given) > 1:
        raise EncoderFileError("give one of --encoders FILE, --run RUN_DIR, --random-init")
    if encoders:
        return from_export(encoders)
    if run:
        return from_run(run)
    return random_init(cfg)


def export(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """``cmacc export``: the run's query encoders as an encoder file; returns its record."""
    enc = from_run(run_dir)
    save_encoders(out, enc.f_v, enc.f_a, enc.arch, enc.source)
    n = sum(p.numel() for f in (enc.f_v, enc.f_a) for p in f.parameters())
    return {"out": str(out), "arch": enc.arch, "parameters": n, **enc.source}
