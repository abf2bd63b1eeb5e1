"""cmacc scan: every kind of file classified, with the decoder it should use."""
import json

import numpy as np
import pytest
import torch

from cmacc.cli import main
from cmacc.data.scan import scan_file
from conftest import media_dir


def test_generated_media_classified(media):
    r = {k: scan_file(p) for k, p in media.items()}
    for k in ("vp9", "h264", "mjpeg", "mpeg4"):
        assert r[k].usable and not r[k].problems, (k, r[k].problems, r[k].detail)
        assert r[k].audio_codec and r[k].sample_rate == 48000 and r[k].channels == 1
        assert abs(r[k].fps - 25) < 1e-6 and r[k].frames in (75, 100)
    assert (r["vp9"].video_codec, r["vp9"].backend_cpu, r["vp9"].backend_gpu) == ("vp9", "dali_cpu", "dali_gpu")
    assert (r["h264"].backend_cpu, r["h264"].backend_gpu) == ("pyav", "dali_gpu")
    assert r["mjpeg"].backend_cpu == "dali_cpu"
    assert (r["mpeg4"].backend_cpu, r["mpeg4"].backend_gpu) == ("pyav", "pyav")  # Xvid: PyAV
    assert r["noaudio"].problems == ["no-audio"] and not r["noaudio"].usable
    assert "corrupt" in r["truncated"].problems
    assert r["empty"].problems == ["zero-length"]
    assert r["short"].problems == ["too-short"]
    assert "vfr" in r["vfr"].warnings and r["vfr"].usable and r["vfr"].backend_gpu == "pyav"


def test_missing_file(tmp_path):
    assert scan_file(tmp_path / "nope.mp4").problems == ["missing"]


def test_cli_scan_exit_status_and_report(media, tmp_path, capsys):
    good = tmp_path / "good"
    good.mkdir()
    for k in ("vp9", "mjpeg"):
        (good / media[k].name).write_bytes(media[k].read_bytes())
    assert main(["scan", str(good), "--out", str(tmp_path / "r.json")]) == 0
    assert main(["scan", str(media["vp9"].parent), "--out", str(tmp_path / "all.csv")]) == 1
    out = capsys.readouterr().out
    assert "zero-length" in out and "too-short" in out and "no-audio" in out
    assert len(json.loads((tmp_path / "r.json").read_text())) == 2
    assert (tmp_path / "all.csv").read_text().startswith("path,usable,problems")


EXPECTED = {  # ../shared/media/README.md
    "bigbuckbunny.mp4": ("usable", "h264"), "big_buck_bunny_30s.webm": ("usable", "vp8"),
    "chaplin.mp4": ("usable", "h264"), "test.avi": ("usable", "mpeg4"), "pancake.mkv": ("usable", "h264"),
    "demo.mp4": ("no-audio", "h264"), "bikes.mp4": ("no-audio", "h264"),
    "corrupted.mp4": ("corrupt", "h264"), "empty.webm": ("zero-length", None),
}


def test_shared_media_classified():
    d = media_dir()
    if d is None:
        pytest.skip("../shared/media (or $CMACC_MEDIA_DIR) is absent")
    for name, (status, codec) in EXPECTED.items():
        r = scan_file(d / name)
        assert r.video_codec == codec, name
        if status == "usable":
            assert r.usable, (name, r.problems, r.detail)
        else:
            assert status in r.problems and not r.usable, (name, r.problems)
    assert scan_file(d / "big_buck_bunny_30s.webm").backend_cpu == "dali_cpu"
    assert scan_file(d / "test.avi").backend_gpu == "pyav"


# ---- content and stream checks (issue: silent and blank media passed as usable) ----
@pytest.fixture(scope="module")
def junk(tmp_path_factory):
    from cmacc.data.media import write_video
    d = tmp_path_factory.mktemp("junk")
    return {
        # VP9 with an alpha channel, all-black picture, all-zero audio
        "alpha": write_video(d / "alpha", "vp9", seconds=2.0, video="black", sound="silence", pix_fmt="yuva420p"),
        # WebM written live (no duration in the header), nearly black picture, silent audio
        "live": write_video(d / "live", "vp9", seconds=2.0, video="dark", sound="silence",
                            container_options={"live": "1"}),
        "multi_mp4": write_video(d / "multi", "h264", seconds=2.0, size=(480, 270), sample_rate=16000,
                                 extra_video=[(320, 180)], extra_audio=[8000]),
        "multi_webm": write_video(d / "multi", "vp9", seconds=2.0, size=(480, 270),
                                  extra_video=[(320, 180)], extra_audio=[48000]),
        "good": write_video(d / "good", "vp9", seconds=1.2),
    }


