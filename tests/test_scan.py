"""cmacc scan: every kind of file classified, with the decoder it should use."""
import json

import pytest

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
