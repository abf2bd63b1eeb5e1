"""Pre-scan of a video collection: probe every file once, decide its decoder, list what is unusable.

Per file (PyAV): it opens; its streams, codecs, duration, frame rate and frame-rate variability
(from packet timestamps); audio presence, rate and channels; and its video (and audio) stream
decodes -- fully by default, since a file can open fine and fail mid-stream, or at a sample of
positions with ``decode="sample"`` for very large collections.

Problems that make a file unusable for audio-visual pretraining: ``missing``, ``zero-length``,
``corrupt`` (cannot be opened or decoded), ``no-video``, ``no-audio``, ``too-short`` (shorter than
one clip of the config in use: data.frames / data.fps). Warnings that change only how it is read:
``vfr`` (variable frame rate: PyAV, by timestamp), ``several-video-streams`` /
``several-audio-streams`` (the best is used and recorded, see :func:`best_stream`). Warnings about
content, from decode statistics: ``silent-audio`` (peak below -60 dBFS: digital silence or hiss)
and ``blank-video`` (every sampled frame uniform or near-black); pretraining leaves these out
under ``data.on_blank`` (default skip), like the problems above.

Backend per file: DALI decodes CFR VP8/VP9/MJPEG on the CPU and CFR H.264/HEVC/VP8/VP9/MJPEG on
the GPU (NVDEC); everything else (MPEG-4 part 2, AV1, VFR, H.264 without a GPU) goes to PyAV.
"""
from __future__ import annotations

import json
import multiprocessing
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

UNUSABLE = ("missing", "zero-length", "corrupt", "no-video", "no-audio", "too-short")
BLANK = ("silent-audio", "blank-video")  # content warnings: left out of pretraining under data.on_blank
SILENT_DBFS = -60.0  # audio peak at or below: silent (16-bit dither sits near -90 dBFS)
BLANK_STD = 2.0  # luma std (0-255) within a frame at or below: uniform
DARK_P99 = 24.0  # luma 99th percentile (0-255) at or below: near-black
STAT_FRAMES = 32  # frames converted for statistics in a full decode (spread over the stream)
DALI_CPU_CODECS = ("vp8", "vp9", "mjpeg")
DALI_GPU_CODECS = ("h264", "hevc", "vp8", "vp9", "mjpeg")


@dataclass
class ScanRecord:
    path: str
    usable: bool = False
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    detail: str = ""
    size: int = 0
    container: str | None = None
    duration: float | None = None  # seconds (video stream if known, else container)
    video_codec: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None  # average frame rate
    fps_cv: float | None = None  # coefficient of variation of frame intervals
    frames: int | None = None  # decoded (full decode) or declared
    start_time: float | None = None  # timestamp of the first decoded video frame, seconds
    audio_codec: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    video_stream: int | None = None  # which video stream (position among the file's video streams)
    audio_stream: int | None = None  # which audio stream
    luma_p99: float | None = None  # brightest 1% of the sampled frames (max over frames), 0-255
    luma_std: float | None = None  # largest within-frame luma standard deviation over sampled frames
    audio_peak_dbfs: float | None = None  # peak sample level (decoded part), dB full scale
    clip_seconds: float | None = None  # the clip length too-short was judged against
    backend_cpu: str | None = None  # dali_cpu | pyav (on a machine without a GPU)
    backend_gpu: str | None = None  # dali_gpu | pyav (with one)

    @property
    def vfr(self) -> bool:
        return "vfr" in self.warnings


def choose_backend(rec: ScanRecord, gpu: bool) -> str | None:
    if not rec.usable and any(p != "no-audio" for p in rec.problems):
        return None
    codec = rec.video_codec or ""
    if rec.vfr or (rec.video_stream or 0) > 0:  # DALI reads a file's first video stream only
        return "pyav"
    if gpu and codec in DALI_GPU_CODECS:
        return "dali_gpu"
    if codec in DALI_CPU_CODECS:
        return "dali_cpu"
    return "pyav"


