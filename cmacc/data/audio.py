"""Audio: decode (PyAV, or soundfile for WAV/FLAC/OGG), mono, resample, log-mel with librosa.

All mel parameters are pinned in :class:`MelSpec` and recorded with results: librosa's and
torchaudio's defaults differ (Slaney vs HTK mel scale, filter normalisation), so "80-band
log-mel" alone does not define a feature. Frame f of the (centred) STFT is the spectrum around
time f * hop / sr, so a clip [t0, t0 + dur) is frames round(t0 sr / hop) ... + dur sr / hop.

Features of a whole file are computed once and cached on disk (``MelCache``); later epochs
and other clips of the same file slice the cached array.
"""
from __future__ import annotations

import hashlib
import io
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif")


class NoAudio(RuntimeError):
    """The file has no audio stream."""


@dataclass(frozen=True)
class MelSpec:
    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400  # 25 ms at 16 kHz
    hop_length: int = 160  # 10 ms: 100 frames per second
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    htk: bool = False  # Slaney mel scale (librosa's default), not HTK
    norm: str = "slaney"  # area-normalised triangular filters
    power: float = 2.0
    amin: float = 1e-10  # power_to_db floor: silence is 10 log10(amin) = -100 dB
    window: str = "hann"
    center: bool = True

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def floor_db(self) -> float:
        return float(10.0 * np.log10(self.amin))

    def frames(self, seconds: float) -> int:
        return int(round(seconds * self.frames_per_second))

    def to_dict(self) -> dict:
        import librosa
        return {**asdict(self), "librosa": librosa.__version__}


def load_audio(path: str | Path, sample_rate: int, start: float | None = None,
               end: float | None = None, stream: int = 0) -> tuple[np.ndarray, float]:
    """(mono float32 waveform at ``sample_rate`` Hz, time of its first sample in seconds on the
    container's timeline). With ``start``/``end`` only that segment is returned (origin = start)."""
    path = Path(path)
    if path.suffix.lower() in SOUNDFILE_EXTENSIONS:
        import librosa
        import soundfile as sf
        with sf.SoundFile(str(path)) as f:
            sr = f.samplerate
            if start:
                f.seek(int(round(start * sr)))
            n = -1 if end is None else int(round((end - (start or 0.0)) * sr))
            y = f.read(frames=n, dtype="float32", always_2d=True).mean(axis=1)
        if sr != sample_rate:
            y = librosa.resample(y, orig_sr=sr, target_sr=sample_rate, res_type="soxr_hq")
        return np.ascontiguousarray(y, dtype=np.float32), float(start or 0.0)
    import av
    with av.open(str(path)) as c:
        if not c.streams.audio:
            raise NoAudio(f"{path} has no audio stream")
        if stream >= len(c.streams.audio):
            raise NoAudio(f"{path} has {len(c.streams.audio)} audio stream(s), not stream {stream}")
        stream = c.streams.audio[stream]
        tb = float(stream.time_base)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks, origin = [], None
        if start:  # lands on a packet at or before start; trimmed below
            c.seek(int(start / tb), stream=stream, backward=True)
        for frame in c.decode(stream):
            if origin is None:
                origin = float(frame.pts * tb) if frame.pts is not None else float(start or 0.0)
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
            if end is not None and frame.pts is not None and frame.pts * tb > end:
                break
        for out in resampler.resample(None):  # flush the resampler
            chunks.append(out.to_ndarray().reshape(-1))
    y = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    origin = 0.0 if origin is None else origin
    if start is not None and start > origin:
        y = y[int(round((start - origin) * sample_rate)):]
        origin = float(start)
    if end is not None:
        y = y[: max(0, int(round((end - origin) * sample_rate)))]
    return y, origin


def logmel(y: np.ndarray, spec: MelSpec) -> np.ndarray:
    """(n_mels, frames) float32 log-mel power in dB (librosa, parameters from ``spec``)."""
    import librosa
    if len(y) == 0:
        return np.full((spec.n_mels, 0), spec.floor_db, np.float32)
    S = librosa.feature.melspectrogram(
        y=y, sr=spec.sample_rate, n_fft=spec.n_fft, hop_length=spec.hop_length, win_length=spec.win_length,
        window=spec.window, center=spec.center, power=spec.power, n_mels=spec.n_mels, fmin=spec.fmin,
        fmax=spec.fmax, htk=spec.htk, norm=spec.norm)
    db = librosa.power_to_db(S, ref=1.0, amin=spec.amin, top_db=None)
    # float32 S turns amin into 10 log10(float32(1e-10)) = -100.0000076 dB: clamp to the floor that
    # window() pads with, so silence and padding are the same value
    return np.maximum(db, spec.floor_db).astype(np.float32)


def window(mel: np.ndarray, t0: float, seconds: float, spec: MelSpec) -> np.ndarray:
    """The mel frames of [t0, t0 + seconds): exactly ``spec.frames(seconds)`` columns, padded
    with the silence floor beyond the end of the file."""
    n = spec.frames(seconds)
    f0 = int(round(t0 * spec.frames_per_second))
    out = np.full((mel.shape[0], n), spec.floor_db, np.float32)
    lo, hi = max(0, f0), min(mel.shape[1], f0 + n)
    if hi > lo:
        out[:, lo - f0: hi - f0] = mel[:, lo:hi]
    return out


class MelCache:
    """Whole-file log-mel features on disk, keyed by (file identity, segment, MelSpec).

    ``get`` returns (mel n_mels x frames, origin): origin is the container time of frame 0.
    """

    def __init__(self, root: str | Path | None, spec: MelSpec) -> None:
        self.root = Path(root) if root else None
        self.spec = spec
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)

    def key(self, path: Path, start: float | None, end: float | None, stream: int = 0) -> str:
        st = path.stat()
        ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{start}|{end}|{sorted(asdict(self.spec).items())}"
        if stream:
            ident += f"|audio stream {stream}"
        return hashlib.sha1(ident.encode()).hexdigest()

    def compute(self, path: Path, start: float | None, end: float | None, stream: int = 0) -> tuple[np.ndarray, float]:
        y, origin = load_audio(path, self.spec.sample_rate, start, end, stream)
        return logmel(y, self.spec), origin

    def get(self, path: str | Path, start: float | None = None, end: float | None = None,
            stream: int = 0) -> tuple[np.ndarray, float]:
        path = Path(path)
        if self.root is None:
            return self.compute(path, start, end, stream)
        f = self.root / f"{self.key(path, start, end, stream)}.npz"
        if f.is_file():
            try:
                with np.load(f) as z:
                    return z["mel"], float(z["origin"])
            except (ValueError, OSError, KeyError):
                pass  # a damaged cache entry is recomputed below
        mel, origin = self.compute(path, start, end, stream)
        buf = io.BytesIO()
        np.savez(buf, mel=mel, origin=np.float64(origin))
        tmp = f.with_name(f".{f.name}.tmp-{socket.gethostname()}-{os.getpid()}")  # ranks share the cache
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, f)
        return mel, origin
