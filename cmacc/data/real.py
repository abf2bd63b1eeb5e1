"""Real audio-visual clips from a manifest: the same interface as the synthetic dataset.

``ManifestAV[ClipRequest]`` returns ``video`` (3 x T x S x S), ``audio`` (mel bands x T_a, the
same time span), ``index`` and ``label`` (-1 when unknown). Files are read per the scan report:

* unusable files (missing, zero-length, corrupt, no-video, too-short) are left out under
  ``on_corrupt="skip"`` and listed in ``excluded`` with their reasons; ``"error"`` stops at start;
* files without audio follow ``on_missing_audio``: ``skip`` (left out, listed), ``silence``
  (audio features at the log-mel floor), ``error`` (stop at start);
* files the scan found silent (``silent-audio``) or without a picture (``blank-video``) follow
  ``on_blank``: ``skip`` (left out, listed), ``keep``, ``error``;
* a file with several video or audio streams is read from the streams the scan chose;
* a file that fails while training (a decoder error the scan did not see) is replaced by the
  next usable clip, and the sample carries ``skipped = [(path, reason)]`` so the loop counts and
  reports it -- under ``on_corrupt="error"`` it raises instead.

Video decoding per file: PyAV in the worker processes; DALI (CPU or GPU) deferred to the main
process, where :class:`Finisher` decodes each batch's DALI clips in one pipeline run and applies
the same augmentation. Audio: whole-file log-mel from the on-disk cache, sliced to the clip.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .audio import MelCache, MelSpec, NoAudio, window
from .manifest import Manifest
from .request import TAGS, ClipRequest
from .scan import BLANK, DALI_CPU_CODECS, UNUSABLE, ScanRecord, choose_backend
from .video import (
    ClipPlan,
    DaliDecoder,
    DecodeError,
    augment,
    decode_pyav,
    frame_indices,
    plan_clip,
)

BACKENDS = ("auto", "pyav", "dali_cpu", "dali_gpu")
_CORRUPT = tuple(p for p in UNUSABLE if p != "no-audio")  # no-audio follows on_missing_audio


class BadInput(InputError, RuntimeError):
    """A data file violates the bad-input policy in force; the message names it and why."""


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        return True
    except ImportError:
        return False


@dataclass
class _Item:
    row_index: int
    path: Path
    label: int
    rec: ScanRecord
    begin: float  # usable segment on the container timeline
    end: float
    backend: str
    silent: bool  # no audio stream: silence features
    seg_start: float | None  # the manifest row's segment (audio is read for it alone)
    seg_end: float | None


@dataclass
class Deferred:
    """A clip left for the main process to decode with DALI."""

    position: int  # sample position in the batch
    key: str  # "video" or "video_k"
    path: str
    backend: str
    indices: np.ndarray
    plan: ClipPlan
    request: ClipRequest


def _check_policies(backend: str, gpu: bool, on_missing_audio: str, on_corrupt: str, on_blank: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if on_missing_audio not in ("skip", "silence", "error"):
        raise ValueError(f"on_missing_audio must be skip, silence or error, got {on_missing_audio!r}")
    if on_corrupt not in ("skip", "error"):
        raise ValueError(f"on_corrupt must be skip or error, got {on_corrupt!r}")
    if on_blank not in ("skip", "keep", "error"):
        raise ValueError(f"on_blank must be skip, keep or error, got {on_blank!r}")
    if backend in ("dali_cpu", "dali_gpu") and not dali_available():
        raise BadInput(f"data backend {backend!r} requested but DALI is not installed (pip install nvidia-dali-cuda120)")
    if backend == "dali_gpu" and not gpu:
        raise BadInput("data backend 'dali_gpu' requested but no CUDA device is in use")


class ManifestAV(torch.utils.data.Dataset):
    def __init__(self, manifest: Manifest, scan: dict[str, ScanRecord], *, frames: int = 16, fps: float = 10.0,
                 crop: int = 224, mel: MelSpec | None = None, cache_dir: str | Path | None = None,
                 backend: str = "auto", gpu: bool = False, on_missing_audio: str = "skip",
                 on_corrupt: str = "skip", seed: int = 0, views: int = 1, num_clips: int = 10,
                 classes: list[str] | None = None, on_blank: str = "skip") -> None:
        _check_policies(backend, gpu, on_missing_audio, on_corrupt, on_blank)
        self.mel = mel or MelSpec()
        self.cache = MelCache(cache_dir, self.mel)
        self.T, self.fps, self.S, self.seed, self.views, self.num_clips = frames, fps, crop, seed, views, num_clips
        self.on_corrupt = on_corrupt
        self.classes = classes if classes is not None else manifest.classes
        self.policy = {"backend": backend, "gpu": gpu, "on_missing_audio": on_missing_audio, "on_corrupt": on_corrupt,
                       "on_blank": on_blank, "dali": dali_available()}
        cls = {c: k for k, c in enumerate(self.classes)}
        self.items: list[_Item] = []
        self.excluded: list[dict] = []
        for n, row in enumerate(manifest.rows):
            rec = scan.get(str(row.path))
            if rec is None:
                raise BadInput(f"{row.path} (manifest {manifest.source} row {n + 2}) is not in the scan report; "
                               f"run `cmacc scan` on this manifest again")
            item = self._admit(n, row, rec, cls.get(row.label, -1) if row.label else -1, frames / fps)
            if item is not None:
                self.items.append(item)
        if not self.items:
            raise BadInput(f"manifest {manifest.source}: no usable clips ({len(self.excluded)} excluded: "
                           f"{self.excluded[:3]}...)")
        self.labels = torch.tensor([it.label for it in self.items], dtype=torch.long)

    def _exclude(self, row, reason: str, detail: str) -> None:
        """Leave a file out under the bad-input policy, recorded with its reason."""
        self.excluded.append({"path": str(row.path), "reason": reason, "detail": detail})

    def _admit(self, n: int, row, rec: ScanRecord, label: int, span: float) -> _Item | None:
        """Row n of the manifest as a usable item, or None (recorded in ``excluded``) per the policies."""
        p = self.policy
        bad = [x for x in rec.problems if x in _CORRUPT]
        if bad:
            if p["on_corrupt"] == "error":
                raise BadInput(f"{row.path}: {', '.join(bad)} ({rec.detail}) and data.on_corrupt=error")
            return self._exclude(row, ", ".join(bad), rec.detail)
        blank = [w for w in rec.warnings if w in BLANK]
        if blank and p["on_blank"] != "keep":
            if p["on_blank"] == "error":
                raise BadInput(f"{row.path}: {', '.join(blank)} ({rec.detail}) and data.on_blank=error")
            return self._exclude(row, ", ".join(blank), rec.detail)
        silent = "no-audio" in rec.problems
        if silent and p["on_missing_audio"] != "silence":
            if p["on_missing_audio"] == "error":
                raise BadInput(f"{row.path}: no audio stream and data.on_missing_audio=error")
            return self._exclude(row, "no-audio", rec.detail)
        v0 = rec.start_time or 0.0
        begin, end = v0, v0 + (rec.duration or 0.0)
        if row.start is not None:
            begin = max(begin, row.start)
        if row.end is not None:
            end = min(end, row.end)
        if end - begin < span - 1e-6:
            if p["on_corrupt"] == "error":
                raise BadInput(f"{row.path}: segment [{begin:.2f}, {end:.2f}) is shorter than one clip ({span:.2f}s)")
            return self._exclude(row, "too-short", f"segment {end - begin:.2f}s < clip {span:.2f}s")
        return _Item(n, row.path, label, rec, begin, end, self._backend(row, rec), silent, row.start, row.end)

    def _backend(self, row, rec: ScanRecord) -> str:
        """The decoder of one file: data.backend, or auto's choice from the scan (PyAV without DALI)."""
        p = self.policy
        b = p["backend"] if p["backend"] != "auto" else (choose_backend(rec, p["gpu"]) or "pyav")
        if b.startswith("dali") and not p["dali"]:
            b = "pyav"  # auto only: DALI is optional
        if b.startswith("dali") and (rec.video_stream or 0) > 0:
            raise BadInput(f"{row.path}: its best video stream is stream {rec.video_stream}, and DALI reads only "
                           f"the first; use data.backend=auto or pyav")
        if b == "dali_cpu" and (rec.video_codec not in DALI_CPU_CODECS or rec.vfr):
            raise BadInput(f"{row.path}: data.backend=dali_cpu cannot decode {rec.video_codec}"
                           f"{' (variable frame rate)' if rec.vfr else ''}; use auto or pyav")
        return b

    def __len__(self) -> int:
        return len(self.items)

    @property
    def audio_frames(self) -> int:
        return self.mel.frames(self.T / self.fps)

    def backends(self) -> dict[str, int]:
        return dict(Counter(it.backend for it in self.items))

    def eval_span(self, index: int, clip: int) -> tuple[float, float]:
        """(start, end) in container seconds of evaluation clip ``clip`` of item ``index``."""
        plan = self._plan(self.items[index], ClipRequest(index, tag="eval", clip=clip), None)
        return plan.t0, plan.t0 + self.T / self.fps

    # ---- one clip ----
    def _plan(self, it: _Item, req: ClipRequest, rng) -> ClipPlan:
        aspect = (it.rec.width or 1) / (it.rec.height or 1)
        return plan_clip(begin=it.begin, end=it.end, frames=self.T, fps=self.fps, aspect=aspect, rng=rng,
                         clip_index=req.clip, num_clips=max(1, self.num_clips if req.tag == "eval" else 1))

    def _video(self, it: _Item, plan: ClipPlan, force_pyav: bool = False):
        r = it.rec
        if it.backend == "pyav" or force_pyav:
            frames = decode_pyav(it.path, plan.times, v0=r.start_time or 0.0, fps_src=r.fps, n_frames=r.frames,
                                 vfr=r.vfr, by_count=r.container == "avi", stream=r.video_stream or 0)
            return augment(torch.from_numpy(frames), plan, self.S)
        return frame_indices(plan.times, r.start_time or 0.0, r.fps, r.frames).astype(np.int32)

    def _audio(self, it: _Item, plan: ClipPlan) -> torch.Tensor:
        span = self.T / self.fps
        if it.silent:
            return torch.full((self.mel.n_mels, self.mel.frames(span)), self.mel.floor_db)
        try:
            mel, origin = self.cache.get(it.path, it.seg_start, it.seg_end, it.rec.audio_stream or 0)
        except NoAudio as e:
            raise DecodeError(str(e)) from e
        return torch.from_numpy(window(mel, plan.t0 - origin, span, self.mel))

    def load(self, index: int, req: ClipRequest, force_pyav: bool = False) -> dict:
        it = self.items[index]
        rng = None if req.tag == "eval" else np.random.default_rng([self.seed, 31, req.epoch, index, TAGS[req.tag]])
        out: dict = {"index": torch.tensor(index), "label": torch.tensor(it.label)}
        keys = ("video", "audio") if self.views == 1 or req.tag == "eval" else ("video", "audio", "video_k", "audio_k")
        for k in range(0, len(keys), 2):
            plan = self._plan(it, req, rng)
            if req.modality in (None, "video"):
                v = self._video(it, plan, force_pyav)
                if isinstance(v, np.ndarray):  # DALI: decoded in the main process
                    out.setdefault("_dali", []).append(Deferred(-1, keys[k], str(it.path), it.backend, v, plan, req))
                else:
                    out[keys[k]] = v
            if req.modality in (None, "audio"):
                out[keys[k + 1]] = self._audio(it, plan)
        return out

    def __getitem__(self, req) -> dict:
        if isinstance(req, (int, np.integer)):
            req = ClipRequest(int(req))
        try:
            return self.load(req.index, req)
        except (DecodeError, OSError, ValueError) as e:
            return self.substitute(req, f"{type(e).__name__}: {e}")

    def substitute(self, req: ClipRequest, reason: str, force_pyav: bool = False) -> dict:
        """The next usable clip in place of ``req`` (or raise under on_corrupt=error)."""
        path = str(self.items[req.index].path)
        if self.on_corrupt == "error":
            raise BadInput(f"{path}: {reason} (data.on_corrupt=error)")
        n = len(self.items)
        for k in range(1, n):
            alt = ClipRequest((req.index + k) % n, req.epoch, req.tag, req.modality, req.clip)
            try:
                out = self.load(alt.index, alt, force_pyav)
            except (DecodeError, OSError, ValueError):
                continue
            out["skipped"] = [(path, reason)]
            return out
        raise BadInput(f"no clip of the dataset can be decoded (last failure: {path}: {reason})")


