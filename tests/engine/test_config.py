"""Config: presets, YAML, --set overrides, and errors that name the key."""
import pytest

from cmacc.config import ConfigError, dump_yaml, load_config, resume_config
from cmacc.methods import METHODS


def test_defaults_and_paper_preset():
    cfg = load_config()
    assert (cfg.method, cfg.M, cfg.K % cfg.M) == ("cmacc", 32, 0)
    paper = load_config(overrides=["preset=paper"])
    assert (paper.M, paper.K, paper.N, paper.m, paper.tau, paper.lr, paper.warmup_steps) == \
           (128, 3840, 38400, 0.999, 0.7, 1e-3, 500)
    assert paper.model.video == "r18" and paper.data.frames == 16 and paper.data.size == 224


def test_methods_map_to_the_papers_ablations():
    assert METHODS["cmacc"].negatives == "gradient" and METHODS["cmacc"].fc == "cross"
    assert METHODS["xmoco"].negatives == "queue" and METHODS["xmoco"].fc == "cross"
    assert METHODS["xmoco_nofcl"].fc == "none"
    assert METHODS["smoco"].objective == "self"
    assert METHODS["ohem"].negatives == "ohem" and METHODS["feature_active"].negatives == "feature"
    assert {m: METHODS[m].objective for m in METHODS if METHODS[m].family == "avid"} == {
        "avid_self": "self", "avid_cross": "cross", "avid_joint": "joint", "avid_cma": "cma"}  # AVID Eqs. 1-3, CMA
    for name in METHODS:
        if name != "avid_cma":  # needs init_from (tests/methods/test_avid.py)
            load_config(overrides=[f"method={name}"])


def test_yaml_file_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("method: xmoco\nK: 256\ndata:\n  num_classes: 8\nsampler: {first: norm}\n")
    cfg = load_config(f, ["K=128", "tau=0.5"])
    assert (cfg.method, cfg.K, cfg.tau, cfg.data.num_classes, cfg.sampler.first) == ("xmoco", 128, 0.5, 8, "norm")
    f.write_text("preset: paper\nsteps: 10\n")
    cfg = load_config(f)
    assert cfg.N == 38400 and cfg.steps == 10


@pytest.mark.parametrize("overrides,match", [
    (["K=100"], "'K'.*multiple of M"),
    (["N=16"], "'N'.*at least M"),
    (["N=160"], "'N'.*K \\+ 2M"),  # K + 2M = 192 at the defaults
    (["m=1.0"], "'m'.*\\[0, 1\\)"),
    (["tau=0"], "'tau'"),
    (["Kk=3"], "unknown config key 'Kk'.*did you mean 'K'"),
    (["data.nun_classes=3"], "unknown config key 'data.nun_classes'.*'data.num_classes'"),
    (["K=abc"], "'K'.*must be int, got str"),
    (["K=2.5"], "'K'.*must be int"),
    (["steps=true"], "'steps'.*must be int, got bool"),
    (["method=moco"], "'method'.*one of"),
    (["model.bn_splits=5"], "'model.bn_splits'"),
    (["data.audio_frames=30"], "'data.audio_frames'.*multiple"),
    (["data.train_size=1000"], "'N'.*exceeds the dataset"),
    (["method=smoco", "model.fc=cross"], "'model.fc'.*unimodal"),
    (["sampler.backend=cuda"], "'sampler.backend'"),
    (["run.device=tpu"], "'run.device'"),
    (["preset=huge"], "'preset'"),
    (["K"], "key=value"),
    (["data=3"], "unknown config key 'data'"),
])
def test_bad_config_names_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=overrides)


def test_bad_yaml_file_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("data: 3\n")
    with pytest.raises(ConfigError, match="'data'.*bad.yaml.*mapping"):
        load_config(f)
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="bad.yaml.*mapping"):
        load_config(f)
    f.write_text("K: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml.*not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    f.write_text("tua: 0.2\n")
    with pytest.raises(ConfigError, match="unknown config key 'tua' in .*bad.yaml.*'tau'"):
        load_config(f)


def test_int_given_as_float_is_accepted_for_float_and_whole_floats_for_int():
    cfg = load_config(overrides=["tau=1", "K=512.0"])
    assert cfg.tau == 1.0 and isinstance(cfg.tau, float) and cfg.K == 512


def test_resume_may_change_only_length_and_run_keys(tmp_path):
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_yaml(load_config(overrides=["steps=20"])))
    cfg = resume_config(saved, None, ["steps=40", "run.progress=false"])
    assert cfg.steps == 40 and cfg.run.progress is False
    with pytest.raises(ConfigError, match="'K' cannot change when resuming"):
        resume_config(saved, None, ["K=256"])


def test_resume_accepts_the_start_command_line_with_its_preset(tmp_path):
    """sbatch --requeue repeats the start's arguments: --set preset=paper must resume, not fail."""
    start = ["preset=paper", "steps=5000", "data.train_size=40000"]
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_yaml(load_config(overrides=start)))
    cfg = resume_config(saved, None, start)
    assert cfg.to_dict() == load_config(overrides=start).to_dict()
    with pytest.raises(ConfigError, match="'M' cannot change when resuming"):
        resume_config(saved, None, ["preset=cpu"])  # another preset's values
    with pytest.raises(ConfigError, match="config key 'preset'"):
        resume_config(saved, None, ["preset=huge"])
