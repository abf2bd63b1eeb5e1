"""The built-in synthetic audio-visual dataset."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cmacc.evaluation import probe
from cmacc.data import ClipRequest, SyntheticAV
from cmacc.data.request import TAGS


def test_shapes_dtypes_and_determinism():
    ds = SyntheticAV(40, num_classes=8, frames=4, crop=16, audio_frames=8)
    x = ds[ClipRequest(3, 1, "train")]
    assert x["video"].shape == (3, 4, 16, 16) and x["video"].dtype == torch.float32
    assert x["audio"].shape == (80, 8) and x["audio"].dtype == torch.float32
    assert torch.isfinite(x["video"]).all() and torch.isfinite(x["audio"]).all()
    y = SyntheticAV(40, num_classes=8, frames=4, crop=16, audio_frames=8)[ClipRequest(3, 1, "train")]
    assert torch.equal(x["video"], y["video"]) and torch.equal(x["audio"], y["audio"])
    z = ds[ClipRequest(3, 2, "train")]  # another epoch: another augmentation of the same video
    assert not torch.equal(x["video"], z["video"])
    e1, e2 = ds[ClipRequest(3, 0, "eval")], ds[ClipRequest(3, 5, "eval")]
    assert torch.equal(e1["video"], e2["video"])  # eval clips are fixed
    with pytest.raises(IndexError, match="out of range"):
        ds[ClipRequest(40)]


def test_labels_balanced_and_splits_distinct():
    tr, te = SyntheticAV(64, num_classes=8), SyntheticAV(64, num_classes=8, split="probe_test")
    assert torch.equal(torch.bincount(tr.labels), torch.full((8,), 8))
    a, b = tr[ClipRequest(0, 0, "eval")], te[ClipRequest(0, 0, "eval")]
    assert not torch.equal(a["audio"], b["audio"])


def test_single_modality_requests_render_the_same_clip():
    ds = SyntheticAV(20)
    full = ds[ClipRequest(7, 3, "pool")]
    assert torch.equal(ds[ClipRequest(7, 3, "pool", "video")]["video"], full["video"])
    assert torch.equal(ds[ClipRequest(7, 3, "pool", "audio")]["audio"], full["audio"])
    assert "audio" not in ds[ClipRequest(7, 3, "pool", "video")]


def test_audio_and_video_windows_are_the_same_span():
    """The clip's audio is the source audio of the video window's frames (r mel frames each)."""
    ds = SyntheticAV(20, frames=8, audio_frames=32)
    inst = ds.instance(4)
    for epoch in range(5):
        req = ClipRequest(4, epoch, "train")
        rng = np.random.default_rng([ds.seed, 31, epoch, 4, TAGS["train"]])
        o = int(rng.integers(0, ds.src_T - ds.T + 1))  # the offset _view draws first
        clip = ds[req]
        audio = ds.render_audio(inst, o)
        shift = (clip["audio"] - torch.from_numpy(audio)).numpy()
        assert np.ptp(shift) < 1e-5  # equal up to the clip's gain
        others = [k for k in range(ds.src_T - ds.T + 1) if k != o]
        assert all(np.ptp(clip["audio"].numpy() - ds.render_audio(inst, k)) > 1e-2 for k in others)
        # the video of the same request shows frames o..o+T-1 (eval rendering of the same window)
        frames = torch.from_numpy(ds.render_video(inst, o)).permute(0, 3, 1, 2)
        assert frames.shape[0] == ds.T


def test_eval_clip_is_the_centred_window():
    ds = SyntheticAV(10, frames=8, crop=32, audio_frames=32)
    inst, o = ds.instance(2), (ds.src_T - ds.T) // 2
    clip = ds[ClipRequest(2, 0, "eval")]
    torch.testing.assert_close(clip["audio"], torch.from_numpy(ds.render_audio(inst, o)))
    v = torch.from_numpy(ds.render_video(inst, o)).permute(0, 3, 1, 2)
    v = F.interpolate(v, size=(32, 32), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    torch.testing.assert_close(clip["video"], ((v - 0.45) / 0.25).permute(1, 0, 2, 3))


def test_class_drives_the_audio():
    """Without nuisance, the class is linearly readable from the mean spectrum (the signal exists)."""
    def feats(split, n):
        ds = SyntheticAV(n, num_classes=32, nuisance=0.0, split=split)
        xs = [ds[ClipRequest(i, 0, "eval")] for i in range(n)]
        return np.stack([x["audio"].mean(1).numpy() for x in xs]), np.array([int(x["label"]) for x in xs])
    (xa, ya), (xb, yb) = feats("probe_train", 256), feats("probe_test", 128)
    assert probe.accuracy(xa, ya, xb, yb) > 80.0