def collate(samples: list[dict]) -> dict:
    """default_collate, plus: deferred DALI clips (``_dali``) and ``skipped`` lists pass through."""
    deferred, skipped = [], []
    for pos, s in enumerate(samples):
        for d in s.pop("_dali", []):
            d.position = pos
            s[d.key] = None  # filled in by the Finisher
            deferred.append(d)
        skipped += s.pop("skipped", [])
    keys = set().union(*(s.keys() for s in samples))
    batch: dict = {}
    for k in keys:
        vals = [s.get(k) for s in samples]
        if all(v is not None for v in vals):
            batch[k] = torch.utils.data.default_collate(vals)
        else:
            batch[k] = vals  # some clips still to decode
    batch["_dali"], batch["skipped"] = deferred, skipped
    return batch


@dataclass
class Finisher:
    """Main-process end of the data pipeline: DALI-decode deferred clips, augment, stack.

    Every DALI failure becomes a skip (PyAV decodes a substitute clip) or, under
    on_corrupt=error, an exception naming the file.
    """

    dataset: ManifestAV | None
    device: torch.device = torch.device("cpu")
    max_batch: int = 32
    num_threads: int = 2
    _decoders: dict = field(default_factory=dict)

    def decoder(self, backend: str) -> DaliDecoder:
        if backend not in self._decoders:
            dev = "mixed" if backend == "dali_gpu" else "cpu"
            self._decoders[backend] = DaliDecoder(dev, self.max_batch, self.num_threads,
                                                  self.device.index if dev == "mixed" else None)
        return self._decoders[backend]

    def __call__(self, batch: dict) -> dict:
        deferred = batch.pop("_dali", [])
        skipped = batch.get("skipped", [])
        by_backend: dict[str, list[Deferred]] = {}
        for d in deferred:
            by_backend.setdefault(d.backend, []).append(d)
        for backend, items in by_backend.items():
            outs = self.decoder(backend).decode([np.fromfile(d.path, np.uint8) for d in items],
                                                [d.indices for d in items], [d.path for d in items])
            for d, o in zip(items, outs):
                if isinstance(o, Exception):
                    sub = self.dataset.substitute(d.request, str(o), force_pyav=True)
                    skipped += sub.get("skipped", [])
                    batch[d.key][d.position] = sub[d.key]
                    audio_key = d.key.replace("video", "audio")
                    if audio_key in batch:  # keep the pair from one clip
                        batch[audio_key][d.position] = sub[audio_key]
                    batch["index"][d.position] = sub["index"]
                    batch["label"][d.position] = sub["label"]
                else:
                    batch[d.key][d.position] = augment(o, d.plan, self.dataset.S)
        for k in ("video", "video_k", "audio", "audio_k"):
            if isinstance(batch.get(k), list):
                batch[k] = torch.stack([v.to(self.device) for v in batch[k]])
        batch["skipped"] = skipped
        return batch


