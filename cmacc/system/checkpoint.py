"""Atomic checkpoints: write to a temporary file in the same folder, fsync, rename."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError

FORMAT = 1


class CheckpointError(InputError, RuntimeError):
    """A checkpoint file is missing, truncated or not cmacc's; the message names it."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save(path: str | Path, state: dict[str, Any]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated or foreign file
        detail = " ".join(str(e).split()).split(". ")[0]  # e.g. "PytorchStreamReader failed reading zip archive: ..."
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {detail})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "step" not in state:
        raise CheckpointError(f"checkpoint {path} is not a cmacc checkpoint of format {FORMAT}")
    return state


def newest_intact(folder: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict, str | None]:
    """(path, state, why last.pt was passed over or None): last.pt, else the newest readable step_*.pt.

    Both are written atomically, so a broken file means outside damage (a full disk, a bad copy);
    the step-numbered copies beside last.pt are what a resume falls back on, and it says so."""
    folder = Path(folder)
    last = folder / "last.pt"
    steps = sorted(folder.glob("step_*.pt"), reverse=True)
    if not last.exists() and not steps:
        raise CheckpointError(f"--resume: no checkpoint at {last}")
    problems = [] if last.exists() else [f"checkpoint {last} does not exist"]
    for path in ([last] if last.exists() else []) + steps:
        try:
            return path, load(path, map_location), (problems[0] if problems else None)
        except CheckpointError as e:
            problems.append(str(e))
    raise CheckpointError(f"--resume: {'; '.join(problems)}; no intact checkpoint is left in {folder} "
                          f"(keep more with run.keep_checkpoints)")


def load_matching(model: torch.nn.Module, run_dir: str | Path, need: list[str], key: str) -> list[str]:
    """Start ``model`` from another run: every tensor of its newest intact checkpoint that the model
    has with the same shape. All of the encoders (f_v., f_a.) and the names in ``need`` must fit,
    else a ConfigError naming config ``key``. Returns the names taken."""
    from ..config import ConfigError
    try:
        _, state, _ = newest_intact(Path(run_dir) / "checkpoints")
    except CheckpointError as e:
        raise ConfigError(f"config key '{key}': {e}") from None
    own = model.state_dict()
    taken = {k: v for k, v in state["model"].items() if k in own and own[k].shape == v.shape}
    missing = [k for k in [k for k in own if k.startswith(("f_v.", "f_a."))] + need if k not in taken]
    if missing:
        raise ConfigError(f"config key '{key}': {run_dir} (method={state['config'].get('method')}) does not fit "
                          f"this run: {len(missing)} tensor(s) missing or of another shape, e.g. {missing[0]!r}"
                          + (" (avid_cma needs an AVID run on the same training clips)" if "bank_v" in missing else ""))
    model.load_state_dict(taken, strict=False)
    return sorted(taken)
