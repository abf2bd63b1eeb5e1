"""`cmacc embed`: rows equal `cmacc eval`'s features for the same clips, bad files are skipped and
listed, and an interrupted run resumes to the same bytes."""
import hashlib
import json

import numpy as np
import pytest
import soundfile
import torch

from cmacc.cli import main
from cmacc.config import load_config
from cmacc.evaluation import embed
from conftest import shared_dir

SETS = ["--set", "run.threads=1", "--set", "eval.frames=4", "--set", "eval.size=32", "--set", "run.progress=false"]


@pytest.fixture()
def folder(media, tmp_path):
    """Two good videos (VP9, H.264), one without audio, one too short, one empty, one truncated,
    and a wav: links to the generated media."""
    d = tmp_path / "in"
    (d / "cats").mkdir(parents=True)
    for name, key in (("cats/a.webm", "vp9"), ("b.mp4", "h264"), ("silent.mp4", "noaudio"), ("short.webm", "short"),
                      ("empty.webm", "empty"), ("cut.mp4", "truncated")):
        (d / name).symlink_to(media[key])
    t = np.arange(3 * 16000) / 16000
    soundfile.write(d / "tone.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 16000)
    return d


def _digests(out):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir()) if p.is_file()}


def _embed(folder, out, *extra):
    return main(["embed", "--random-init", "--data", str(folder), "--out", str(out), "--clips", "3", *SETS, *extra])


def test_rows_are_the_features_cmacc_eval_reads(folder, tmp_path):
    """Video rows == features.crop_features over cmacc eval's own dataset of the same files and clips."""
    from cmacc.data.manifest import Manifest, Row
    from cmacc.data.scan import scan_paths
    from cmacc.evaluation import encoders, features
    from cmacc.evaluation.video import eval_dataset
    assert _embed(folder, tmp_path / "o", "--tower", "video") == 0
    rows = np.load(tmp_path / "o" / "video.npy")
    index = (tmp_path / "o" / "index.csv").read_text().splitlines()
    assert index[0] == "path,clip,start_s,end_s,label" and rows.dtype == np.float32
    used = list(dict.fromkeys(line.split(",")[0] for line in index[1:]))
    cfg = load_config(overrides=["run.threads=1", "eval.frames=4", "eval.size=32", "eval.crops=3"])
    enc = encoders.random_init(cfg)
    m = Manifest([Row(folder / p) for p in used])
    records = {r.path: r for r in scan_paths([str(r.path) for r in m.rows], clip_seconds=0.4)}
    ds = eval_dataset(m, records, cfg, torch.device("cpu"))
    want = features.crop_features(enc.f_v, ds, "video", np.arange(len(ds)), 3, train=False,
                                  device=torch.device("cpu"), progress=False)["layer4"]
    assert rows.shape == (len(used) * 3, want.shape[2])
    assert np.array_equal(rows, want.reshape(-1, want.shape[2]))


def test_bad_files_are_skipped_and_listed_and_rerun_recomputes_nothing(folder, tmp_path, monkeypatch):
    out = tmp_path / "o"
    assert _embed(folder, out, "--set", "eval.frames=10") == 0  # clips of 1 s: short.webm (0.8 s) is too short
    info = json.loads((out / "embed.json").read_text())
    skipped = {s["path"].rsplit("/", 1)[1]: s["reason"] for s in info["skipped"]}
    assert set(skipped) == {"silent.mp4", "short.webm", "empty.webm", "cut.mp4", "tone.wav"}
    assert skipped["silent.mp4"] == "no-audio" and skipped["empty.webm"] == "zero-length"
    assert "too-short" in skipped["short.webm"] and "--tower audio" in skipped["tone.wav"]
    assert info["files"] == 2 and info["rows"] == 6 and info["towers"] == ["video", "audio"]
    assert np.load(out / "video.npy").shape[0] == np.load(out / "audio.npy").shape[0] == 6
    assert info["data_fingerprint"]["rows"] == 7 and len(info["data_fingerprint"]["digest"]) == 64
    assert info["sample_rate"] == 16000 and info["encoder"]["pretraining_data_fingerprint"] is None
    before = _digests(out)
    monkeypatch.setattr(embed.Embedder, "shard", lambda *a: pytest.fail("recomputed"))
    assert _embed(folder, out, "--set", "eval.frames=10") == 0
    assert _digests(out) == before


def test_killed_half_way_resumes_to_the_same_bytes(folder, tmp_path, monkeypatch):
    assert _embed(folder, tmp_path / "whole", "--shard-files", "2") == 0
    real, calls = embed.Embedder.shard, []

    def dies(self, rows, records):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(self, rows, records)
    monkeypatch.setattr(embed.Embedder, "shard", dies)
    with pytest.raises(KeyboardInterrupt):
        _embed(folder, tmp_path / "cut", "--shard-files", "2")
    assert len(list((tmp_path / "cut" / "shards").iterdir())) == 2 and not (tmp_path / "cut" / "embed.json").exists()
    calls.clear()
    monkeypatch.setattr(embed.Embedder, "shard", lambda self, rows, records: (calls.append(1), real(self, rows, records))[1])
    assert _embed(folder, tmp_path / "cut", "--shard-files", "2") == 0
    assert len(calls) == 2  # shards 3 and 4 of 4; the first two were kept
    assert _digests(tmp_path / "cut") == _digests(tmp_path / "whole")


def test_audio_files_video_level_and_another_request_in_the_same_out(folder, tmp_path, capsys):
    out = tmp_path / "o"
    assert _embed(folder, out, "--tower", "audio", "--level", "video") == 0
    info = json.loads((out / "embed.json").read_text())
    names = [line.split(",")[0] for line in (out / "index.csv").read_text().splitlines()[1:]]
    assert "tone.wav" in names and "silent.mp4" not in names and not (out / "video.npy").exists()
    assert np.load(out / "audio.npy").shape[0] == len(names) == info["files"]
    assert all(line.split(",")[1] == "mean" for line in (out / "index.csv").read_text().splitlines()[1:])
    assert "cats/a.webm" in names and (out / "index.csv").read_text().count(",cats\n") == 1  # label from the folder
    (out / "embed.json").unlink()
    (out / "embed.partial.json").write_text("{}")
    capsys.readouterr()
    assert _embed(folder, out, "--tower", "video") == 2
    assert "holds embeddings of another request" in capsys.readouterr().err


def test_shared_media_embeds_every_usable_file(tmp_path):
    media = shared_dir() / "media"
    if not media.is_dir():
        pytest.skip("../shared/media is absent")
    out = tmp_path / "o"
    assert main(["embed", "--random-init", "--data", str(media), "--out", str(out), "--clips", "2", *SETS]) == 0
    info = json.loads((out / "embed.json").read_text())
    reasons = {s["path"].rsplit("/", 1)[1]: s["reason"] for s in info["skipped"]}
    assert reasons["empty.webm"] == "zero-length" and "corrupt" in reasons["corrupted.mp4"]
    assert info["files"] + len(info["skipped"]) == info["data_fingerprint"]["rows"]
