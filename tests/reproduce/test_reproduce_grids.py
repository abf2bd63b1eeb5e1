"""`cmacc reproduce ohem | fig2 | table1` and the runner they share (runs kept by config)."""
import json

import numpy as np
import pytest
import torch
from omniglot_zip import omniglot_zip

from cmacc.cli import main
from cmacc.models import build_encoder
from cmacc.models.blocks import pooled_stages
from cmacc.reproduce import common, fig2, table1


@pytest.fixture(scope="module")
def zp(tmp_path_factory):
    return str(omniglot_zip(tmp_path_factory.mktemp("omni") / "images_background_g.zip",
                            alphabets=(("Alpha", 60),), drawers=20))


def _results(out):
    res = json.loads((out / "results.json").read_text())
    assert {"git", "versions"} <= set(res["provenance"]) and "settings" in res
    return res


def test_ohem_writes_table5_per_batch_size(zp, tmp_path):
    out = tmp_path / "o"
    assert main(["reproduce", "ohem", "--omniglot", zp, "--quick", "--batches", "8,16", "--chars", "1",
                 "--methods", "random_pool,ohem", "--out", str(out)]) == 0
    res = _results(out)
    assert res["experiment"] == "ohem" and set(res["results"]) == {"random_pool", "ohem"}
    assert res["settings"]["per_batch"] == {"8": {"steps": 12, "M": 8, "K": 32, "N": 64},
                                            "16": {"steps": 6, "M": 16, "K": 64, "N": 128}}
    for m in ("random_pool", "ohem"):
        for M in ("8", "16"):
            assert len(res["results"][m][M]) == 1 and 0 <= res["results"][m][M][0] <= 1
            assert 0 <= res["false_negatives"][m][M][0] <= 1 and 1 <= res["distinct"][m][M][0] <= int(M)
    assert res["chance"] == pytest.approx(1 / 55) and (out / "ohem.png").stat().st_size > 1000


def test_fig2_logs_distinct_classes_per_step(zp, tmp_path):
    out = tmp_path / "o"
    assert main(["reproduce", "fig2", "--omniglot", zp, "--quick", "--batches", "8", "--steps", "4",
                 "--out", str(out)]) == 0
    res = _results(out)
    assert res["experiment"] == "fig2" and set(res["results"]) == {"random_pool", "cmacc"}
    for m in ("random_pool", "cmacc"):
        curve = res["distinct_per_step"][m]["8"][0]
        assert len(curve) == 4 and all(1 <= c <= 8 for c in curve)
        assert res["distinct"][m]["8"][0] == pytest.approx(np.mean(curve))
    assert res["uniform_expectation"]["8"] == pytest.approx(fig2.uniform_expectation(55, 8))
    assert (out / "fig2.png").stat().st_size > 1000


def test_uniform_expectation_matches_simulation():
    rng = np.random.default_rng(0)
    draws = rng.integers(0, 55, (20000, 32))
    simulated = np.mean([len(set(r)) for r in draws])
    assert fig2.uniform_expectation(55, 32) == pytest.approx(simulated, abs=0.05)
    assert fig2.uniform_expectation(55, 1) == pytest.approx(1.0)


def test_table1_reads_the_probes_and_reuses_kept_runs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    assert main(["reproduce", "table1", "--quick", "--seeds", "0,1", "--out", str(out)]) == 0
    res = _results(out)
    assert set(res["results"]) == {"xmoco", "cmacc"} and len(res["random_init"]["video"]) == 4
    for m in ("xmoco", "cmacc"):
        assert all(len(res["results"][m][mod]) == 2 for mod in ("video", "audio"))
    summary = json.loads((out / "runs" / "cmacc-seed1" / "summary.json").read_text())
    assert res["results"]["cmacc"]["audio"][1] == pytest.approx(summary["probe"]["audio"]["pretrained"] / 100)
    assert summary["config"]["seed"] == 1 and summary["config"]["method"] == "cmacc"

    def no_training(*a, **k):
        raise AssertionError("a kept run was trained again")

    monkeypatch.setattr(common, "train_summary", no_training)  # same settings: everything is read back
    assert main(["reproduce", "table1", "--quick", "--seeds", "0,1", "--out", str(out)]) == 0
    assert _results(out)["results"] == res["results"]
    # --kept-only gathers what is kept and trains nothing: smoco was never run, so it is left out
    assert main(["reproduce", "table1", "--quick", "--seeds", "0,1", "--methods", "xmoco,smoco", "--kept-only",
                 "--out", str(out)]) == 0
    assert set(_results(out)["results"]) == {"xmoco"} and _results(out)["results"]["xmoco"] == res["results"]["xmoco"]
    with pytest.raises(AssertionError, match="trained again"):  # another config is not mistaken for it
        table1.run(out, table1.Settings(**{**table1.QUICK, "steps": 5}), True)
    # nothing of the grid kept (a wrong --out, another grid's flags): a one-line error, exit 2, no results
    empty = tmp_path / "empty"
    assert main(["reproduce", "table1", "--quick", "--seeds", "0", "--kept-only", "--out", str(empty)]) == 2
    assert "no kept runs" in capsys.readouterr().err and not (empty / "results.json").exists()


