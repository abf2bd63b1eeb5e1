"""Loading a Config: YAML files, ``--set`` overrides, saved configs and what a resume may change."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .schema import PRESETS, Config, ConfigError, _apply, flatten, parse_set
from .validation import validate


def read_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML mapping of config keys, flattened; named errors for a missing or broken file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        detail = " ".join(str(e).split())
        raise ConfigError(f"{what} {path} is not valid YAML: {detail}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of keys, got {type(raw).__name__}")
    return flatten(raw, source=str(path))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: tuple[str, dict[str, Any]] | None = None) -> Config:
    """Build and validate a Config from an optional YAML file and ``key=value`` overrides.
    ``base``: (source, nested or flat config) applied first, e.g. a pretraining run's config."""
    layers: list[tuple[str, dict[str, Any]]] = []
    if base is not None:
        layers.append((base[0], flatten(base[1], source=base[0])))
    if path is not None:
        layers.append((str(path), read_yaml(path)))
    sets = dict(parse_set(s) for s in overrides)
    layers.append(("--set", sets))

    preset = "cpu"
    for source, layer in layers:
        if "preset" in layer:
            preset = layer.pop("preset")
            if preset not in PRESETS:
                raise ConfigError(f"config key 'preset' (from {source}) must be one of {sorted(PRESETS)}, got {preset!r}")
    cfg = Config(preset=preset)
    for key, value in PRESETS[preset].items():
        _apply(cfg, key, value, f"preset {preset}")
    for source, layer in layers:
        for key, value in layer.items():
            _apply(cfg, key, value, source)
    validate(cfg)
    return cfg


def config_from_dict(d: dict[str, Any], source: str = "saved config") -> Config:
    """Inverse of Config.to_dict (flat or nested); validates."""
    cfg = Config()
    for key, value in flatten(d, source=source).items():
        _apply(cfg, key, value, source)
    validate(cfg)
    return cfg


# What a resumed run may change: its length, and how it runs and is evaluated...
RESUMABLE = ("steps", "run.", "probe.", "eval.", "data.num_workers")
# ...and, to recover from a diverged step, the optimisation keys (with a warning, recorded in run.json).
RECOVERY = ("lr", "lr_schedule", "warmup_steps", "weight_decay", "tau")


def changed_keys(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (before, after)} for the leaves of two Config.to_dict()'s that differ."""
    b, a = flatten(before), flatten(after)
    return {k: (b.get(k), a[k]) for k in a if a[k] != b.get(k) and k != "preset"}


def resume_config(saved_path: str | Path, path: str | Path | None = None,
                  overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config saved in a run folder, with allowed changes from a file and ``--set``."""
    saved_path = Path(saved_path)
    if not saved_path.is_file():
        raise ConfigError(f"--resume: {saved_path} not found; is {saved_path.parent} a cmacc run folder?")
    saved = config_from_dict(read_yaml(saved_path, "saved config"), source=str(saved_path))
    changes: dict[str, Any] = {}
    if path is not None:
        changes.update(read_yaml(path))
    changes.update(dict(parse_set(s) for s in overrides))
    if "preset" in changes:  # the start's command line repeated (sbatch --requeue): resolve it as a start
        cfg = load_config(path, overrides)
    else:
        cfg = copy.deepcopy(saved)
        for key, value in changes.items():
            _apply(cfg, key, value, "--resume override")
    for key, (was, now) in changed_keys(saved.to_dict(), cfg.to_dict()).items():
        if not (key.startswith(RESUMABLE) or key in RECOVERY):
            raise ConfigError(f"config key '{key}' cannot change when resuming (saved {was!r}, asked {now!r}); "
                              f"only steps, run.*, probe.*, data.num_workers and {', '.join(RECOVERY)} may; "
                              f"start a new --out instead")
    validate(cfg)
    return cfg


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

