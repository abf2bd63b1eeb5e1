"""Tiny pretraining runs shared by the tests: a config that trains in seconds, and crash / resume."""
import json
from pathlib import Path

import pytest

from cmacc.config import load_config
from cmacc.engine.train import pretrain

TINY = ["data.num_classes=8", "data.train_size=96", "data.probe_train_size=16", "data.probe_test_size=16",
        "data.frames=4", "data.size=16", "data.audio_frames=8", "M=8", "K=16", "N=48", "steps=12",
        "warmup_steps=2", "run.checkpoint_every=4", "run.progress=false", "run.device=cpu"]


def tiny(*extra):
    return load_config(overrides=TINY + list(extra))


def losses(out: Path):
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in recs], [r["loss"] for r in recs]


class Crash(Exception):
    pass


def crash_then_resume(cfg, out: Path, at: int) -> None:
    """Run ``cfg`` into ``out``, killed after step ``at``'s metrics line, then resume it to the end."""
    def crash(step, rec):
        if step == at:
            raise Crash
    with pytest.raises(Crash):
        pretrain(cfg, out, on_step=crash)
    assert losses(out)[0] == list(range(1, at + 1))
    pretrain(cfg, out, resume=True)