def test_a_killed_run_is_redone_in_a_fresh_folder(tmp_path):
    from cmacc.config import load_config
    cfg = load_config(overrides=["seed=3"])
    run_dir = tmp_path / "r"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "stale.txt").write_text("half a run")
    assert common.cached(run_dir, cfg, lambda: {"a": 1}) == {"a": 1}
    assert not (run_dir / "stale.txt").exists()
    assert common.cached(run_dir, cfg, lambda: {"a": 2}) == {"a": 1}  # kept
    assert common.cached(run_dir, load_config(overrides=["seed=4"]), lambda: {"a": 2}) == {"a": 2}


def test_a_kept_run_matches_across_thread_counts_only(tmp_path):
    """run.threads says how fast a run went, not what it trained: a kept run (or a killed job's folder,
    resumed) is found at another thread count, and its result.json keeps the count it ran with; any
    other key, run.* included, is another run."""
    from cmacc.config import load_config
    run_dir = tmp_path / "r"
    assert common.cached(run_dir, load_config(overrides=["seed=3", "run.threads=2"]), lambda: {"a": 1}) == {"a": 1}
    assert common.cached(run_dir, load_config(overrides=["seed=3", "run.threads=1", "run.progress=false"]),
                         lambda: {"a": 2}) == {"a": 1}
    assert json.loads((run_dir / "result.json").read_text())["config"]["run"]["threads"] == 2
    assert common.cached(run_dir, load_config(overrides=["seed=3", "run.precision=bf16"]), lambda: {"a": 3}) == {"a": 3}
    killed = tmp_path / "k"  # a killed job's folder is resumed at another thread count, not cleared
    (killed / "checkpoints").mkdir(parents=True)
    common.write_atomic(killed / common.JOB, json.dumps({"config": load_config(overrides=["run.threads=1"]).to_dict()}))
    (killed / "checkpoints" / "last.pt").write_text("a checkpoint")
    assert common.cached(killed, load_config(overrides=["run.threads=2"]), lambda: {"a": 4}) == {"a": 4}
    assert (killed / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("argv, message", [
    (["ohem", "--chars", "10"], "--chars"), (["fig2", "--batches", "8,x"], "--batches"),
    (["ohem", "--methods", "nope"], "method"), (["mi", "--seeds", "a"], "--seeds"),
    (["mi", "--probe-every", "-1"], "--probe-every"), (["mi", "--probe-every", "7"], "--probe-every")])
def test_bad_reproduce_flags_are_named(zp, tmp_path, capsys, argv, message):
    assert main(["reproduce", *argv, "--omniglot", zp, "--quick", "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()


def test_cell_pooled_image_encoder_keeps_where_things_are():
    """image_cells pools the last 3 x 3 map per cell: its features are the per-cell averages of the
    global features' map (at 96 px the map is 3 x 3: one position per cell), so the global pool is
    their mean."""
    torch.manual_seed(0)
    cells = build_encoder("video", "image_cells", d=16).eval()
    x = torch.zeros(2, 1, 1, 96, 96)
    x[0, 0, 0, 8:24, 8:24] = 1  # cell 0
    x[1, 0, 0, 40:56, 40:56] = 1  # cell 4 (centre)
    with torch.no_grad():
        f = cells.features(x)
        stages = pooled_stages(cells.backbone, x)
        backbone = cells.backbone
        h = backbone.layers(backbone.stem(backbone.as_input(x)))
    assert f.shape == (2, 128 * 9) and cells.backbone.out_dim == 128 * 9
    torch.testing.assert_close(stages["layer4"], f)  # the last stage is what the backbone returns
    torch.testing.assert_close(f.view(2, 128, 9).mean(2), h.flatten(2).mean(2))
    assert stages["layer3"].shape == (2, 64)  # earlier stages: global averages
    assert h.shape[2:] == (3, 3)  # one map position per 32-px cell: the features are the map itself
    torch.testing.assert_close(f, h.flatten(1))


def test_class_separation_with_sparse_label_ids():
    """Omniglot's latent ids are tuples in mixed radix (up to 55^9): centroids are per present id."""
    from cmacc.engine.diagnostics import class_separation
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=1)
    labels = torch.tensor([0, 1, 2] * 10)
    keys = torch.nn.functional.normalize(centres[labels] + 0.05 * torch.randn(30, 8, generator=g), dim=1)
    sparse = torch.tensor([5, 10**15, 7 * 10**14])[labels]  # 10^15 classes would not fit as dense centroids
    assert class_separation(keys, sparse) == class_separation(keys, labels) == 100.0


def test_ablation_runs_each_arm_with_its_keys_and_pairs_it_with_its_twin(tmp_path):
    from cmacc.reproduce import ablation
    out = tmp_path / "abl"
    assert main(["reproduce", "ablation", "--quick", "--out", str(out), "--set", "run.threads=1"]) == 0
    res = json.loads((out / "results.json").read_text())
    arms = ablation.QUICK["arms"]
    assert set(res["results"]) == set(arms) | {"xmoco+bn4"} and set(res["delta_vs_xmoco"]) == set(arms) - {"xmoco"}
    cfg = {name: json.loads((out / "runs" / f"{name}-seed0" / "result.json").read_text())["config"]
           for name in res["results"]}
    assert cfg["fresh_keys_off"]["sampler"]["fresh_keys"] is False and cfg["cmacc"]["sampler"]["fresh_keys"] is True
    assert cfg["refresh_4x"]["pool_refresh"] == 96 // 8 // 4 and cfg["cmacc"]["pool_refresh"] == 0
    assert cfg["bn4"]["model"]["bn_splits"] == cfg["xmoco+bn4"]["model"]["bn_splits"] == 4
    assert cfg["xmoco+bn4"]["method"] == "xmoco" and cfg["xmoco"]["model"]["bn_splits"] == 0
    for arm, d in res["delta_vs_xmoco"].items():
        twin = "xmoco+bn4" if arm == "bn4" else "xmoco"
        assert d["vs"] == twin
        for mod in ("video", "audio"):
            diffs = [a - b for a, b in zip(res["results"][arm][mod], res["results"][twin][mod])]
            assert d[mod] == pytest.approx([np.mean(diffs), np.std(diffs, ddof=1)])
    assert (out / "ablation.png").stat().st_size > 1000
    # a gather that finds xmoco's seed 1 only pairs each arm's seed 1 with it, not its seed 0
    (out / "runs" / "xmoco-seed0" / "result.json").unlink()
    assert main(["reproduce", "ablation", "--quick", "--out", str(out), "--set", "run.threads=1", "--kept-only"]) == 0
    gathered = json.loads((out / "results.json").read_text())
    assert gathered["seeds_kept"]["xmoco"] == [1] and gathered["seeds_kept"]["cmacc"] == [0, 1]
    d = gathered["delta_vs_xmoco"]["cmacc"]
    assert d["seeds"] == [1] and d["video"] == pytest.approx(
        [res["results"]["cmacc"]["video"][1] - res["results"]["xmoco"]["video"][1], 0.0])
    assert gathered["delta_vs_xmoco"]["bn4"] == res["delta_vs_xmoco"]["bn4"] | {"seeds": [0, 1]}


def test_ablation_arms_resolve_per_setting():
    from cmacc.config import ConfigError
    from cmacc.reproduce import ablation
    on_mi = ablation.Settings(on="mi")
    assert ablation.arm_keys(on_mi, "refresh_4x") == ("cmacc", ["pool_refresh=78"])  # 10,000 / 32 / 4
    assert ablation.arm_keys(on_mi, "pool_paper") == ("cmacc", ["N=1600"])  # 0.16 x 10,000 pairs
    assert ablation.arm_keys(on_mi, "posterior_tau") == ("cmacc", ["sampler.temperature=0.1"])
    assert ablation.arm_keys(ablation.Settings(), "classes_x4", twin=True) == ("xmoco", ["data.num_classes=128"])
    assert ablation.arm_keys(ablation.Settings(), "pool_paper") == ("cmacc", ["N=480"])  # 0.16 x 3,072
    with pytest.raises(ConfigError, match="needs the built-in data"):
        ablation.arm_keys(on_mi, "classes_x4")
    with pytest.raises(ConfigError, match="unknown arm 'nope'"):
        ablation.arm_keys(on_mi, "nope")
    with pytest.raises(ConfigError, match="--on mi needs --omniglot"):
        ablation.check(on_mi)


def test_ablation_on_mi_defaults_to_the_arms_that_apply(tmp_path, capsys):
    """Without --arms, --on mi runs every arm but the built-in-only ones (no classes_x4 error);
    asked for by name, classes_x4 is refused."""
    zp = omniglot_zip(tmp_path / "images_background_a.zip", alphabets=(("Alpha", 60),), drawers=20)
    args = ["reproduce", "ablation", "--on", "mi", "--omniglot", str(zp), "--out", str(tmp_path / "o"), "--kept-only"]
    assert main(args) == 2
    assert "no kept runs" in capsys.readouterr().err  # every applicable arm checked, none kept
    assert main(args + ["--arms", "cmacc,classes_x4"]) == 2
    assert "classes_x4 needs the built-in data" in capsys.readouterr().err
