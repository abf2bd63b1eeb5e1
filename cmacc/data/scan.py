"""Pre-scan of a video collection: probe every file once, decide its decoder, list what is unusable.

Per file (PyAV): it opens; its streams, codecs, duration, frame rate and frame-rate variability
(from packet timestamps); audio presence, rate and channels; and its video (and audio) stream
decodes -- fully by default, since a file can open fine and fail mid-stream, or at a sample of
positions with ``decode="sample"`` for very large collections.

Problems that make a file unusable for audio-visual pretraining: ``missing``, ``zero-length``,
``corrupt`` (cannot be opened or decoded), ``no-video``, ``no-audio``, ``too-short`` (shorter than
one clip). Warnings that change only how it is read: ``vfr`` (variable frame rate: PyAV, by
timestamp), ``several-video-streams`` / ``several-audio-streams`` (the first is used).

Backend per file: DALI decodes CFR VP8/VP9/MJPEG on the CPU and CFR H.264/HEVC/VP8/VP9/MJPEG on
the GPU (NVDEC); everything else (MPEG-4 part 2, AV1, VFR, H.264 without a GPU) goes to PyAV.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

UNUSABLE = ("missing", "zero-length", "corrupt", "no-video", "no-audio", "too-short")
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
    backend_cpu: str | None = None  # dali_cpu | pyav (on a machine without a GPU)
    backend_gpu: str | None = None  # dali_gpu | pyav (with one)

    @property
    def vfr(self) -> bool:
        return "vfr" in self.warnings


def choose_backend(rec: ScanRecord, gpu: bool) -> str | None:
    if not rec.usable and any(p != "no-audio" for p in rec.problems):
        return None
    codec = rec.video_codec or ""
    if rec.vfr:
        return "pyav"
    if gpu and codec in DALI_GPU_CODECS:
        return "dali_gpu"
    if codec in DALI_CPU_CODECS:
        return "dali_cpu"
    return "pyav"


def scan_file(path: str | Path, *, clip_seconds: float = 1.6, decode: str = "full",
              sample_points: int = 5) -> ScanRecord:
    import av

    path = Path(path)
    rec = ScanRecord(str(path))
    if not path.exists():
        rec.problems.append("missing")
        rec.detail = "file does not exist"
        return rec
    rec.size = path.stat().st_size
    if rec.size == 0:
        rec.problems.append("zero-length")
        rec.detail = "0 bytes"
        return rec
    try:
        container = av.open(str(path))
    except Exception as e:  # av.error.* and OSError
        rec.problems.append("corrupt")
        rec.detail = f"cannot open: {type(e).__name__}: {e}"
        return rec
    with container:
        rec.container = container.format.name
        videos = [s for s in container.streams if s.type == "video"]
        audios = [s for s in container.streams if s.type == "audio"]
        if len(videos) > 1:
            rec.warnings.append("several-video-streams")
        if len(audios) > 1:
            rec.warnings.append("several-audio-streams")
        if audios:
            a = audios[0].codec_context
            rec.audio_codec, rec.sample_rate, rec.channels = a.name, a.sample_rate, a.channels
        else:
            rec.problems.append("no-audio")
        if not videos:
            rec.problems.append("no-video")
            rec.detail = "no video stream"
            return _finish(rec, clip_seconds)
        vs = videos[0]
        cc = vs.codec_context
        rec.video_codec, rec.width, rec.height = cc.name, cc.width, cc.height
        if vs.average_rate:
            rec.fps = float(vs.average_rate)
        if vs.duration is not None and vs.time_base:
            rec.duration = float(vs.duration * vs.time_base)
        elif container.duration:
            rec.duration = container.duration / 1e6
        try:
            pts = _packet_times(container, vs)
            if len(pts) >= 3:
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
            container.seek(0)
            rec.frames = _decode_check(container, vs, audios[0] if audios else None, decode, sample_points, rec)
        except Exception as e:
            rec.problems.append("corrupt")
            rec.detail = f"decoding failed: {type(e).__name__}: {e}"
    return _finish(rec, clip_seconds)


def _packet_times(container, vs) -> list[float]:
    tb = float(vs.time_base)
    return [float(p.pts) * tb for p in container.demux(vs) if p.pts is not None]


def _decode_check(container, vs, audio, decode: str, sample_points: int, rec: ScanRecord) -> int:
    """Decode the video (and audio) stream; raise on the first error. Returns frames decoded."""
    vs.thread_type = "AUTO"
    n = 0
    if decode == "full":
        for fr in container.decode(vs):
            if n == 0 and fr.pts is not None:
                rec.start_time = float(fr.pts * vs.time_base)
            n += 1
        if audio is not None:
            container.seek(0)
            for _ in container.decode(audio):
                pass
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
        for got, _ in enumerate(container.decode(vs)):
            n += 1
            if got >= 2:
                break
    return n


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
        with ProcessPoolExecutor(workers) as ex:
            return list(ex.map(_scan_one, jobs, chunksize=4))
    return [_scan_one(j) for j in jobs]


def write_report(records: list[ScanRecord], out: str | Path) -> None:
    from ..checkpoint import write_atomic
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
    return "\n".join(lines)


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))
