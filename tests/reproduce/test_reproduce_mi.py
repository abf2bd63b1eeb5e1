"""Spatial-MultiOmniglot and `cmacc reproduce mi` (CM-ACC Fig. 3a)."""
import json
import math

import numpy as np
import pytest
from omniglot_zip import omniglot_zip

from cmacc.cli import main
from cmacc.config import ConfigError
from cmacc.reproduce import common, mi
from cmacc.reproduce.omniglot import (
    CELL,
    PAPER_SIZES,
    OmniglotError,
    SpatialMultiOmniglot,
    make_alphabets,
    mutual_information,
    read_glyphs,
)


@pytest.fixture(scope="module")
def glyphs(tmp_path_factory):
    return read_glyphs(omniglot_zip(tmp_path_factory.mktemp("omni") / "images_background_t.zip"))


def test_y_shows_the_successor_of_x_in_every_used_cell(glyphs):
    alphabets, how = make_alphabets(glyphs, PAPER_SIZES, 0)
    assert "pseudo-alphabets" in how and [len(a) for a in alphabets] == list(PAPER_SIZES)
    assert all(len(set(a.tolist())) == len(a) for a in alphabets)  # l_i distinct characters
    ds = SpatialMultiOmniglot(glyphs, alphabets, 4, 50, train_drawers=3, views=2)
    for n in range(50):
        z = ds.cell_labels[n]
        x, y = ds.pair_characters(n)
        for i in range(4):
            a = alphabets[i]
            assert x[i] == a[z[i]] and y[i] == a[(z[i] + 1) % len(a)]
        item, (dx, dy) = ds[n], ds.drawer_choice(n, 0)
        (dx1, dy1) = ds.drawer_choice(n, 1)
        assert (dx != dy).all() and (dx1 != dx).all() and (dy1 != dy).all() and (dx1 != dy1).all()
        for i in range(4):  # cell i of the canvases shows exactly those drawings
            r, c = divmod(i, 3)
            cell = np.s_[0, 0, r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL]
            np.testing.assert_array_equal(item["video"][cell].numpy(), glyphs.images[x[i], dx[i]])
            np.testing.assert_array_equal(item["audio"][cell].numpy(), glyphs.images[y[i], dy[i]])
        blank = item["video"][0, 0].clone()
        blank[:CELL, :] = 0
        blank[CELL:2 * CELL, :CELL] = 0  # cells 0-3 used; cells 4-8 must be empty
        assert blank.abs().sum() == 0
        assert not np.array_equal(item["video"].numpy(), item["video_k"].numpy())  # SMoCo: another drawing
    assert ds[0]["video"].shape == (1, 1, 96, 96)  # the input does not grow with k
    assert mutual_information(PAPER_SIZES, 4) == pytest.approx(math.log(55 * 52 * 48 * 47))


