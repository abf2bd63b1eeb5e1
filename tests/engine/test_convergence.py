"""All-reference vs fast-path sampling (Triton, numba) in a short training run: the same losses."""
import json

import pytest
from conftest import KERNEL_DEVICE
from runs import TINY

from cmacc.config import load_config
from cmacc.engine.train import pretrain


@pytest.mark.parametrize("fast", ["triton", "numba"])
@pytest.mark.parametrize("method", ["cmacc", "key_gradient_active"])  # rank-1 and plain rows
def test_training_with_fast_sampler_matches_torch(tmp_path, method, fast):
    if fast == "numba" and KERNEL_DEVICE != "cpu":
        pytest.skip("numba's sampler runs on CPU tensors")
    runs = {}
    for backend in ("torch", fast):
        cfg = load_config(overrides=TINY + [f"method={method}", f"sampler.backend={backend}", "probe.enabled=false",
                                            f"run.device={KERNEL_DEVICE}", "steps=6", "model.d=16"])
        pretrain(cfg, tmp_path / backend)
        runs[backend] = [json.loads(ln) for ln in (tmp_path / backend / "metrics.jsonl").read_text().splitlines()]
        assert json.loads((tmp_path / backend / "run.json").read_text())["sampler_backend"] == backend
    for a, b in zip(runs["torch"], runs[fast], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5), a["step"]
        assert a["neg_categories"] == b["neg_categories"], a["step"]  # same picks