def best_stream(streams: list) -> tuple[int, object] | None:
    """(position, stream) of the stream to use among one kind's streams, or None.

    Cover art and accessibility tracks (attached_pic, hearing/visually impaired, comment) come
    last; then the highest resolution (video) or sample rate and channel count (audio), as
    ffmpeg's command line chooses; the ``default`` disposition breaks ties only: MP4 muxers mark
    the first track of each kind default whatever it holds."""
    if not streams:
        return None

    def flags(st) -> tuple[bool, bool]:
        d = getattr(st, "disposition", None)
        names = str(d).lower() if d is not None else ""
        aside = any(k in names for k in ("attached_pic", "hearing_impaired", "visual_impaired", "comment"))
        return aside, "default" in names

    def rank(item):
        k, st = item
        cc = st.codec_context
        aside, default = flags(st)
        size = (cc.width or 0) * (cc.height or 0) if st.type == "video" else \
            (cc.sample_rate or 0) * 16 + min(cc.channels or 0, 15)
        return (not aside, size, default, -k)
    return max(enumerate(streams), key=rank)


def scan_file(path: str | Path, *, clip_seconds: float = 1.6, decode: str = "full",
              sample_points: int = 5) -> ScanRecord:
    import av

    path = Path(path)
    rec = ScanRecord(str(path), clip_seconds=clip_seconds)
    if not _file_present(path, rec):
        return rec
    try:
        container = av.open(str(path))
    except Exception as e:  # av.error.* and OSError
        rec.problems.append("corrupt")
        rec.detail = f"cannot open: {type(e).__name__}: {e}"
        return rec
    with container:
        rec.container = container.format.name
        vs, aus = _read_streams(container, rec)
        if vs is None:
            return _finish(rec, clip_seconds)
        try:
            _timing(container, vs, rec)
            container.seek(0)
            rec.frames = _decode_check(container, vs, aus, decode, sample_points, rec)
        except Exception as e:
            rec.problems.append("corrupt")
            rec.detail = f"decoding failed: {type(e).__name__}: {e}"
    return _finish(rec, clip_seconds)


def _file_present(path: Path, rec: ScanRecord) -> bool:
    """False (with the problem recorded) for a missing or empty file."""
    if not path.exists():
        rec.problems.append("missing")
        rec.detail = "file does not exist"
        return False
    rec.size = path.stat().st_size
    if rec.size == 0:
        rec.problems.append("zero-length")
        rec.detail = "0 bytes"
        return False
    return True


def _read_streams(container, rec: ScanRecord):
    """The best video and audio streams (None where absent), their codecs recorded in ``rec``."""
    videos, audios = list(container.streams.video), list(container.streams.audio)
    if len(videos) > 1:
        rec.warnings.append("several-video-streams")
    if len(audios) > 1:
        rec.warnings.append("several-audio-streams")
    aus = None
    best_audio = best_stream(audios)
    if best_audio:
        rec.audio_stream, aus = best_audio
        a = aus.codec_context
        rec.audio_codec, rec.sample_rate, rec.channels = a.name, a.sample_rate, a.channels
    else:
        rec.problems.append("no-audio")
    if not videos:
        rec.problems.append("no-video")
        rec.detail = "no video stream"
        return None, aus
    rec.video_stream, vs = best_stream(videos)
    cc = vs.codec_context
    rec.video_codec, rec.width, rec.height = cc.name, cc.width, cc.height
    return vs, aus


def _timing(container, vs, rec: ScanRecord) -> None:
    """Frame rate, duration and variable-frame-rate warning from the stream and its packet times."""
    if vs.average_rate:
        rec.fps = float(vs.average_rate)
    if vs.duration is not None and vs.time_base:
        rec.duration = float(vs.duration * vs.time_base)
    elif container.duration:
        rec.duration = container.duration / 1e6
    pts = _packet_times(container, vs)
    if len(pts) < 3:
        return
    dt = np.diff(np.sort(np.asarray(pts)))
    dt = dt[dt > 0]
    if len(dt):
        rec.fps_cv = float(dt.std() / dt.mean())
        # VFR: intervals off the median by more than the timestamp resolution allows
        # (WebM/MKV store milliseconds: 1/24 s is written as 41 or 42 ms)
        tol = max(2.0 * float(vs.time_base), 0.05 * float(np.median(dt)))
        if np.mean(np.abs(dt - np.median(dt)) > tol) > 0.01:
            rec.warnings.append("vfr")
        if not rec.fps:
            rec.fps = float(1.0 / np.median(dt))
    if rec.duration is None:
        rec.duration = float(max(pts) - min(pts) + (np.median(dt) if len(dt) else 0))


def _packet_times(container, vs) -> list[float]:
    tb = float(vs.time_base)
    return [float(p.pts) * tb for p in container.demux(vs) if p.pts is not None]


