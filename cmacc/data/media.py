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


def _picture(content: str, i: int, width: int, height: int, flash: bool) -> np.ndarray:
    if content == "pattern":
        return frame_image(i, width, height, flash)
    if content == "black":
        return np.zeros((height, width, 3), np.uint8)
    if content == "dark":  # nearly black: faint noise, nothing brighter than a few grey levels
        return np.random.default_rng(i).integers(0, 7, (height, width, 3), dtype=np.uint8)
    raise ValueError(f"video content must be pattern, black or dark, got {content!r}")


def _sound(content: str, n: int, sample_rate: int, click_at: float | None, tone: float = 440.0) -> np.ndarray:
    if content == "silence":
        return np.zeros(n)
    if content != "tone":
        raise ValueError(f"audio content must be tone or silence, got {content!r}")
    y = 0.05 * np.sin(2 * np.pi * tone * np.arange(n) / sample_rate)
    if click_at is not None:  # a 20 ms broadband burst
        k = int(round(click_at * sample_rate))
        burst = np.random.default_rng(0).uniform(-0.9, 0.9, int(0.02 * sample_rate))
        y[k:k + len(burst)] = burst[: max(0, n - k)]
    return y


def write_video(path: str | Path, codec: str = "vp9", seconds: float = 3.0, fps: int = 25,
                size: tuple[int, int] = (96, 64), audio: bool = True, sample_rate: int = 48000,
                flash_at: float | None = None, click_at: float | None = None, *, video: str = "pattern",
                sound: str = "tone", pix_fmt: str | None = None, extra_video: list[tuple[int, int]] = (),
                extra_audio: list[int] = (), container_options: dict | None = None) -> Path:
    """Write a test video; returns its path (the codec's container extension is enforced).

    video: pattern | black | dark (nearly black);  sound: tone | silence;  pix_fmt: e.g. yuva420p
    (VP9 with alpha);  extra_video / extra_audio: further streams ((width, height) / sample rate,
    pattern and tone content) written *before* the main ones, so the main streams are not the first;
    container_options: muxer options (e.g. WebM ``{"live": "1"}``: no duration in the header).
    """
    import av

    ext, vcodec, pix, acodec = CODECS[codec]
    path = Path(path).with_suffix(ext)
    n_frames = int(round(seconds * fps))
    flash_frame = None if flash_at is None else int(round(flash_at * fps))
    with av.open(str(path), "w", options=container_options or {}) as c:
        videos = [(vcodec, w, h, "pattern") for w, h in extra_video] + [(vcodec, *size, video)]
        vstreams = []
        for name, w, h, content in videos:
            vs = c.add_stream(name, rate=fps)
            vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt or pix
            if codec in ("h264",):
                vs.options = {"preset": "ultrafast", "tune": "zerolatency"}
            if codec in ("vp9", "vp8"):
                vs.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
            vstreams.append((vs, content))
        astreams = []
        for rate, content in [(r, "tone") for r in extra_audio] + ([(sample_rate, sound)] if audio else []):
            a_s = c.add_stream(acodec, rate=rate)
            a_s.layout = "mono"
            astreams.append((a_s, rate, content))
        for i in range(n_frames):
            for vs, content in vstreams:
                img = _picture(content, i, vs.width, vs.height, i == flash_frame)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                if vs.pix_fmt != "rgb24":
                    frame = frame.reformat(format=vs.pix_fmt)
                frame.pts = i
                frame.time_base = Fraction(1, fps)
                for p in vs.encode(frame):
                    c.mux(p)
        for vs, _ in vstreams:
            for p in vs.encode():
                c.mux(p)
        for k, (a_s, rate, content) in enumerate(astreams):  # extra streams sound an octave higher
            tone = 880.0 if k < len(extra_audio) else 440.0
            _write_audio(c, a_s, acodec, _sound(content, int(round(seconds * rate)), rate, click_at, tone), rate)
    return path


def _write_audio(c, a_s, acodec: str, y: np.ndarray, sample_rate: int) -> None:
    import av
    fmt = "s16" if acodec == "pcm_s16le" else "fltp"
    chunk = 1024
    for s0 in range(0, len(y), chunk):
        block = y[s0:s0 + chunk].astype(np.float32)[None]
        if fmt == "s16":
            block = (block * 32767).astype(np.int16)
        af = av.AudioFrame.from_ndarray(block, format=fmt, layout="mono")
        af.sample_rate, af.pts, af.time_base = sample_rate, s0, Fraction(1, sample_rate)
        for p in a_s.encode(af):
            c.mux(p)
    for p in a_s.encode():
        c.mux(p)


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
