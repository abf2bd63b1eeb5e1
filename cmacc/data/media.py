"""Write small real media files with PyAV (for tests and ``cmacc bench data``).

Each video shows a moving gradient with the frame number encoded as a bar pattern, optionally a
full-white **flash** frame at ``flash_at`` seconds, and carries a quiet tone with an optional
loud **click** at ``click_at`` seconds -- so tests can check that a sampled clip keeps video and
audio aligned.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

CODECS = {  # name: (container extension, video codec, pixel format, audio codec)
    "vp9": (".webm", "libvpx-vp9", "yuv420p", "libopus"),
    "vp8": (".webm", "libvpx", "yuv420p", "libopus"),
    "h264": (".mp4", "libx264", "yuv420p", "aac"),
    "mjpeg": (".avi", "mjpeg", "yuvj420p", "pcm_s16le"),
    "mpeg4": (".avi", "mpeg4", "yuv420p", "mp3"),
}


def frame_image(i: int, width: int, height: int, flash: bool = False) -> np.ndarray:
    """RGB uint8 frame i: a horizontal gradient moving with i, and i in binary as 8 bars on top."""
    if flash:
        return np.full((height, width, 3), 255, np.uint8)
    x = (np.arange(width)[None, :] * 4 + i * 8) % 256
    y = np.arange(height)[:, None] * 2 % 256
    img = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)),
                    np.full((height, width), 96)], -1).astype(np.uint8)
    bar_w = width // 8
    for b in range(8):  # frame number, most significant bit first
        img[: height // 6, b * bar_w:(b + 1) * bar_w] = 255 if (i >> (7 - b)) & 1 else 0
    return img


def write_video(path: str | Path, codec: str = "vp9", seconds: float = 3.0, fps: int = 25,
                size: tuple[int, int] = (96, 64), audio: bool = True, sample_rate: int = 48000,
                flash_at: float | None = None, click_at: float | None = None) -> Path:
    """Write a test video; returns its path (the codec's container extension is enforced)."""
    import av

    ext, vcodec, pix, acodec = CODECS[codec]
    path = Path(path).with_suffix(ext)
    width, height = size
    n_frames = int(round(seconds * fps))
    flash_frame = None if flash_at is None else int(round(flash_at * fps))
    with av.open(str(path), "w") as c:
        vs = c.add_stream(vcodec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, pix
        if codec in ("h264",):
            vs.options = {"preset": "ultrafast", "tune": "zerolatency"}
        if codec in ("vp9", "vp8"):
            vs.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        a_s = None
        if audio:
            a_s = c.add_stream(acodec, rate=sample_rate)
            a_s.layout = "mono"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(frame_image(i, width, height, i == flash_frame), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for p in vs.encode(frame):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if a_s is not None:
            n = int(round(seconds * sample_rate))
            t = np.arange(n) / sample_rate
            y = 0.05 * np.sin(2 * np.pi * 440 * t)
            if click_at is not None:  # a 20 ms broadband burst
                k = int(round(click_at * sample_rate))
                burst = np.random.default_rng(0).uniform(-0.9, 0.9, int(0.02 * sample_rate))
                y[k:k + len(burst)] = burst[: max(0, n - k)]
            fmt = "s16" if acodec == "pcm_s16le" else "fltp"
            chunk = 1024
            for s0 in range(0, n, chunk):
                block = y[s0:s0 + chunk].astype(np.float32)[None]
                if fmt == "s16":
                    block = (block * 32767).astype(np.int16)
                af = av.AudioFrame.from_ndarray(block, format=fmt, layout="mono")
                af.sample_rate, af.pts, af.time_base = sample_rate, s0, Fraction(1, sample_rate)
                for p in a_s.encode(af):
                    c.mux(p)
            for p in a_s.encode():
                c.mux(p)
    return path


def truncate(path: str | Path, fraction: float = 0.5, out: str | Path | None = None) -> Path:
    """Copy the first ``fraction`` of a file's bytes (a download cut short)."""
    path = Path(path)
    out = Path(out) if out else path.with_name(f"{path.stem}_truncated{path.suffix}")
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def frame_number(img: np.ndarray) -> int:
    """Read back the frame number encoded by :func:`frame_image` (robust to compression)."""
    h, w = img.shape[:2]
    bars = img[: h // 6, :, :].astype(np.float32).mean(axis=(0, 2))
    bar_w = w // 8
    bits = [bars[b * bar_w + bar_w // 4:(b + 1) * bar_w - bar_w // 4].mean() > 127 for b in range(8)]
    return int(sum(int(v) << (7 - i) for i, v in enumerate(bits)))
