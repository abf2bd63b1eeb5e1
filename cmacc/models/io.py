"""Encoder files: the query encoders f_v, f_a as plain state dicts plus their architecture.

    from cmacc.models import load_encoders
    f_v, f_a = load_encoders("encoders.pt")      # eval mode, on the CPU

An export holds no optimizer, queues, pool or key encoders: ``{"format": "cmacc-encoders",
"version": 1, "arch": {...}, "f_v": state_dict, "f_a": state_dict, "source": {...}}``, written
atomically by ``cmacc export RUN_DIR --out FILE``. ``arch`` is everything build_encoder needs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import InputError

FORMAT, VERSION = "cmacc-encoders", 1
ARCH_KEYS = ("video", "audio", "d", "head", "with_fc", "mel_bands")


class EncoderFileError(InputError, ValueError):
    """An encoder file is missing, unreadable, not an export, or does not fit its architecture."""


def arch_of(model_cfg: dict[str, Any], *, with_fc: bool, mel_bands: int) -> dict[str, Any]:
    """The architecture record of an export from a run's ``model`` config section."""
    return {"video": model_cfg["video"], "audio": model_cfg["audio"], "d": int(model_cfg["d"]),
            "head": model_cfg.get("head", "linear"), "with_fc": bool(with_fc), "mel_bands": int(mel_bands)}


def build_from_arch(arch: dict[str, Any]):
    """(f_v, f_a) with random weights for ``arch`` (one BatchNorm group: evaluation)."""
    from . import build_encoder
    kw = dict(d=arch["d"], with_fc=arch["with_fc"], head=arch["head"], bn_splits=1)
    return (build_encoder("video", arch["video"], **kw),
            build_encoder("audio", arch["audio"], mel_bands=arch["mel_bands"], **kw))


def save_encoders(path: str | Path, f_v, f_a, arch: dict[str, Any], source: dict[str, Any]) -> None:
    import io

    from ..system.checkpoint import write_atomic
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, "arch": arch, "source": source,
                "f_v": {k: v.detach().cpu() for k, v in f_v.state_dict().items()},
                "f_a": {k: v.detach().cpu() for k, v in f_a.state_dict().items()}}, buf)
    write_atomic(path, buf.getvalue())


def read_export(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise EncoderFileError(f"encoder file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EncoderFileError(f"encoder file {path} cannot be read ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise EncoderFileError(f"{path} is not a cmacc encoder export "
                               f"(make one with `cmacc export RUN_DIR --out FILE`)")
    if state.get("version") != VERSION:
        raise EncoderFileError(f"{path}: encoder export version {state.get('version')!r}, this cmacc reads {VERSION}")
    missing = [k for k in ARCH_KEYS if k not in state.get("arch", {})]
    if missing:
        raise EncoderFileError(f"{path}: the export's arch lacks {missing}")
    return state


def load_into(f, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Load weights, naming the file/run and the first mismatching tensors on failure."""
    try:
        f.load_state_dict(state_dict)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]
        raise EncoderFileError(f"{what}: weights do not fit the architecture ({first})") from None


def load_export(path: str | Path):
    """(f_v, f_a, the export's record without the weights), on the CPU, in training mode."""
    state = read_export(path)
    f_v, f_a = build_from_arch(state["arch"])
    load_into(f_v, state.pop("f_v"), f"{path} (video encoder {state['arch']['video']})")
    load_into(f_a, state.pop("f_a"), f"{path} (audio encoder {state['arch']['audio']})")
    return f_v, f_a, state


def load_encoders(path: str | Path, device: str | torch.device = "cpu"):
    """(f_v, f_a): the exported query encoders, in eval mode, on ``device``."""
    f_v, f_a, _ = load_export(path)
    return f_v.to(device).eval(), f_a.to(device).eval()
