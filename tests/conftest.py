import os
from pathlib import Path

import pytest
import torch

# Triton kernels run on the GPU when there is one, else through Triton's interpreter, which
# must be switched on before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """../shared beside the repository, or $CMACC_SHARED."""
    return Path(os.environ.get("CMACC_SHARED", ROOT.parent / "shared"))


def unit_rows(n: int, d: int, *, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).to(dtype)


def clustered_rows(n_clusters: int, per: int, d: int, spread: float, seed: int) -> torch.Tensor:
    """Unit rows in tight clusters (where the samplers' exact bounds fire)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_clusters, d, generator=g), dim=1)
    x = centres.repeat_interleave(per, 0) + spread * torch.randn(n_clusters * per, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def poison(monkeypatch):
    """Kernel outputs start as NaN / -7, so an element a kernel does not write fails the test."""
    from cmacc.kernels import _common
    monkeypatch.setattr(_common, "POISON", True)


def media_dir() -> Path | None:
    """Real media for decoder tests: $CMACC_MEDIA_DIR or ../shared/media; None when absent."""
    d = Path(os.environ.get("CMACC_MEDIA_DIR", shared_dir() / "media"))
    return d if d.is_dir() else None


def has_dali() -> bool:
    from cmacc.data.real import dali_available
    return dali_available()


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    """Generated test media: {name: path}. Flash and click both at 1.5 s in the 'sync' files."""
    from cmacc.data.media import truncate, write_video
    d = tmp_path_factory.mktemp("media")
    m = {
        "vp9": write_video(d / "vp9", "vp9", seconds=4.0, fps=25, flash_at=1.5, click_at=1.5),
        "h264": write_video(d / "h264", "h264", seconds=4.0, fps=25, flash_at=1.5, click_at=1.5),
        "mjpeg": write_video(d / "mjpeg", "mjpeg", seconds=3.0, fps=25),
        "mpeg4": write_video(d / "mpeg4", "mpeg4", seconds=3.0, fps=25),
        "noaudio": write_video(d / "noaudio", "h264", seconds=3.0, fps=25, audio=False),
        "short": write_video(d / "short", "vp9", seconds=0.8, fps=25),
        "vfr": _write_vfr(d / "vfr.mp4"),
    }
    m["truncated"] = truncate(m["h264"], 0.4, d / "truncated.mp4")
    m["empty"] = d / "empty.webm"
    m["empty"].write_bytes(b"")
    return m


def _write_vfr(path: Path) -> Path:
    """H.264 + AAC whose frame intervals alternate 40 ms / 80 ms (variable frame rate)."""
    from fractions import Fraction

    import av
    import numpy as np

    from cmacc.data.media import frame_image
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 96, 64, "yuv420p"
        vs.codec_context.time_base = Fraction(1, 1000)
        vs.options = {"preset": "ultrafast"}
        a = c.add_stream("aac", rate=48000)
        a.layout = "mono"
        t = 0
        for i in range(60):
            fr = av.VideoFrame.from_ndarray(frame_image(i, 96, 64), format="rgb24")
            fr.pts, fr.time_base = t, Fraction(1, 1000)
            t += 40 if i % 2 == 0 else 80
            for p in vs.encode(fr):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        n = int(t / 1000 * 48000)
        y = (0.05 * np.sin(np.arange(n) * 2 * np.pi * 440 / 48000)).astype(np.float32)
        for s0 in range(0, n, 1024):
            af = av.AudioFrame.from_ndarray(y[None, s0:s0 + 1024], format="fltp", layout="mono")
            af.sample_rate, af.pts, af.time_base = 48000, s0, Fraction(1, 48000)
            for p in a.encode(af):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    return path


# Tables that tests want shown at the end of the run (the kernels' compiled resources).
SUMMARY_TABLES: list[tuple[str, str]] = []


def pytest_terminal_summary(terminalreporter):
    for title, text in SUMMARY_TABLES:
        terminalreporter.section(title)
        terminalreporter.write_line(text)