def test_blank_video_and_silent_audio_are_flagged(junk):
    for name in ("alpha", "live"):
        r = scan_file(junk[name])
        assert r.usable and set(r.warnings) >= {"blank-video", "silent-audio"}, (name, r.warnings)
        assert r.audio_peak_dbfs <= -60 and r.luma_p99 <= 24 and "sampled frames are" in r.detail
    assert scan_file(junk["live"]).duration == pytest.approx(2.0, abs=0.1)  # from packet times
    good = scan_file(junk["good"])
    assert not set(good.warnings) & {"blank-video", "silent-audio"}
    assert good.audio_peak_dbfs > -40 and good.luma_std > 20  # the 0.05-amplitude tone is -26 dBFS


def test_sample_decode_flags_them_too(junk):
    r = scan_file(junk["alpha"], decode="sample")
    assert {"blank-video", "silent-audio"} <= set(r.warnings)


@pytest.mark.parametrize("name,audio_stream,rate,tone", [
    ("multi_mp4", 1, 16000, 440),  # 16 kHz beats 8 kHz although MP4 marks the first track default
    ("multi_webm", 0, 48000, 880),  # two equal 48 kHz tracks (Opus): a tie goes to the first
])
def test_best_streams_are_chosen_recorded_and_decoded(junk, name, audio_stream, rate, tone):
    from cmacc.data.audio import load_audio
    from cmacc.data.video import decode_pyav
    r = scan_file(junk[name])
    assert (r.video_stream, r.width, r.height) == (1, 480, 270)
    assert (r.audio_stream, r.sample_rate) == (audio_stream, rate)
    assert r.backend_cpu == "pyav" and r.backend_gpu == "pyav"  # DALI reads the first stream only
    frames = decode_pyav(r.path, [0.2, 0.4], v0=r.start_time, fps_src=r.fps, n_frames=r.frames,
                         stream=r.video_stream)
    assert frames.shape == (2, 270, 480, 3)
    y, _ = load_audio(r.path, 16000, stream=r.audio_stream)
    spectrum = np.abs(np.fft.rfft(y[:16000]))
    assert abs(np.argmax(spectrum) - tone) <= 2  # the stream read is the one chosen (extra tracks sound 880 Hz)


def test_cli_scan_judges_by_the_config_and_lists_blank_files(junk, tmp_path, capsys):
    folder = tmp_path / "f"
    folder.mkdir()
    for k in ("alpha", "live", "good"):
        (folder / junk[k].name).write_bytes(junk[k].read_bytes())
    assert main(["scan", str(folder)]) == 1  # the blank ones would be left out of pretraining
    out = capsys.readouterr().out
    assert "blank or silent (left out of pretraining unless data.on_blank=keep):" in out
    assert "alpha.webm: blank-video, silent-audio" in out and "live.webm" in out
    assert "shorter than one clip of 0.8 s" in out  # the default config: 8 frames at 10 fps
    assert main(["scan", str(folder), "--set", "data.on_blank=keep"]) == 0
    capsys.readouterr()
    assert main(["scan", str(folder), "--set", "data.on_blank=keep", "--set", "data.frames=16"]) == 1
    out = capsys.readouterr().out
    assert "good.webm: too-short" in out and "one clip of 1.6 s (the config's" in out
    assert main(["scan", str(folder), "--set", "data.frames=16", "--clip-seconds", "1"]) == 2
    assert "disagrees" in capsys.readouterr().err


def test_pretraining_policy_for_blank_files(junk, tmp_path):
    from cmacc.data.manifest import Manifest, Row
    from cmacc.data.real import BadInput, ManifestAV
    from cmacc.data.scan import scan_paths
    m = Manifest([Row(junk[k]) for k in ("alpha", "good", "multi_mp4")])
    scan = {r.path: r for r in scan_paths([r.path for r in m.rows], clip_seconds=0.8)}
    kw = dict(frames=8, fps=10, crop=32, cache_dir=tmp_path / "mel")
    ds = ManifestAV(m, scan, **kw)
    assert len(ds) == 2 and ds.excluded == [{"path": str(junk["alpha"]), "reason": "blank-video, silent-audio",
                                             "detail": scan[str(junk["alpha"])].detail}]
    assert len(ManifestAV(m, scan, on_blank="keep", **kw)) == 3
    with pytest.raises(BadInput, match="alpha.webm: blank-video, silent-audio .* data.on_blank=error"):
        ManifestAV(m, scan, on_blank="error", **kw)
    from cmacc.data.request import ClipRequest
    clip = ds[ClipRequest(1)]  # the multi-stream file, decoded from its 480x270 stream
    assert clip["video"].shape == (3, 8, 32, 32) and torch.isfinite(clip["audio"]).all()