def test_shift_positive_is_the_same_drawing_moved_afresh_at_every_read(glyphs):
    """data.positive=shift: SMoCo's second view shows x's (and y's) own drawings, each cell moved by
    at most SHIFT px, a new offset per read; the first view is unchanged from positive=drawer."""
    import torch

    from cmacc.reproduce.omniglot import SHIFT, shift_glyph
    alphabets, _ = make_alphabets(glyphs, PAPER_SIZES, 0)
    ds = SpatialMultiOmniglot(glyphs, alphabets, 3, 20, train_drawers=3, views=2, positive="shift")
    base = SpatialMultiOmniglot(glyphs, alphabets, 3, 20, train_drawers=3, views=2)
    torch.manual_seed(0)
    offsets = set()
    for n in range(20):
        item, ref = ds[n], base[n]
        np.testing.assert_array_equal(item["video"].numpy(), ref["video"].numpy())
        np.testing.assert_array_equal(item["audio"].numpy(), ref["audio"].numpy())
        (x, y), (dx, dy) = ds.pair_characters(n), ds.drawer_choice(n, 0)
        for key, chars, drawers in (("video_k", x, dx), ("audio_k", y, dy)):
            for i in range(3):
                r, c = divmod(i, 3)
                got = item[key][0, 0, r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL].numpy()
                g = glyphs.images[chars[i], drawers[i]]
                match = [(a, b) for a in range(-SHIFT, SHIFT + 1) for b in range(-SHIFT, SHIFT + 1)
                         if np.array_equal(got, shift_glyph(g, a, b))]
                assert match, f"pair {n} {key} cell {i} is not its own drawing shifted by <= {SHIFT} px"
                offsets.add(match[0])
        assert item["video_k"].abs().sum() > 0
    assert len(offsets) > 5  # offsets are drawn, not fixed
    again = [ds[0]["video_k"] for _ in range(4)]
    assert any(not torch.equal(again[0], a) for a in again[1:])  # afresh at every read
    # a training read (ClipRequest) takes its offsets from the request's own stream: the same
    # request reads the same bytes whatever torch's generator holds, a video-only read moves x as a
    # full read does, and the next epoch's read of the pair is moved afresh
    from cmacc.data import ClipRequest
    full = ds[ClipRequest(3, epoch=1)]
    torch.manual_seed(99)
    video_only = ds[ClipRequest(3, epoch=1, modality="video")]
    assert set(video_only) == {"index", "label", "video", "video_k"}
    assert torch.equal(video_only["video_k"], full["video_k"]) and torch.equal(ds[ClipRequest(3, epoch=1)]["audio_k"],
                                                                                full["audio_k"])
    epochs = [ds[ClipRequest(3, epoch=e)]["video_k"] for e in range(2, 8)]
    assert any(not torch.equal(full["video_k"], v) for v in epochs)
    with pytest.raises(ValueError, match="positive"):
        SpatialMultiOmniglot(glyphs, alphabets, 3, 20, train_drawers=3, views=2, positive="crop")


def test_drawers_are_disjoint_between_pretraining_and_the_probe_test_set(glyphs):
    alphabets, _ = make_alphabets(glyphs, PAPER_SIZES, 0)
    used = {}
    for split in ("train", "probe_train", "probe_test"):
        ds = SpatialMultiOmniglot(glyphs, alphabets, 9, 40, split=split, train_drawers=3, views=2)
        used[split] = {int(d) for n in range(40) for v in (0, 1) for dd in ds.drawer_choice(n, v) for d in dd}
    assert used["train"] <= {0, 1, 2} and used["probe_train"] <= {0, 1, 2} and used["probe_test"] <= {3, 4, 5}
    z = SpatialMultiOmniglot(glyphs, alphabets, 9, 4000, train_drawers=3).cell_labels
    assert all(set(z[:, i].tolist()) == set(range(PAPER_SIZES[i])) for i in range(9))  # z_i ~ U(l_i)


def test_real_alphabets_are_used_when_large_enough(tmp_path):
    g = read_glyphs(omniglot_zip(tmp_path / "big.zip", alphabets=(("A", 5), ("B", 4), ("C", 3)), drawers=6))
    alphabets, how = make_alphabets(g, (4, 3), 0)
    assert "largest alphabets" in how
    assert {g.alphabets[c] for c in alphabets[0]} == {"A"} and {g.alphabets[c] for c in alphabets[1]} == {"B"}


def test_bad_zips_are_named(tmp_path):
    with pytest.raises(OmniglotError, match="no such file"):
        read_glyphs(tmp_path / "none.zip")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(OmniglotError, match="is not a zip file"):
        read_glyphs(tmp_path / "bad.zip")
    assert main(["reproduce", "mi", "--omniglot", str(tmp_path / "bad.zip"), "--quick"]) == 2


