"""Video clips: where to cut them, how to decode them (PyAV, DALI CPU, DALI GPU), how to augment.

A clip is T frames sampled at ``fps`` (CM-ACC: 16 frames at 10 fps) starting at t0 on the
container's timeline. Training draws t0 uniformly (temporal jitter) and a random resized crop,
horizontal flip and grayscale (CM-ACC §5); evaluation takes ``num_clips`` uniformly spaced
windows and a centre crop. Everything random about a clip is drawn up front into a
:class:`ClipPlan`, so whichever backend decodes the frames, the clip is the same.

Source frame for time t: index floor((t - v0) * fps_src + 1e-6) for constant-frame-rate files
(v0 = timestamp of the first decoded frame); DALI is given the indices. PyAV finds them by
timestamp after a seek, except in AVI files, whose timestamps are unreliable (MPEG-4 part 2 with
B-frames gives pts 0, 2, 3, ...): there it counts decoded frames from the start, as DALI does.
Variable-frame-rate files go to PyAV, which takes the last frame at or before t.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

MEAN = (0.43216, 0.394666, 0.37645)  # Kinetics RGB statistics (as torchvision's video models)
STD = (0.22803, 0.22145, 0.216989)


class DecodeError(RuntimeError):
    """A file could not be decoded; the message names it."""


@dataclass(frozen=True)
class ClipPlan:
    t0: float  # clip start, container time (s)
    times: tuple[float, ...]  # container times of the T frames
    crop: tuple[float, float, float, float]  # (top, left, height, width), fractions of the frame
    flip: bool = False
    gray: bool = False


def plan_clip(*, begin: float, end: float, frames: int, fps: float, aspect: float,
              rng: np.random.Generator | None = None, clip_index: int = 0, num_clips: int = 1,
              scale: tuple[float, float] = (0.3, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
              p_flip: float = 0.5, p_gray: float = 0.2) -> ClipPlan:
    """Plan a clip of ``frames`` frames at ``fps`` within [begin, end) of a video whose frames are
    ``aspect`` = width / height. ``rng`` None: evaluation clip ``clip_index`` of ``num_clips``."""
    span = frames / fps
    room = max(0.0, (end - begin) - span)
    if rng is None:
        t0 = begin + room * (clip_index + 0.5) / num_clips if num_clips > 1 else begin + room / 2
        crop = _centre_square(aspect)
        flip = gray = False
    else:
        t0 = begin + float(rng.uniform(0.0, room)) if room > 0 else begin
        for _ in range(10):  # torchvision's RandomResizedCrop, in fractions of the frame
            area = rng.uniform(*scale)
            r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
            w = math.sqrt(area * r / aspect)  # width fraction: (w W)/(h H) = r, w h = area
            h = math.sqrt(area / r * aspect)
            if w <= 1.0 and h <= 1.0:
                crop = (float(rng.uniform(0, 1 - h)), float(rng.uniform(0, 1 - w)), h, w)
                break
        else:
            crop = _centre_square(aspect)
        flip, gray = bool(rng.random() < p_flip), bool(rng.random() < p_gray)
    times = tuple(t0 + i / fps for i in range(frames))
    return ClipPlan(t0, times, crop, flip, gray)


def _centre_square(aspect: float) -> tuple[float, float, float, float]:
    """The largest centred square of a frame of ``aspect`` = W / H: (h, w) = min(H, W) / (H, W)."""
    h, w = min(1.0, aspect), min(1.0, 1.0 / aspect)
    return ((1 - h) / 2, (1 - w) / 2, h, w)


def frame_indices(times, v0: float, fps_src: float, n_frames: int | None) -> np.ndarray:
    idx = np.floor((np.asarray(times) - v0) * fps_src + 1e-6).astype(np.int64)
    idx = np.maximum(idx, 0)
    if n_frames:
        idx = np.minimum(idx, n_frames - 1)
    return idx


def _decode_by_time(c, vs, tb: float, times: np.ndarray, path) -> np.ndarray:
    """Variable frame rate: for each time the last decoded frame at or before it."""
    decoded = []
    for fr in c.decode(vs):
        if fr.pts is None:
            continue
        decoded.append((float(fr.pts * tb), fr.to_ndarray(format="rgb24")))
        if decoded[-1][0] > times.max():
            break
    if not decoded:
        raise DecodeError(f"{path}: no frames decoded")
    ts = np.array([t for t, _ in decoded])
    pick = np.clip(np.searchsorted(ts, times + 1e-9, side="right") - 1, 0, len(ts) - 1)
    return np.stack([decoded[k][1] for k in pick])


def decode_pyav(path: str | Path, times, *, v0: float, fps_src: float, n_frames: int | None,
                vfr: bool = False, by_count: bool = False, stream: int = 0) -> np.ndarray:
    """RGB uint8 frames (T, H, W, 3) for the container ``times`` (see module docstring).
    ``by_count``: index frames by decode order from the start (AVI) instead of by timestamp.
    ``stream``: which of the file's video streams (the scan's choice, ScanRecord.video_stream)."""
    import av

    times = np.asarray(times, dtype=np.float64)
    want = None if vfr else frame_indices(times, v0, fps_src, n_frames)
    try:
        with av.open(str(path)) as c:
            vs = c.streams.video[stream]
            vs.thread_type = "AUTO"
            tb = float(vs.time_base)
            if not by_count:
                first = float(times.min()) if vfr else v0 + int(want.min()) / fps_src
                c.seek(max(0, int((first - 0.5 / fps_src) / tb)), stream=vs, backward=True)
            if vfr:  # by timestamp: the last frame at or before each time
                return _decode_by_time(c, vs, tb, times, path)
            got: dict[int, np.ndarray] = {}
            last = None
            need, top = set(int(i) for i in want), int(want.max())
            for count, fr in enumerate(c.decode(vs)):
                if by_count:
                    i = count
                elif fr.pts is None:
                    continue
                else:
                    i = int(math.floor((float(fr.pts * tb) - v0) * fps_src + 0.5))
                if i in need:
                    got[i] = fr.to_ndarray(format="rgb24")
                last = (i, fr)
                if i >= top:
                    break
            if not got and last is None:
                raise DecodeError(f"{path}: no frames decoded")
            frames = []
            for i in want:  # frames past the end of the stream: hold the last one
                i = int(i)
                if i not in got:
                    if last is not None and i >= last[0]:
                        got[i] = last[1].to_ndarray(format="rgb24")
                    else:
                        raise DecodeError(f"{path}: frame {i} was not decoded")
                frames.append(got[i])
            return np.stack(frames)
    except DecodeError:
        raise
    except Exception as e:  # av errors: corrupt streams
        raise DecodeError(f"{path}: {type(e).__name__}: {e}") from e


class DaliDecoder:
    """Batch decoding with DALI: ``device="cpu"`` (VP8/VP9/MJPEG) or ``"mixed"`` (NVDEC).

    One pipeline per decoder, fed encoded files and per-sample frame indices. A failing sample
    invalidates a DALI pipeline, so on any error the pipeline is rebuilt and the batch is
    decoded file by file to find the culprit; ``decode`` then returns the error in its place.
    """

    def __init__(self, device: str = "cpu", max_batch: int = 32, num_threads: int = 2, device_id: int | None = None):
        from nvidia.dali import fn, pipeline_def, types  # noqa: F401  (fail early if DALI is absent)
        if device not in ("cpu", "mixed"):
            raise ValueError(f"DALI decoder device must be 'cpu' or 'mixed', got {device!r}")
        self.device, self.max_batch, self.num_threads = device, max_batch, num_threads
        self.device_id = device_id if device == "mixed" else None
        if device == "mixed" and self.device_id is None:
            self.device_id = torch.cuda.current_device()
        self._pipe = None

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(batch_size=self.max_batch, num_threads=self.num_threads, device_id=self.device_id,
                      exec_dynamic=True, prefetch_queue_depth=1)
        def pipe():
            enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
            idx = fn.external_source(name="idx", dtype=types.INT32, ndim=1)
            # pad_mode="none": frames it cannot decode are an error, never silent black frames
            return fn.decoders.video(enc, frames=idx, device=self.device, pad_mode="none")

        p = pipe()
        p.build()
        return p

    def _run(self, encoded, indices):
        if self._pipe is None:
            self._pipe = self._build()
        self._pipe.feed_input("enc", encoded)
        self._pipe.feed_input("idx", [np.asarray(i, np.int32) for i in indices])
        (out,) = self._pipe.run()
        return [self._to_torch(out[k]) for k in range(len(encoded))]

    def _to_torch(self, t) -> torch.Tensor:
        if self.device == "cpu":
            return torch.from_numpy(np.array(t))
        from nvidia.dali.plugin.pytorch import feed_ndarray
        dst = torch.empty(t.shape(), dtype=torch.uint8, device=f"cuda:{self.device_id}")
        feed_ndarray(t, dst, cuda_stream=torch.cuda.current_stream(self.device_id))
        return dst

    def decode(self, encoded: list[np.ndarray], indices: list[np.ndarray], names: list[str]):
        """Frames (T, H, W, 3) uint8 per sample, or a DecodeError in the place of a failed one."""
        out: list = []
        for s in range(0, len(encoded), self.max_batch):
            enc, idx, nm = encoded[s:s + self.max_batch], indices[s:s + self.max_batch], names[s:s + self.max_batch]
            try:
                out += self._run(enc, idx)
            except Exception:
                self._pipe = None  # "Current pipeline object is no longer valid"
                for e, i, n in zip(enc, idx, nm):
                    try:
                        out += self._run([e], [i])
                    except Exception as err:
                        self._pipe = None
                        out.append(DecodeError(f"{n}: DALI ({self.device}) failed: {str(err).splitlines()[-1][:300]}"))
        return out


def augment(frames: torch.Tensor, plan: ClipPlan, size: int, mean=MEAN, std=STD) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) on any device -> normalised float clip (3, T, size, size)."""
    T, H, W, _ = frames.shape
    top, left, h, w = plan.crop
    y0, x0 = int(round(top * H)), int(round(left * W))
    y1, x1 = max(y0 + 1, min(H, int(round((top + h) * H)))), max(x0 + 1, min(W, int(round((left + w) * W))))
    x = frames[:, y0:y1, x0:x1].permute(0, 3, 1, 2).float().div_(255.0)  # T x 3 x h x w
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if plan.flip:
        x = x.flip(-1)
    if plan.gray:
        x = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None].expand(-1, 3, -1, -1)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return ((x.clamp(0, 1) - m) / s).permute(1, 0, 2, 3).contiguous()  # 3 x T x S x S
