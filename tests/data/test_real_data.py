"""Real-video datasets: clips, audio/video alignment, the bad-input policy, training on them."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cmacc.data.audio import MelCache, MelSpec, window
from cmacc.data.manifest import Manifest, Row, from_esc50, from_folder
from cmacc.data.real import AudioClips, BadInput, Finisher, ManifestAV, collate
from cmacc.data.request import ClipRequest
from cmacc.data.scan import scan_paths
from conftest import has_dali, media_dir, shared_dir


def _dataset(media, names, tmp_path, **kw):
    m = Manifest([Row(Path(media[n])) for n in names])
    scan = {r.path: r for r in scan_paths([r.path for r in m.rows])}
    return ManifestAV(m, scan, frames=16, fps=10, crop=32, cache_dir=tmp_path / "mel", **kw)


def _batch(ds, reqs):
    return Finisher(ds)(collate([ds[r] for r in reqs]))


def test_clip_shapes_dtypes_ranges(media, tmp_path):
    ds = _dataset(media, ["vp9", "h264", "mjpeg", "mpeg4"], tmp_path)
    b = _batch(ds, [ClipRequest(i, 0, "train") for i in range(len(ds))])
    assert b["video"].shape == (4, 3, 16, 32, 32) and b["video"].dtype == torch.float32
    assert b["audio"].shape == (4, 80, 160) and b["audio"].dtype == torch.float32  # 1.6 s at 100 frames/s
    assert torch.isfinite(b["video"]).all() and torch.isfinite(b["audio"]).all()
    assert -2.0 <= float(b["video"].min()) and float(b["video"].max()) <= 2.9  # (0..1 - mean) / std
    assert float(b["audio"].min()) >= MelSpec().floor_db and float(b["audio"].max()) < 60
    assert b["skipped"] == [] and b["label"].tolist() == [-1] * 4


@pytest.mark.parametrize("name", ["vp9", "h264"])
def test_flash_and_click_stay_aligned(media, tmp_path, name):
    """The white flash and the audio click at 1.5 s land at the same place in every clip that holds them."""
    ds = _dataset(media, [name], tmp_path)
    seen = 0
    reqs = [ClipRequest(0, tag="eval", clip=k) for k in range(10)] + [ClipRequest(0, e, "train") for e in range(12)]
    for req in reqs:
        b = _batch(ds, [req])
        video, audio = b["video"][0], b["audio"][0]
        brightness = video.mean(dim=(0, 2, 3))  # per frame
        if brightness.max() < 2.0:  # the flash is not in this clip
            continue
        seen += 1
        t_flash = int(brightness.argmax()) / 10.0  # seconds into the clip
        energy = audio[40:].mean(0)  # upper mel bands: the broadband click, not the 440 Hz tone
        t_click = int(energy.argmax()) / 100.0
        assert abs(t_flash - t_click) <= 0.1 + 0.02, (req, t_flash, t_click)
    assert seen >= 3


def test_missing_audio_policy(media, tmp_path):
    ds = _dataset(media, ["vp9", "noaudio"], tmp_path, on_missing_audio="skip")
    assert len(ds) == 1 and ds.excluded[0]["reason"] == "no-audio"
    ds = _dataset(media, ["vp9", "noaudio"], tmp_path, on_missing_audio="silence")
    assert len(ds) == 2
    x = ds[ClipRequest(1)]
    assert torch.all(x["audio"] == MelSpec().floor_db)
    with pytest.raises(BadInput, match="noaudio.mp4: no audio stream"):
        _dataset(media, ["vp9", "noaudio"], tmp_path, on_missing_audio="error")


def test_corrupt_policy_at_start(media, tmp_path):
    ds = _dataset(media, ["vp9", "truncated", "empty", "short"], tmp_path)
    reasons = sorted(e["reason"] for e in ds.excluded)
    assert len(ds) == 1 and reasons == ["corrupt", "too-short", "zero-length"]
    with pytest.raises(BadInput, match="truncated.mp4: corrupt"):
        _dataset(media, ["vp9", "truncated"], tmp_path, on_corrupt="error")


@pytest.mark.parametrize("name", ["h264"] + (["vp9"] if has_dali() else []))
def test_file_failing_after_the_scan_is_replaced_and_reported(media, tmp_path, name):
    """A file the scan found good breaks later: the clip is replaced, the skip recorded (never silent)."""
    d = tmp_path / "copy"
    d.mkdir()
    good, bad = d / media["mjpeg"].name, d / media[name].name
    good.write_bytes(media["mjpeg"].read_bytes())
    bad.write_bytes(media[name].read_bytes())
    m = Manifest([Row(bad), Row(good)])
    scan = {r.path: r for r in scan_paths([bad, good])}
    bad.write_bytes(bad.read_bytes()[:2000])  # damaged after scanning
    for policy in ("skip", "error"):
        ds = ManifestAV(m, scan, frames=16, fps=10, crop=32, cache_dir=tmp_path / "mel", on_corrupt=policy)
        if policy == "error":
            with pytest.raises(BadInput, match=f"{bad.name}.*on_corrupt=error"):
                _batch(ds, [ClipRequest(0), ClipRequest(1)])
            continue
        b = _batch(ds, [ClipRequest(0), ClipRequest(1)])
        assert b["video"].shape[0] == 2 and b["index"].tolist() == [1, 1]  # replaced by the next usable clip
        assert len(b["skipped"]) == 1 and b["skipped"][0][0] == str(bad)


def test_mel_cache_reuses_and_windows_pad(media, tmp_path):
    spec = MelSpec()
    cache = MelCache(tmp_path / "c", spec)
    mel, origin = cache.get(media["vp9"])
    files = list((tmp_path / "c").glob("*.npz"))
    assert len(files) == 1 and mel.shape[0] == 80 and abs(mel.shape[1] - 401) <= 2 and origin == pytest.approx(0, abs=0.03)
    again, _ = cache.get(media["vp9"])
    np.testing.assert_array_equal(mel, again)
    w = window(mel, 3.5, 1.0, spec)  # runs 0.5 s past the 4 s file
    assert w.shape == (80, 100) and np.all(w[:, -40:] == spec.floor_db)
    assert spec.to_dict()["norm"] == "slaney" and "librosa" in spec.to_dict()


def test_esc_audio_clips():
    d = shared_dir() / "data" / "esc10"
    if not d.is_dir():
        pytest.skip("../shared/data/esc10 is absent")
    m, _ = from_esc50(d / "esc50.csv", d / "audio")
    ds = AudioClips(Manifest(m.rows[:4], "esc10"), seconds=5.0, classes=m.classes)
    x = ds[0]
    assert x["audio"].shape == (80, 500) and 0 <= int(x["label"]) < 10
    short = AudioClips(Manifest(m.rows[:1]), seconds=1.0, num_clips=5)
    clips = [short[ClipRequest(0, tag="eval", clip=k)]["audio"] for k in range(5)]
    assert not torch.equal(clips[0], clips[4])


def _media_run(tmp_path, *extra):
    """A 3-step pretraining on a manifest of ../shared/media (skipped when absent); its summary."""
    d = media_dir()
    if d is None:
        pytest.skip("../shared/media (or $CMACC_MEDIA_DIR) is absent")
    from cmacc.config import load_config
    from cmacc.engine.train import pretrain
    from_folder(d, label_from_parent=False).write(tmp_path / "media.csv")
    cfg = load_config(overrides=[
        "data.name=manifest", f"data.manifest={tmp_path / 'media.csv'}", "steps=3", "warmup_steps=1",
        "data.frames=16", "data.size=64", "run.progress=false", "run.device=cpu", f"data.cache_dir={tmp_path / 'mel'}",
        *extra])
    return pretrain(cfg, tmp_path / "run")


def test_pretrain_on_shared_media_reports_left_out_files(tmp_path):
    s = _media_run(tmp_path, "method=xmoco", "M=4", "K=4")
    left = {Path(e["path"]).name: e["reason"] for e in s["data"]["left_out"]}
    assert left == {"bikes.mp4": "no-audio", "demo.mp4": "no-audio", "corrupted.mp4": "corrupt",
                    "empty.webm": "zero-length"}
    backends = s["data"]["backends"]
    assert backends.get("pyav") == 4 and backends.get("dali_cpu", 0) == (1 if has_dali() else 0)
    assert s["probe"] == {"skipped": "no labelled probe_train / probe_test splits in the manifest"}
    assert json.loads((tmp_path / "run" / "scan.json").read_text())
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def test_avid_pretrains_on_a_manifest_of_real_videos(tmp_path):
    """AVID's banks hold one row per usable clip of a manifest (left-out files have none)."""
    import torch
    s = _media_run(tmp_path, "method=avid_cross", "M=2", "avid.num_negatives=2")
    model = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)["model"]
    rows = len((tmp_path / "media.csv").read_text().splitlines()) - 1  # less the header
    usable = rows - len(s["data"]["left_out"])
    assert model["bank_v"].shape[0] == model["bank_a"].shape[0] == usable >= 4 and float(model["Z"]) > 0
    torch.testing.assert_close(model["bank_a"].norm(dim=1), torch.ones(model["bank_a"].shape[0]))
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3