def test_cell_probe_on_a_separable_case():
    """Features that encode z linearly (one-hot per cell) are probed perfectly; noise gives chance."""
    rng = np.random.default_rng(0)
    z = np.stack([rng.integers(0, 5, 400), rng.integers(0, 3, 400)], 1)
    onehot = np.concatenate([np.eye(5)[z[:, 0]], np.eye(3)[z[:, 1]]], 1)[:, None]
    accs = mi.cell_accuracies(onehot[:300], z[:300], onehot[300:], z[300:], C=1.0, seed=0)
    assert accs == [1.0, 1.0]
    noise = rng.normal(size=(400, 1, 8))
    accs = mi.cell_accuracies(noise[:300], z[:300], noise[300:], z[300:], C=1.0, seed=0)
    assert accs[0] < 0.45 and accs[1] < 0.6


def test_quick_reproduction_writes_results(glyphs, tmp_path):
    zp = omniglot_zip(tmp_path / "images_background_q.zip", alphabets=(("Alpha", 60),), drawers=20)
    assert main(["reproduce", "mi", "--omniglot", str(zp), "--quick", "--out", str(tmp_path / "o")]) == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["experiment"] == "mi" and set(res["results"]) == {"xmoco", "cmacc"}
    for m in ("xmoco", "cmacc"):
        for k in ("1", "2"):
            assert len(res["results"][m][k]) == 3 and all(0 <= a <= 1 for a in res["results"][m][k])
            assert all(f is not None and 0 <= f <= 1 for f in res["false_negatives"][m][k])
    assert res["chance"]["1"] == pytest.approx(1 / 55) and {"git", "versions"} <= set(res["provenance"])
    assert res["settings"]["exp_mi_vs_train_size"]["2"] == pytest.approx(55 * 52 / 320)
    assert (tmp_path / "o" / "mi.png").stat().st_size > 1000


def test_supervised_reference_learns_the_cells(tmp_path):
    """The ceiling row trains the x-encoder on z: on an easy set-up its probe beats chance by far."""
    zp = omniglot_zip(tmp_path / "images_background_s.zip", alphabets=(("Alpha", 60),), drawers=20)
    s = mi.Settings(**{**mi.QUICK, "steps": 40, "train_size": 600})
    r = mi.run_one(s, str(zp), "supervised", 1, 0, tmp_path / "o")
    assert r["accuracy"] > 5 / 55 and r["false_negatives"] is None


