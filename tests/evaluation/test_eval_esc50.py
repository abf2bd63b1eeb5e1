"""cmacc eval esc50 and cmacc export on generated data in ESC-50's layout (meta/esc50.csv + audio/)."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from conftest import shared_dir

from cmacc.cli import main
from cmacc.config import load_config
from cmacc.data.audio import MelSpec
from cmacc.evaluation import esc50, finetune, linear
from cmacc.evaluation.features import crop_requests
from cmacc.evaluation.folds import SplitError, make_folds
from cmacc.models import load_encoders
from cmacc.engine.train import pretrain

SR = 16000
CLASSES = ("tone_low", "tone_high", "noise")
FAST = ["run.progress=false", "run.threads=1", "eval.crops=3", "eval.audio_seconds=1.0", "data.mel_bands=40",
        "eval.epochs=2", "eval.batch_size=8"]


def _sound(kind: str, rng: np.random.Generator, seconds: float = 3.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    if kind == "noise":
        y = rng.standard_normal(t.size) * 0.3
    else:
        f = (300 if kind == "tone_low" else 2500) * rng.uniform(0.9, 1.1)
        y = 0.5 * np.sin(2 * np.pi * f * t) + 0.02 * rng.standard_normal(t.size)
    return y.astype(np.float32)


def make_esc(root: Path, folds: int = 3, per_fold: int = 2, rows_extra=(), columns=None) -> Path:
    """ESC-50 layout: every source recording gives two clips (takes A, B) in the same fold."""
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    rows, src = [], 100
    for fold in range(1, folds + 1):
        for k, cat in enumerate(CLASSES):
            for _ in range(per_fold):
                src += 1
                for take in "AB":
                    name = f"{fold}-{src}-{take}-{k}.wav"
                    soundfile.write(root / "audio" / name, _sound(cat, rng), SR)
                    rows.append({"filename": name, "fold": fold, "target": k, "category": cat, "esc10": "True",
                                 "src_file": src, "take": take})
    rows += list(rows_extra)
    cols = columns or ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    with open(root / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def esc(tmp_path_factory):
    return make_esc(tmp_path_factory.mktemp("esc"))


def _eval(root, out, *args, sets=()):
    argv = ["eval", "esc50", "--data", str(root), "--out", str(out), *args]
    for s in FAST + list(sets):
        argv += ["--set", s]
    return main(argv)


# ---- folds ----
def test_official_folds_and_grouped_cv_never_split_a_source():
    folds = np.repeat([1, 2, 3], 8)
    labels = np.tile(np.repeat([0, 1], 4), 3)
    groups = np.repeat(np.arange(12), 2)  # two clips per source
    official, how = make_folds(folds, labels, groups, cv=None, default_cv=5, seed=0, what="t")
    assert [f.name for f in official] == ["fold1", "fold2", "fold3"] and "3 folds" in how
    assert all(set(folds[f.test]) == {int(f.name[-1])} for f in official)
    cv, how = make_folds(np.ones(24, int), labels, groups, cv=None, default_cv=4, seed=0, what="t")
    assert len(cv) == 4 and "grouped by src_file" in how and "1 fold(s)" in how
    assert sorted(np.concatenate([f.test for f in cv]).tolist()) == list(range(24))  # each clip tested once
    for f in cv:
        assert not set(groups[f.train]) & set(groups[f.test])
    forced, how = make_folds(folds, labels, groups, cv=3, default_cv=5, seed=0, what="t")
    assert [f.name for f in forced] == ["cv1", "cv2", "cv3"] and "--cv 3" in how


def test_a_source_in_two_official_folds_is_refused():
    folds, labels, groups = np.array([1, 1, 2, 2]), np.array([0, 1, 0, 1]), np.array(["a", "b", "c", "a"])
    with pytest.raises(SplitError, match="source 'a' has clips on both sides"):
        make_folds(folds, labels, groups, cv=None, default_cv=2, seed=0, what="esc50.csv")


# ---- crops ----
def test_test_crops_are_uniformly_spaced_and_training_crops_random(tmp_path, monkeypatch):
    """A 5 s file, 1 s crops: test crop k starts at 4 s x (k + 0.5) / 4; training crops vary by epoch."""
    spec = MelSpec(n_mels=8)
    ramp = np.tile(np.arange(500, dtype=np.float32), (8, 1))  # column j holds j: a window shows its start
    monkeypatch.setattr(esc50.MelCache, "get", lambda self, path, *a, **k: (ramp, 0.0))
    clips = esc50.Clips([tmp_path / "x.wav"], np.array([0]), np.array([1]), np.array(["s"]), ["c"], tmp_path, [])
    cfg = load_config(overrides=["eval.crops=4", "eval.audio_seconds=1.0"])
    ds = esc50.dataset(clips, spec, cfg)
    starts = [int(ds[r]["audio"][0, 0]) for r in crop_requests(np.array([0]), 4, train=False)]
    assert starts == [round(400 * (k + 0.5) / 4) for k in range(4)] == [50, 150, 250, 350]
    assert all(ds[r]["audio"].shape == (8, 100) for r in crop_requests(np.array([0]), 4, train=False))
    train = [int(ds[r]["audio"][0, 0]) for r in crop_requests(np.array([0]), 4, train=True)]
    assert len(set(train)) == 4 and all(0 <= s <= 400 for s in train)
    assert train == [int(ds[r]["audio"][0, 0]) for r in crop_requests(np.array([0]), 4, train=True)]  # seeded


# ---- classifiers and averaging ----
def test_linear_svm_separates_a_separable_case_and_averages_crop_scores():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 10)
    x = rng.normal(0, 0.1, (30, 4, 5)) + np.eye(5)[y][:, None] * 3
    pred, scores, _ = linear.fit_predict(x, y, x, C=1.0)
    assert (pred == y).all() and scores.shape == (30, 3)
    # one wildly wrong crop out of four does not flip an item whose other crops are confident
    x_test = x[:1].copy()
    x_test[0, 0] = np.eye(5)[1] * 3
    assert linear.fit_predict(x, y, x_test, C=1.0)[0][0] == 0


class _Crops(torch.utils.data.Dataset):
    """Crop k of an item is the constant k: the model below maps it to fixed class probabilities."""

    def __getitem__(self, req):
        return {"audio": torch.full((1, 4), float(req.clip)), "index": torch.tensor(req.index),
                "label": torch.tensor(0)}

    def __len__(self):
        return 1


class _Fixed(torch.nn.Module):
    P = torch.tensor([[0.55, 0.45], [0.55, 0.45], [0.0, 1.0]])  # two weak votes for 0, one sure 1

    def forward(self, x):
        return torch.log(self.P[x[:, 0, 0].long()].clamp_min(1e-9))


def test_finetune_prediction_averages_softmax_not_labels():
    pred, avg, per_crop = finetune.predict(_Fixed(), _Crops(), "audio", np.array([0]), 3, device=torch.device("cpu"))
    assert per_crop.argmax(2).tolist() == [[0, 0, 1]]  # a vote of the crops' labels would say 0
    assert pred.tolist() == [1] and avg[0, 1] == pytest.approx((0.45 + 0.45 + 1.0) / 3, abs=1e-6)


# ---- end to end ----
def test_linear_protocol_end_to_end(esc, tmp_path):
    assert _eval(esc, tmp_path, "--random-init") == 0
    res = json.loads((tmp_path / "esc50.json").read_text())
    assert res["task"] == "esc50" and res["protocol"] == "linear" and res["encoder"] == "random-init"
    assert [f["name"] for f in res["folds"]] == ["fold1", "fold2", "fold3"] and "3 folds" in res["how"]
    assert set(res["stages"]) == {"conv1", "layer1", "layer2", "layer3", "layer4", "embedding"}
    assert res["best_stage"] == max(res["stages"], key=lambda s: res["stages"][s]["mean"])
    assert res["mean"] == pytest.approx(np.mean([f["accuracy"] for f in res["folds"]]))
    assert all(0 <= f["accuracy"] <= 1 and f["n_test"] == 12 for f in res["folds"])
    assert res["mean"] > 0.5  # tones vs noise: a random encoder's features already separate them
    assert res["preprocessing"]["mel"]["n_mels"] == 40 and res["config"]["eval"]["crops"] == 3
    assert {"git", "versions"} <= set(res["provenance"]) and (tmp_path / "esc50.png").stat().st_size > 1000
    card = res["protocol_card"]
    assert list(res)[0] == "protocol_card" and card["task"] == "esc50" and card["protocol"] == "linear"
    assert "linear SVM (C=1.0)" in card["classifier"] and card["averaged_over"] == ["fold1", "fold2", "fold3"]
    assert "3 uniformly spaced" in card["clips_per_item"] and "averaged over the windows" in card["aggregation"]
    assert card["pretraining"]["encoder"] == "random-init" and card["pretraining"]["data_fingerprint"] is None
    assert card["warnings"] == [] and "resampled with librosa" in card["notes"][0]
    assert card["data_fingerprint"] == res["data"]["fingerprint"]["digest"] and res["data"]["fingerprint"]["rows"] == 36


def test_protocol_card_warns_where_evaluation_and_pretraining_differ():
    from cmacc.config import load_config
    from cmacc.evaluation import card
    from cmacc.evaluation.encoders import Encoders
    fp = {"kind": "manifest", "digest": "ab" * 32, "rows": 240000, "clip_seconds": 1.6}
    enc = Encoders(None, None, {}, "run:r (step 9)", {"method": "cmacc", "step": 9, "data_fingerprint": fp,
                                                      "audio": {"sample_rate": 16000},
                                                      "config": {"data": {"frames": 16, "fps": 10.0, "size": 224}}})
    cfg = load_config(overrides=["audio.sample_rate=22050"])
    c = card.card("esc50", "linear", cfg, enc, {"preprocessing": {"mel": {"sample_rate": 16000}}, "folds": []})
    assert c["pretraining"]["data_fingerprint"] == fp["digest"] and c["pretraining"]["sample_rate"] == 16000
    assert any("audio.sample_rate=22050 was not used" in w and "librosa" in w for w in c["warnings"])
    assert any("audio window differs: evaluation 2 s, pretraining clips 1.6 s" in w for w in c["warnings"])
    v = card.card("ucf101", "finetune", load_config(), enc, {"folds": [{"name": "split1"}], "clip_mean": 0.5})
    assert v["warnings"] == ["clip settings differ: evaluation 32 frames at 10 fps, 224 px; pretraining 16 frames "
                             "at 10 fps, 224 px (the protocol's eval.frames / eval.fps / eval.size were used)"]
    assert "video@1" in v["aggregation"] and "abababababababab" in card.text(v)
    c = card.card("esc50", "linear", load_config(), enc, {"preprocessing": {"mel": {"sample_rate": 22050}}})
    assert "evaluation features at 22050 Hz, the encoder was pretrained at 16000 Hz" in c["warnings"][0]


def test_finetune_and_baseline_protocols(esc, tmp_path, monkeypatch):
    """Fine-tuning is scored once per fold, after its last epoch: no test-set epoch selection."""
    calls, trained = [], []
    real_train, real_predict = finetune.train_epochs, finetune.predict
    monkeypatch.setattr(finetune, "train_epochs", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    monkeypatch.setattr(finetune, "predict", lambda *a, **k: calls.append(len(trained)) or real_predict(*a, **k))
    assert _eval(esc, tmp_path / "ft", "--protocol", "finetune", "--cv", "2") == 0
    assert calls == [1, 2]  # fold k predicted once, after its training finished
    res = json.loads((tmp_path / "ft" / "esc50.json").read_text())
    assert list(res["stages"]) == ["finetuned"] and len(res["folds"]) == 2 and "--cv 2" in res["how"]
    assert all(len(f["train_loss"]) == 2 for f in res["folds"])  # eval.epochs=2: the last one is reported
    assert _eval(esc, tmp_path / "b", "--protocol", "baseline") == 0
    res = json.loads((tmp_path / "b" / "esc50.json").read_text())
    assert res["encoder"].startswith("log-mel/MFCC") and res["mean"] > 0.8


def test_export_round_trip_gives_equal_outputs(tmp_path):
    from runs import TINY
    pretrain(load_config(overrides=TINY + ["probe.enabled=false", "steps=2"]), tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "enc.pt")]) == 0
    f_v, f_a = load_encoders(tmp_path / "enc.pt")
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert set(torch.load(tmp_path / "enc.pt", weights_only=True)) >= {"arch", "f_v", "f_a"}
    for k, v in f_a.state_dict().items():
        torch.testing.assert_close(v, state[f"f_a.{k}"], rtol=0, atol=0)
    from cmacc.evaluation.encoders import from_run
    run = from_run(tmp_path / "run")
    run.f_v.eval(), run.f_a.eval()
    x_v, x_a = torch.randn(2, 3, 4, 16, 16), torch.randn(2, 80, 8)
    with torch.no_grad():
        torch.testing.assert_close(f_v(x_v), run.f_v(x_v), rtol=0, atol=0)
        torch.testing.assert_close(f_a(x_a), run.f_a(x_a), rtol=0, atol=0)


# ---- bad input ----
def test_bad_input_is_named(esc, tmp_path, capsys):
    assert _eval(tmp_path / "nothing", tmp_path / "o") == 2
    assert "no ESC-50 csv" in capsys.readouterr().err
    bad = make_esc(tmp_path / "nosrc", folds=2, per_fold=1, columns=["filename", "fold", "category"])
    assert _eval(bad, tmp_path / "o") == 2
    assert "missing ['src_file']" in capsys.readouterr().err
    assert _eval(esc, tmp_path / "o", "--encoders", str(tmp_path / "none.pt")) == 2
    assert "none.pt does not exist" in capsys.readouterr().err
    assert _eval(esc, tmp_path / "o", "--protocol", "nope") == 2
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "e.pt")]) == 2
    assert "not a cmacc run folder" in capsys.readouterr().err


def test_an_export_of_another_architecture_is_refused(tmp_path, capsys):
    from cmacc.models import build_encoder
    from cmacc.models.io import save_encoders
    arch = {"video": "tiny", "audio": "tiny", "d": 128, "head": "linear", "with_fc": True, "mel_bands": 80}
    save_encoders(tmp_path / "e.pt", build_encoder("video", "tiny"), build_encoder("audio", "r10"), arch, {})
    with pytest.raises(Exception, match=r"e.pt \(audio encoder tiny\): weights do not fit"):
        load_encoders(tmp_path / "e.pt")


def test_unreadable_and_missing_clips_are_skipped_and_listed(tmp_path, capsys):
    extra = [{"filename": "1-999-A-0.wav", "fold": 1, "category": "tone_low", "src_file": 999},
             {"filename": "2-998-A-0.wav", "fold": 2, "category": "tone_low", "src_file": 998}]
    root = make_esc(tmp_path / "esc", folds=2, per_fold=1, rows_extra=extra)
    (root / "audio" / "1-999-A-0.wav").write_bytes(b"RIFF not really a wav")
    assert _eval(root, tmp_path / "o", "--protocol", "baseline") == 0
    res = json.loads((tmp_path / "o" / "esc50.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in res["data"]["skipped"]}
    assert reasons["2-998-A-0.wav"] == "missing" and reasons["1-999-A-0.wav"].startswith("unreadable audio")
    assert res["data"]["clips"] == 12
    assert _eval(root, tmp_path / "o", "--protocol", "baseline", sets=["data.on_corrupt=error"]) == 2
    assert "1-999-A-0.wav: unreadable audio" in capsys.readouterr().err


@pytest.mark.skipif(not (shared_dir() / "data" / "esc10" / "esc50.csv").is_file(),
                    reason="../shared/data/esc10 is absent")
def test_shared_esc10_baseline_runs_with_grouped_cv(tmp_path):
    assert _eval(shared_dir() / "data" / "esc10", tmp_path, "--protocol", "baseline") == 0
    res = json.loads((tmp_path / "esc50.json").read_text())
    assert len(res["folds"]) == 5 and "1 fold(s)" in res["how"] and len(res["per_class"]) == 10
    assert res["mean"] > 0.3  # chance is 0.1
