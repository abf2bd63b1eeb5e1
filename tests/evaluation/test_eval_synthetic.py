"""cmacc eval synthetic: the built-in data's probe splits through the same code as the summary probe."""
import json

import pytest
from runs import TINY

from cmacc.cli import main
from cmacc.config import load_config
from cmacc.engine.train import pretrain


def test_eval_synthetic_reproduces_the_summary_probe(tmp_path):
    """The run's config defines the data (seed, classes, sizes): eval starts from it, and its layer4
    row is the summary probe's number for both the pretrained and the random-init encoders."""
    summary = pretrain(load_config(overrides=TINY + ["steps=3", "seed=5"]), tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "enc.pt")]) == 0
    for how, args, key in (("run", ["--run", str(tmp_path / "run")], "pretrained"),
                           ("export", ["--encoders", str(tmp_path / "enc.pt")], "pretrained")):
        assert main(["eval", "synthetic", *args, "--out", str(tmp_path / how)]) == 0
        for mod in ("video", "audio"):
            res = json.loads((tmp_path / how / f"synthetic_{mod}.json").read_text())
            assert res["config"]["seed"] == 5 and res["config"]["data"]["train_size"] == 96
            assert 100 * res["stages"]["layer4"]["mean"] == pytest.approx(summary["probe"][mod][key], abs=1e-9)
            assert set(res["stages"]) == {"conv1", "layer1", "layer2", "layer3", "layer4", "embedding"}
    sets = [a for kv in TINY + ["seed=5"] for a in ("--set", kv)]
    assert main(["eval", "synthetic", "--random-init", "--out", str(tmp_path / "r"), *sets]) == 0
    res = json.loads((tmp_path / "r" / "synthetic_audio.json").read_text())
    assert 100 * res["stages"]["layer4"]["mean"] == pytest.approx(summary["probe"]["audio"]["random_init"], abs=1e-9)


def test_model_keys_only_choose_random_init_architectures(tmp_path, capsys):
    assert main(["eval", "synthetic", "--encoders", str(tmp_path / "x.pt"), "--set", "model.audio=r10"]) == 2
    assert "model.* chooses the --random-init architecture" in capsys.readouterr().err
    assert main(["eval", "esc50", "--random-init"]) == 2
    assert "needs --data ROOT" in capsys.readouterr().err