class AudioClips(torch.utils.data.Dataset):
    """Audio-only clips (ESC-50 style): log-mel windows of ``seconds`` from each file of a manifest.

    Training requests take a random window; ``tag="eval"`` takes window ``clip`` of
    ``num_clips`` uniformly spaced ones (the whole file when it is no longer than ``seconds``;
    shorter files are padded with the silence floor). Returns ``audio`` (mel bands x frames),
    ``label`` (-1 if unknown) and ``index``. Files that cannot be read raise BadInput naming them.
    """

    def __init__(self, manifest: Manifest, *, seconds: float = 5.0, mel: MelSpec | None = None,
                 cache_dir: str | Path | None = None, seed: int = 0, num_clips: int = 1,
                 classes: list[str] | None = None) -> None:
        self.rows = manifest.rows
        self.mel = mel or MelSpec()
        self.cache = MelCache(cache_dir, self.mel)
        self.seconds, self.seed, self.num_clips = seconds, seed, num_clips
        self.classes = classes if classes is not None else manifest.classes
        cls = {c: k for k, c in enumerate(self.classes)}
        self.labels = torch.tensor([cls.get(r.label, -1) if r.label else -1 for r in self.rows], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    def eval_start(self, length: float, clip: int) -> float:
        """Start (s, from the file's or segment's start) of evaluation window ``clip`` of a file of ``length`` s."""
        room = max(0.0, length - self.seconds)
        return room * (clip + 0.5) / self.num_clips if self.num_clips > 1 else room / 2

    def __getitem__(self, req) -> dict:
        if isinstance(req, (int, np.integer)):
            req = ClipRequest(int(req), tag="eval")
        row = self.rows[req.index]
        try:
            mel, origin = self.cache.get(row.path, row.start, row.end)
        except Exception as e:
            raise BadInput(f"{row.path}: cannot read audio: {type(e).__name__}: {e}") from e
        length = mel.shape[1] / self.mel.frames_per_second
        if req.tag == "eval":
            t0 = self.eval_start(length, req.clip)
        else:
            room = max(0.0, length - self.seconds)
            t0 = float(np.random.default_rng([self.seed, 37, req.epoch, req.index, TAGS[req.tag]]).uniform(0, room))
        return {"audio": torch.from_numpy(window(mel, t0, self.seconds, self.mel)),
                "label": self.labels[req.index], "index": torch.tensor(req.index)}
