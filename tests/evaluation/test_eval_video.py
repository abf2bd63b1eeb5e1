"""cmacc eval ucf101 / hmdb51 / retrieval on generated videos in the official layouts."""
import json
from pathlib import Path

import numpy as np
import pytest

from cmacc.cli import main
from cmacc.evaluation.video import hit_rates

FAST = ["run.progress=false", "run.threads=1", "eval.frames=4", "eval.fps=5", "eval.size=16", "eval.crops=2",
        "eval.epochs=2", "eval.batch_size=4", "model.video=tiny"]
CLASSES = ("ApplyEyeMakeup", "Basketball")


def _videos(root: Path, names: list[str]) -> None:
    from cmacc.data.media import write_video
    for i, rel in enumerate(names):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        p = write_video(root / rel, "mjpeg", seconds=1.6, fps=10, size=(32, 24), audio=i % 2 == 0)
        p.rename(root / rel)  # keep the listed name (.avi) whatever the codec's container


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    root = tmp_path_factory.mktemp("ucf")
    train = [f"{c}/v_{c}_g0{g}_c01.avi" for c in CLASSES for g in (1, 2, 3)]
    test = [f"{c}/v_{c}_g0{g}_c01.avi" for c in CLASSES for g in (8, 9)]
    _videos(root, train + test)
    sd = root / "ucfTrainTestlist"
    sd.mkdir()
    (sd / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(CLASSES)))
    for k in (1, 2, 3):  # split 2 swaps the roles of two groups, as the official splits rotate groups
        tr, te = (train, test) if k != 2 else (train[1:] + test[:1], test[1:] + train[:1])
        (sd / f"trainlist0{k}.txt").write_text("".join(f"{p} {1 + CLASSES.index(p.split('/')[0])}\n" for p in tr))
        (sd / f"testlist0{k}.txt").write_text("".join(f"{p}\n" for p in te))
    return root


def _eval(task, root, out, *args, sets=()):
    argv = ["eval", task, "--data", str(root), "--out", str(out), *args]
    for s in FAST + list(sets):
        argv += ["--set", s]
    return main(argv)


def test_ucf101_finetune_reports_clip_and_video_accuracy_per_split(ucf, tmp_path):
    assert _eval("ucf101", ucf, tmp_path, "--random-init", "--split", "all") == 0
    res = json.loads((tmp_path / "ucf101.json").read_text())
    assert res["task"] == "ucf101" and res["protocol"] == "finetune" and res["encoder"] == "random-init"
    assert [f["name"] for f in res["folds"]] == ["split1", "split2", "split3"]
    assert [f["n_test"] for f in res["folds"]] == [4, 4, 4] and [f["n_train"] for f in res["folds"]] == [6, 6, 6]
    for f in res["folds"]:
        assert 0 <= f["accuracy"] <= 1 and 0 <= f["clip_accuracy"] <= 1 and len(f["train_loss"]) == 2
        assert f["accuracy"] * 4 == pytest.approx(round(f["accuracy"] * 4))  # a fraction of 4 videos
        assert f["clip_accuracy"] * 8 == pytest.approx(round(f["clip_accuracy"] * 8))  # of 2 clips x 4 videos
    assert res["mean"] == pytest.approx(np.mean([f["accuracy"] for f in res["folds"]]))
    assert res["preprocessing"] == {"frames": 4, "fps": 5.0, "size": 16, "crops": 2}
    assert (tmp_path / "ucf101.png").is_file() and (tmp_path / "scan.json").is_file()


def test_retrieval_hit_rates(ucf, tmp_path):
    assert _eval("retrieval", ucf, tmp_path, "--split", "1", sets=["eval.retrieval_k=1,2,5"]) == 0
    res = json.loads((tmp_path / "retrieval.json").read_text())
    assert res["best_stage"] == "layer4" and res["dataset"] == "ucf101"
    for stage in res["topk"].values():
        r = [stage[k]["mean"] for k in ("1", "2", "5")]
        assert r == sorted(r) and r[-1] == 1.0  # 5 > the 3 training videos of the other class: always a hit


def test_hit_rate_definition():
    train = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    train_y = np.array([0, 1, 1])
    test = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.2]])
    r = hit_rates(train, train_y, test, np.array([0, 1, 1]), [1, 2, 3])
    # query 0 -> train 0 (class 0): hit; query 1 -> train 1: hit; query 2 -> train 0 (class 0) first,
    # then train 2 (class 1): a hit only from k = 2
    assert r == {1: pytest.approx(2 / 3), 2: 1.0, 3: 1.0}


def test_missing_listed_videos_are_skipped_or_named(ucf, tmp_path, capsys):
    sd = tmp_path / "splits"
    sd.mkdir()
    for f in (ucf / "ucfTrainTestlist").iterdir():
        (sd / f.name).write_text(f.read_text())
    with open(sd / "trainlist01.txt", "a") as f:
        f.write("Basketball/v_Basketball_g77_c01.avi 2\n")
    assert _eval("ucf101", ucf, tmp_path / "a", "--splits", str(sd), sets=["eval.epochs=1"]) == 0
    res = json.loads((tmp_path / "a" / "ucf101.json").read_text())
    assert [s["reason"] for s in res["data"]["skipped"]] == ["missing"]
    assert res["data"]["skipped"][0]["path"].endswith("v_Basketball_g77_c01.avi")
    assert _eval("ucf101", ucf, tmp_path / "b", "--splits", str(sd), sets=["data.on_corrupt=error"]) == 2
    assert "v_Basketball_g77_c01.avi (listed in" in capsys.readouterr().err


def test_bad_split_files_are_named(ucf, tmp_path, capsys):
    assert _eval("ucf101", ucf, tmp_path, "--splits", str(tmp_path / "nope")) == 2
    assert "no split folder" in capsys.readouterr().err
    sd = tmp_path / "bad"
    sd.mkdir()
    (sd / "classInd.txt").write_text("one ApplyEyeMakeup\n")
    assert _eval("ucf101", ucf, tmp_path, "--splits", str(sd)) == 2
    assert "classInd.txt line 1" in capsys.readouterr().err
    assert _eval("ucf101", ucf, tmp_path, "--split", "4") == 2
    assert "--split must be 1, 2, 3 or all" in capsys.readouterr().err


def test_hmdb51_layout(tmp_path):
    names = [f"{c}/{c}_{i}.avi" for c in ("brush_hair", "cartwheel") for i in range(4)]
    _videos(tmp_path, names)
    sd = tmp_path / "testTrainMulti_7030_splits"
    sd.mkdir()
    for c in ("brush_hair", "cartwheel"):  # 1 = train, 2 = test, 0 = not in this split
        (sd / f"{c}_test_split1.txt").write_text(f"{c}_0.avi 1\n{c}_1.avi 1\n{c}_2.avi 2\n{c}_3.avi 0\n")
    assert _eval("hmdb51", tmp_path, tmp_path / "o", sets=["eval.epochs=1"]) == 0
    res = json.loads((tmp_path / "o" / "hmdb51.json").read_text())
    assert res["folds"][0]["n_train"] == 4 and res["folds"][0]["n_test"] == 2