def _decode_check(container, vs, audio, decode: str, sample_points: int, rec: ScanRecord) -> int:
    """Decode the video (and audio) stream; raise on the first error. Returns frames decoded.
    Records picture and sound statistics (luma of up to STAT_FRAMES frames, audio peak)."""
    vs.thread_type = "AUTO"
    pic, peak = _Picture(), _Peak()
    n = 0
    if decode == "full":
        declared = vs.frames or int((rec.duration or 0) * (rec.fps or 0))
        every = max(1, declared // STAT_FRAMES)
        for fr in container.decode(vs):
            if n == 0 and fr.pts is not None:
                rec.start_time = float(fr.pts * vs.time_base)
            if n % every == 0:
                pic.add(fr)
            n += 1
        if audio is not None:
            container.seek(0)
            for af in container.decode(audio):
                peak.add(af)
        pic.record(rec)
        peak.record(rec)
        return n
    if decode != "sample":
        raise ValueError(f"decode must be 'full' or 'sample', got {decode!r}")
    for fr in container.decode(vs):  # the first frame fixes the time origin
        rec.start_time = float(fr.pts * vs.time_base) if fr.pts is not None else 0.0
        break
    dur = rec.duration or 0.0
    for k in range(sample_points):
        t = dur * (k + 0.5) / sample_points
        container.seek(int(t / float(vs.time_base)), stream=vs, backward=True)
        for got, fr in enumerate(container.decode(vs)):
            n += 1
            if got == 0:
                pic.add(fr)
            if got >= 2:
                break
        if audio is not None:
            container.seek(int(t / float(audio.time_base)), stream=audio, backward=True)
            for got, af in enumerate(container.decode(audio)):
                peak.add(af)
                if got >= 20:
                    break
    pic.record(rec)
    peak.record(rec)
    return n


def _note(rec: ScanRecord, text: str) -> None:
    rec.detail = f"{rec.detail}; {text}" if rec.detail else text


class _Picture:
    """Luma statistics of sampled frames (converted at 64 x 64: cheap, and enough to see a picture)."""

    def __init__(self) -> None:
        self.p99, self.std = [], []

    def add(self, frame) -> None:
        rgb = frame.to_ndarray(format="rgb24", width=64, height=64).astype(np.float32)
        y = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        self.p99.append(float(np.percentile(y, 99)))
        self.std.append(float(y.std()))

    def record(self, rec: ScanRecord) -> None:
        if not self.p99:
            return
        rec.luma_p99, rec.luma_std = max(self.p99), max(self.std)
        if all(s <= BLANK_STD or p <= DARK_P99 for s, p in zip(self.std, self.p99)):
            rec.warnings.append("blank-video")
            what = "uniform" if rec.luma_std <= BLANK_STD else "near-black"
            _note(rec, f"{len(self.p99)} sampled frames are {what} (luma p99 {rec.luma_p99:.0f}, "
                       f"std {rec.luma_std:.1f} of 255)")


class _Peak:
    """The peak absolute sample of decoded audio frames, in dB full scale."""

    def __init__(self) -> None:
        self.peak, self.samples = 0.0, 0

    def add(self, frame) -> None:
        x = frame.to_ndarray()
        scale = float(np.iinfo(x.dtype).max) if np.issubdtype(x.dtype, np.integer) else 1.0
        if x.size:
            self.peak = max(self.peak, float(np.abs(x.astype(np.float64)).max()) / scale)
            self.samples += x.size

    def record(self, rec: ScanRecord) -> None:
        if not self.samples:
            return
        rec.audio_peak_dbfs = 20 * float(np.log10(max(self.peak, 1e-10)))
        if rec.audio_peak_dbfs <= SILENT_DBFS:
            rec.warnings.append("silent-audio")
            _note(rec, f"audio peak {rec.audio_peak_dbfs:.0f} dBFS over {self.samples} samples")


def _finish(rec: ScanRecord, clip_seconds: float) -> ScanRecord:
    if rec.duration is not None and rec.fps and rec.frames is not None and "corrupt" not in rec.problems:
        rec.duration = max(rec.duration, rec.frames / rec.fps) if rec.frames else rec.duration
    if rec.duration is not None and rec.duration < clip_seconds and "corrupt" not in rec.problems:
        rec.problems.append("too-short")
        rec.detail = rec.detail or f"{rec.duration:.2f}s < one clip of {clip_seconds:.2f}s"
    if "no-audio" in rec.problems and not rec.detail:
        rec.detail = "no audio stream"
    rec.usable = not rec.problems
    rec.backend_cpu = choose_backend(rec, gpu=False)
    rec.backend_gpu = choose_backend(rec, gpu=True)
    return rec


def _scan_one(args):
    path, clip_seconds, decode = args
    try:
        return scan_file(path, clip_seconds=clip_seconds, decode=decode)
    except Exception as e:  # never lose a file from the report
        return _finish(ScanRecord(str(path), problems=["corrupt"], detail=f"scan failed: {type(e).__name__}: {e}"),
                       clip_seconds)


def scan_paths(paths: list[str | Path], *, clip_seconds: float = 1.6, decode: str = "full",
               workers: int = 0) -> list[ScanRecord]:
    jobs = [(str(p), clip_seconds, decode) for p in paths]
    if workers and workers > 1 and len(jobs) > 1:
        # spawn, not fork: a fork of a process whose other threads hold locks (torch, PyAV, logging)
        # can leave a worker waiting forever on a lock it copied locked
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            return list(ex.map(_scan_one, jobs, chunksize=4))
    return [_scan_one(j) for j in jobs]


def write_report(records: list[ScanRecord], out: str | Path) -> None:
    from ..system.checkpoint import write_atomic
    out = Path(out)
    if out.suffix.lower() == ".csv":
        import csv
        import io
        buf = io.StringIO()
        cols = list(asdict(records[0]).keys()) if records else ["path"]
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        for r in records:
            d = asdict(r)
            d["problems"], d["warnings"] = ";".join(r.problems), ";".join(r.warnings)
            w.writerow(d)
        write_atomic(out, buf.getvalue())
    else:
        write_atomic(out, json.dumps([asdict(r) for r in records], indent=1))


def read_report(path: str | Path) -> dict[str, ScanRecord]:
    data = json.loads(Path(path).read_text())
    return {d["path"]: ScanRecord(**d) for d in data}


def summarize(records: list[ScanRecord]) -> str:
    n = len(records)
    ok = sum(r.usable for r in records)
    lines = [f"scanned {n} files: {ok} usable, {n - ok} unusable"]
    probs = Counter(p for r in records for p in r.problems)
    warns = Counter(w for r in records for w in r.warnings)
    if probs:
        lines.append("problems: " + ", ".join(f"{k} {v}" for k, v in probs.most_common()))
    if warns:
        lines.append("warnings: " + ", ".join(f"{k} {v}" for k, v in warns.most_common()))
    codecs = Counter(r.video_codec for r in records if r.video_codec)
    if codecs:
        lines.append("video codecs: " + ", ".join(f"{k} {v}" for k, v in codecs.most_common()))
    for mode in ("cpu", "gpu"):
        b = Counter(getattr(r, f"backend_{mode}") for r in records if getattr(r, f"backend_{mode}"))
        lines.append(f"decoder on a {mode.upper()} machine: " + (", ".join(f"{k} {v}" for k, v in b.most_common()) or "-"))
    bad = [r for r in records if not r.usable]
    if bad:
        lines.append("unusable:")
        for r in bad:
            lines.append(f"  {r.path}: {', '.join(r.problems)} ({r.detail})")
    blank = [r for r in records if r.usable and set(r.warnings) & set(BLANK)]
    if blank:
        lines.append("blank or silent (left out of pretraining unless data.on_blank=keep):")
        for r in blank:
            lines.append(f"  {r.path}: {', '.join(w for w in r.warnings if w in BLANK)} ({r.detail})")
    several = [r for r in records if {"several-video-streams", "several-audio-streams"} & set(r.warnings)]
    if several:
        lines.append("several streams (the best of each kind is read):")
    for r in several:
        lines.append(f"  {r.path}: video stream {r.video_stream} ({r.width}x{r.height}), "
                     f"audio stream {r.audio_stream} ({r.sample_rate} Hz)")
    return "\n".join(lines)


def left_out(rec: ScanRecord, on_blank: str = "skip") -> bool:
    """Would pretraining leave this file out (unusable, or blank/silent under data.on_blank=skip)?"""
    return not rec.usable or (on_blank != "keep" and bool(set(rec.warnings) & set(BLANK)))


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))
