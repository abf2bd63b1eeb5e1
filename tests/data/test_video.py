"""Video decoding: the frames asked for, from every backend; the shared augmentation."""
import numpy as np
import pytest
import torch

from cmacc.data.media import frame_number
from cmacc.data.scan import scan_file
from cmacc.data.video import DaliDecoder, augment, decode_pyav, frame_indices, plan_clip
from conftest import has_dali


def _plan(rec, seed, frames=16, fps=10.0):
    return plan_clip(begin=rec.start_time, end=rec.start_time + rec.duration, frames=frames, fps=fps,
                     aspect=rec.width / rec.height, rng=np.random.default_rng(seed))


FLASH = int(round(1.5 * 25))  # the white flash frame, as cmacc.data.media.write_video places it


def _expected(idx):
    return [255 if i == FLASH else int(i) for i in idx]  # the flash frame reads as 255


@pytest.mark.parametrize("name", ["vp9", "h264", "mjpeg", "mpeg4"])
def test_pyav_decodes_exactly_the_planned_frames(media, name):
    rec = scan_file(media[name])
    flash = name in ("vp9", "h264")
    for seed in range(5):
        plan = _plan(rec, seed)
        frames = decode_pyav(media[name], plan.times, v0=rec.start_time, fps_src=rec.fps, n_frames=rec.frames,
                             by_count=rec.container == "avi")
        assert frames.shape == (16, 64, 96, 3) and frames.dtype == np.uint8
        idx = frame_indices(plan.times, rec.start_time, rec.fps, rec.frames)
        assert np.all(np.diff(idx) >= 2)  # 10 fps from 25 fps
        got = [frame_number(f) for f in frames]
        assert got == (_expected(idx) if flash else idx.tolist())


def test_pyav_vfr_takes_the_last_frame_at_or_before_each_time(media):
    rec = scan_file(media["vfr"])
    times = np.array([0.0, 0.05, 0.12, 0.13, 1.0, 3.5])  # frame k starts at 60 k ms (alternating 40/80)
    starts = np.cumsum([0] + [40 if i % 2 == 0 else 80 for i in range(59)]) / 1000
    frames = decode_pyav(media["vfr"], times, v0=rec.start_time, fps_src=rec.fps, n_frames=rec.frames, vfr=True)
    want = [int(np.searchsorted(starts, t + 1e-9, side="right") - 1) for t in times]
    assert [frame_number(f) for f in frames] == want


@pytest.mark.skipif(not has_dali(), reason="nvidia-dali is not installed")
@pytest.mark.parametrize("name", ["vp9", "mjpeg"])
def test_dali_cpu_and_pyav_give_the_same_frames(media, name):
    rec = scan_file(media[name])
    dec = DaliDecoder("cpu", max_batch=4)
    plans = [_plan(rec, s) for s in range(3)]
    idx = [frame_indices(p.times, rec.start_time, rec.fps, rec.frames) for p in plans]
    outs = dec.decode([np.fromfile(media[name], np.uint8)] * 3, idx, [str(media[name])] * 3)
    for p, i, o in zip(plans, idx, outs):
        ref = decode_pyav(media[name], p.times, v0=rec.start_time, fps_src=rec.fps, n_frames=rec.frames,
                          by_count=rec.container == "avi")
        o = o.numpy()
        assert o.shape == ref.shape
        assert [frame_number(f) for f in o] == [frame_number(f) for f in ref]
        diff = np.abs(o.astype(np.int16) - ref.astype(np.int16))
        assert diff.mean() < 4.0, diff.mean()  # YUV->RGB conversion differs slightly between decoders


@pytest.mark.skipif(not has_dali(), reason="nvidia-dali is not installed")
def test_dali_failure_is_reported_per_file_and_the_pipeline_recovers(media):
    dec = DaliDecoder("cpu", max_batch=4)
    good, bad = np.fromfile(media["vp9"], np.uint8), np.fromfile(media["h264"], np.uint8)  # H.264: not on CPU
    idx = np.arange(0, 16, dtype=np.int32)
    outs = dec.decode([good, bad, good], [idx] * 3, ["good", "h264", "good2"])
    assert isinstance(outs[1], Exception) and "h264" in str(outs[1])
    assert outs[0].shape[0] == outs[2].shape[0] == 16


def test_augment_shapes_and_eval_centre_crop():
    frames = torch.randint(0, 256, (16, 60, 80, 3), dtype=torch.uint8)
    plan = plan_clip(begin=0, end=3, frames=16, fps=10, aspect=80 / 60, rng=None)
    assert plan.crop == pytest.approx((0.0, 0.125, 1.0, 0.75))  # the centre square
    x = augment(frames, plan, 32)
    assert x.shape == (3, 16, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
    white = augment(torch.full((2, 8, 8, 3), 255, dtype=torch.uint8), plan_clip(begin=0, end=1, frames=2, fps=10,
                                                                                 aspect=1, rng=None), 8)
    torch.testing.assert_close(white[:, 0, 0, 0], (1 - torch.tensor([0.43216, 0.394666, 0.37645])) /
                               torch.tensor([0.22803, 0.22145, 0.216989]))


def test_eval_clips_are_uniformly_spaced():
    ts = [plan_clip(begin=0, end=11.6, frames=16, fps=10, aspect=1, clip_index=k, num_clips=10).t0 for k in range(10)]
    assert ts == pytest.approx([0.5 + k for k in range(10)])