@pytest.mark.parametrize("method,overrides", [("xmoco", []), ("smoco", ["data.positive=shift"])])
def test_learning_curve_and_a_killed_job_resumes_where_it_stopped(tmp_path, monkeypatch, method, overrides):
    """--probe-every keeps a checkpoint every N steps and probes each; a job killed mid-run (its
    job.json and checkpoints left) resumes from its last checkpoint, and its curve, final probe and
    loss equal an uninterrupted run's -- also for SMoCo's shift positive, whose offsets are drawn
    afresh at every read (from the request's stream, not from a generator a checkpoint would miss)."""
    import torch

    from cmacc.engine import train
    zp = omniglot_zip(tmp_path / "images_background_c.zip", alphabets=(("Alpha", 60),), drawers=20)
    s = mi.Settings(**{**mi.QUICK, "steps": 6, "probe_every": 2, "chars": (1,), "methods": (method,),
                       "seeds": (0,), "overrides": overrides})
    whole = mi.run_one(s, str(zp), method, 1, 0, tmp_path / "whole")
    assert whole["curve"]["steps"] == [0, 2, 4, 6] and whole["resumed"] is False
    assert whole["curve"]["accuracy"][-1] == whole["accuracy"]

    real = train.pretrain

    def killed(cfg, out, **kw):
        def on_step(step, rec):
            if step == 3:
                raise KeyboardInterrupt("killed")
        return real(cfg, out, on_step=on_step, **kw)
    monkeypatch.setattr(train, "pretrain", killed)
    with pytest.raises(KeyboardInterrupt):
        mi.run_one(s, str(zp), method, 1, 0, tmp_path / "cut")
    run_dir = tmp_path / "cut" / "runs" / f"{method}-k1-seed0"
    assert (run_dir / "job.json").exists() and not (run_dir / "result.json").exists()
    monkeypatch.setattr(train, "pretrain", real)
    torch.manual_seed(12345)  # a new process's global generator: the resumed run must not read it
    resumed = mi.run_one(s, str(zp), method, 1, 0, tmp_path / "cut")
    assert resumed["resumed"] is True
    assert resumed["curve"] == whole["curve"] and resumed["accuracy"] == whole["accuracy"]
    assert resumed["final_loss"] == whole["final_loss"]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 6
    # kept: a third call trains nothing
    monkeypatch.setattr(train, "pretrain", lambda *a, **k: pytest.fail("trained again"))
    assert mi.run_one(s, str(zp), method, 1, 0, tmp_path / "cut") == resumed
    # the gathered grid: where each probe's curve converged, per seed, and both probes printed and drawn
    res = mi.run(str(zp), tmp_path / "cut", s, quick=False)
    curve = resumed["curve"]
    assert res["converged_at"] == {method: {"1": {
        "held-out": [mi.converged_at(curve["steps"], curve["accuracy"])],
        "seen": [mi.converged_at(curve["steps"], curve["accuracy_seen_drawers"])]}}}
    text = mi.curves_table(res)
    assert f"{method:<15} k=1  held-out" in text and f"{method:<15} k=1  seen" in text
    # too few probes in the second half (only step 4 and 6 lie after 3) for a plateau: None, shown as such
    assert res["plateau"] == {method: {"1": {"held-out": [None], "seen": [None]}}}
    assert "nan" in mi.plateau_table(res) and "(0)" in mi.plateau_table(res)
    assert res["drift"] == {method: {"1": {"held-out": [None], "seen": [None]}}}
    assert res["peak"][method]["1"]["held-out"] == [mi.peak(curve["steps"], curve["accuracy"])]
    assert f"{method:<15} k=1  seen      seed 0: " in mi.seeds_table(res)
    assert res["seeds_kept"] == {method: {"1": [0]}}  # which seed each kept run was, for paired_table
    with common.kept_only(), pytest.raises(ConfigError, match="no kept runs"):  # a wrong --out: one line
        mi.run(str(zp), tmp_path / "elsewhere", s, quick=False)
    assert (tmp_path / "cut" / "mi_curves.png").stat().st_size > 1000


def test_plateau():
    steps = list(range(0, 44, 4))  # 0..40: the second half is 24..40, five probes
    acc = [0.1, 0.3, 0.5, 0.6, 0.65, 0.7, 0.71, 0.69, 0.70, 0.72, 0.68]
    assert mi.plateau(steps, acc) == pytest.approx(np.mean(acc[6:]))
    assert mi.plateau(steps[:4], acc[:4]) is None  # 8..12: one probe after 6
    assert mi.plateau([0, 2, 4, 6, 8], [0.1, 0.2, 0.3, 0.4, 0.5], min_probes=2) == pytest.approx(0.45)
    res = {"plateau": {"xmoco": {"3": {"held-out": [0.7, 0.72, None], "seen": [0.9, 0.9, 0.9]}},
                       "cmacc": {"1": {"held-out": [0.8], "seen": [0.95]}},
                       "smoco": {"1": {"held-out": [1.0], "seen": [1.0]}, "3": {"held-out": [1.0], "seen": [1.0]}}}}
    text = mi.plateau_table(res)
    assert "100.0% (1 seed) 100.0% (1 seed)" in text  # cells as wide as the column stay apart
    assert "71.0 ± 1.4% (2)" in text and "90.0 ± 0.0%" in text  # three seeds that agree: a real std of 0
    assert "80.0% (1 seed)" in text and "80.0 ±" not in text  # one seed: no std to show
    assert text.count("plateau, ") == 2


def test_peak_and_drift_tell_a_falling_curve_from_a_level():
    steps = list(range(0, 44, 4))  # the second half is 24..40
    level = [0.1, 0.3, 0.5, 0.6, 0.65, 0.7, 0.71, 0.69, 0.70, 0.72, 0.68]
    falling = [0.1, 0.6, 0.72, 0.7, 0.69, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45]  # peaks at 8, then falls 5 pts/4 steps
    assert mi.peak(steps, level) == [0.72, 36] and mi.peak(steps, falling) == [0.72, 8]
    assert mi.drift(steps, falling) == pytest.approx(-0.20)  # a straight line from 0.65 to 0.45
    assert abs(mi.drift(steps, level)) < 0.02
    assert mi.drift(steps[:4], falling[:4]) is None  # as plateau: too few probes in the second half
    res = {"seeds_kept": {"xmoco": {"1": [0, 2]}},
           "plateau": {"xmoco": {"1": {"held-out": [mi.plateau(steps, level), mi.plateau(steps, falling)],
                                       "seen": [0.9, None]}}},
           "peak": {"xmoco": {"1": {"held-out": [mi.peak(steps, level), mi.peak(steps, falling)],
                                    "seen": [[0.95, 4], [0.9, 8]]}}},
           "drift": {"xmoco": {"1": {"held-out": [mi.drift(steps, level), mi.drift(steps, falling)],
                                     "seen": [0.0, None]}}}}
    text = mi.seeds_table(res)
    assert "seed 2: 72.0 @ 8, 55.0, drift -20.0" in text and "seed 2: 90.0 @ 8, -" in text


def test_paired_differences_match_seeds_not_positions():
    # --kept-only left xmoco seeds 0 and 2 and cmacc seeds 1 and 2: only seed 2 pairs up
    res = {"seeds_kept": {"xmoco": {"3": [0, 2]}, "cmacc": {"3": [1, 2]}, "smoco": {"3": [0, 2]}},
           "plateau": {"xmoco": {"3": {"held-out": [0.70, 0.75], "seen": [0.9, 0.9]}},
                       "cmacc": {"3": {"held-out": [0.50, 0.80], "seen": [0.9, 0.95]}},
                       "smoco": {"3": {"held-out": [0.72, None], "seen": [0.8, 0.85]}}}}
    assert mi.paired(res, "cmacc", "3", "held-out") == pytest.approx([0.05])
    assert mi.paired(res, "smoco", "3", "held-out") == pytest.approx([0.02])  # seed 2 has no plateau
    assert mi.paired(res, "smoco", "3", "seen") == pytest.approx([-0.1, -0.05])
    text = mi.paired_table(res)
    assert "+5.0 (1)" in text and "+5.0 ±" not in text and "-7.5 ± 3.5 (2)" in text and "xmoco " not in text
    assert "not run" in mi.paired_table({"plateau": {"cmacc": {}}, "seeds_kept": {}})


def test_converged_at():
    assert mi.converged_at([0, 2, 4, 6], [0.1, 0.5, 0.6, 0.605]) == 4
    assert mi.converged_at([0, 2, 4, 6], [0.1, 0.5, 0.6, 0.7]) is None  # still rising
    assert mi.converged_at([0, 2, 4], [0.5, 0.3, 0.505]) == 0  # never rose above the start
    assert mi.converged_at([5], [0.4]) == 5
    # flat only over the last eighth of the run: too short a stretch to call it converged
    steps = list(range(0, 3250, 250))
    rising = [0.30 + 0.02 * i for i in range(11)] + [0.505, 0.507]  # flat from 2500 on
    assert mi.converged_at(steps, rising) is None
    assert mi.converged_at(steps, [0.3] * 3 + [0.5] * 10) == 750
    assert mi.converged_at(steps, [0.3] * 3 + [0.5] * 10, flat=0.8) is None
