"""Built-in synthetic audio-visual dataset: a latent class drives a visual and an audio pattern.

Class c is a pair of factors, (glyph g = c mod 8, motion k = c div 8), shown in both modalities:

* video (3 x 2T x S' x S', S' = S + S/4): the glyph (a 5x5 binary shape, upscaled to ~2/5 of
  the frame) bounces across the frame in direction k; an instance colour, start point, speed
  and blinking; over drifting random colour gratings, a distractor sprite of a random shape,
  colour and motion, and pixel noise;
* audio (80 mel bands x 2T_a log-energy frames): a call at the band triple of glyph g plus a
  band of direction k, gliding in pitch and amplitude-modulated at rates set by k; over a
  random smooth noise spectrum, a distractor tone, frame noise and a random gain.

The two modalities share only the class: the glyph's blinking and the call's on/off rhythm are
independent (a shared instance rhythm is a shortcut: matching loudness to brightness solves
the pretext task without finding the glyph). Nuisances are per video, independent between the
modalities and strong enough (``nuisance``) that features of a randomly initialised network
probe far below pretrained ones. Many videos per class give the redundancy CM-ACC is about.
Labels are for probes and diagnostics only, never for pretraining.

A clip is cut at a random temporal offset (temporal jitter); its video and audio windows cover
the same span (``audio_frames / frames`` mel frames per video frame), so the pair stays
aligned. Video views get a random resized crop, horizontal flip and random grayscale (CM-ACC
§5), audio views a random gain. Everything is deterministic: a video from (seed, split, index),
a clip's augmentation from (seed, epoch, index, tag).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from .request import TAGS, ClipRequest

VIDEO_MEAN, VIDEO_STD = 0.45, 0.25  # pixel normalisation after clipping to [0, 1]
SPLITS = {"train": 0, "probe_train": 1, "probe_test": 2}
_S = """
##### ..#.. #...# ..... .###. ..#.. ##### #....
#...# ..#.. .#.#. ##### .###. .###. ..#.. #....
#...# ##### ..#.. ##### .###. ##### ..#.. #....
#...# ..#.. .#.#. ##### .###. .###. ..#.. #....
##### ..#.. #...# ..... .###. ..#.. ..#.. #####
"""
# eight 5x5 glyphs: square, plus, X, bar, column, diamond, T, L
SHAPES = np.array([[[c == "#" for c in row.split()[k]] for row in _S.strip().splitlines()] for k in range(8)])

class SyntheticAV(torch.utils.data.Dataset):
    def __init__(self, size: int, *, num_classes: int = 32, seed: int = 0, split: str = "train",
                 frames: int = 8, crop: int = 32, mel_bands: int = 80, audio_frames: int = 32,
                 nuisance: float = 0.35, views: int = 1) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if audio_frames % frames:
            raise ValueError(f"audio_frames={audio_frames} must be a multiple of frames={frames}")
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, got {views}")
        self.size, self.C, self.seed, self.split = size, num_classes, seed, split
        self.T, self.S, self.B, self.Ta = frames, crop, mel_bands, audio_frames
        self.r = audio_frames // frames  # mel frames per video frame
        self.src_T = 2 * frames  # source length: room for temporal jitter
        self.src_S = crop + crop // 4
        self.cell = max(1, self.src_S // 13)  # glyph cell size in px: the glyph spans ~2/5 of the frame
        self.nuisance, self.views = nuisance, views
        # Balanced labels, shuffled per split.
        rng = np.random.default_rng([seed, 7919, SPLITS[split]])
        self.labels = torch.from_numpy(rng.permutation(np.arange(size) % num_classes)).long()
        self._make_classes()

    # ---- the latent classes (shared by all splits of one seed) ----
    def _make_classes(self) -> None:
        """Class c = (glyph c % 8, motion c // 8): 8 glyphs x ceil(C / 8) directions, paired
        one-to-one in audio with (a band triple) x (a direction band, pitch glide, modulation)."""
        rng = np.random.default_rng([self.seed, 104729])
        C, B, n_shapes = self.C, self.B, 8
        n_dirs = -(-C // n_shapes)
        self.shape_of = np.arange(C) % n_shapes
        self.dir_of = np.arange(C) // n_shapes
        theta = 2 * math.pi * np.arange(n_dirs) / n_dirs + 0.4
        self.class_motion = n_dirs > 1  # with <= 8 classes the direction is per-video nuisance
        self.direction = theta[self.dir_of].astype(np.float32)  # glyph motion, radians
        self.glyphs = SHAPES[self.shape_of].astype(np.float32)
        # audio: one band triple per glyph (spread over the mel axis), one band per direction
        starts = rng.permutation(np.linspace(6, B - 14, n_shapes).round())
        spacing = rng.integers(3, 7, (n_shapes, 2)).cumsum(1)
        triples = np.concatenate([starts[:, None], starts[:, None] + spacing], 1)
        dir_band = rng.permutation(np.linspace(4, B - 5, n_dirs + 2)[1:-1].round())
        bands = [triples[self.shape_of]] + ([dir_band[self.dir_of, None]] if self.class_motion else [])
        self.bands = np.concatenate(bands, 1).astype(np.float32)  # C x (3 or 4) band centres
        self.glide = (2.0 * np.cos(theta))[self.dir_of].astype(np.float32) * self.class_motion  # bands per source clip
        self.am_rate = (1.0 + 1.5 * (1 + np.sin(theta)))[self.dir_of].astype(np.float32)  # cycles per clip

    def __len__(self) -> int:
        return self.size

    # ---- one source video (deterministic in seed, split, index) ----
    def instance(self, index: int) -> dict:
        """The per-video parameters of video ``index``: cheap; rendering happens per window."""
        if not 0 <= index < self.size:
            raise IndexError(f"video index {index} out of range for {self.split} split of size {self.size}")
        y = int(self.labels[index])
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        nz, T, S, B = self.nuisance, self.src_T, self.src_S, self.B
        rhythm = (rng.random(T) < 0.5).astype(np.float32)  # the call's on/off pattern, per video frame
        rhythm[rng.integers(T)] = 1.0
        blink = (rng.random(T) < 0.5).astype(np.float32)  # the glyph's, independent of the call's
        blink[rng.integers(T)] = 1.0
        up = np.ones((self.cell, self.cell), np.float32)  # 5x5 pattern -> g x g sprite, g = 5 * cell
        dir_jit = self.direction[y] + rng.normal(0, 0.15) if self.class_motion else rng.uniform(0, 2 * np.pi)
        band = np.arange(B, dtype=np.float32)
        return dict(
            label=y, rhythm=rhythm,
            base=(0.5 + rng.uniform(-0.15, 0.15, 3) * nz).astype(np.float32),
            # gratings: spatial frequency, orientation, phase, temporal drift, colour
            gratings=[(rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi),
                       rng.uniform(-0.4, 0.4), (rng.uniform(-0.25, 0.25, 3) * nz).astype(np.float32))
                      for _ in range(3)],
            sprites=[  # (pattern, start, velocity, colour, per-frame amplitude)
                (np.kron(self.glyphs[y], up), rng.uniform(0, S, 2),
                 rng.uniform(1.0, 1.5) * np.array([np.sin(dir_jit), np.cos(dir_jit)]),
                 rng.uniform(0.5, 0.8, 3).astype(np.float32), 0.6 + 0.4 * blink),
                (np.kron((rng.random((5, 5)) < 0.5).astype(np.float32), up), rng.uniform(0, S, 2),
                 rng.uniform(-1.2, 1.2, 2), (rng.uniform(0.2, 0.6, 3) * rng.choice([-1, 1]) * nz).astype(np.float32),
                 0.35 + 0.65 * (rng.random(T) < 0.5).astype(np.float32)),
            ],
            spectrum=sum(c * np.cos(np.pi * k * band / B) for k, c in enumerate(rng.normal(0, 1.0, 4) * nz)),
            am_phase=rng.uniform(0, 2 * np.pi),
            dist_band=rng.uniform(3, B - 3),
            dist_env=np.repeat((rng.random(T) < 0.5).astype(np.float32), self.r),
            gain=rng.normal(0, 0.5) * nz,
            audio_seed=int(rng.integers(2**31)),
        )

    def render_video(self, inst: dict, o: int) -> np.ndarray:
        """Frames o .. o+T-1 of a video: T x S' x S' x 3 in [0, 1] (before pixel noise)."""
        T, S = self.T, self.src_S
        t = np.arange(o, o + T, dtype=np.float32)
        yy, xx = np.meshgrid(np.arange(S, dtype=np.float32) / S, np.arange(S, dtype=np.float32) / S, indexing="ij")
        # Drifting gratings: sum_g cos(spatial_g + drift_g t) colour_g, with cos(A + B) expanded,
        # as one (P x 2G) @ (2G x 3T) product over the P = S x S pixels.
        space, time_ = [], []
        for f, phi, ph, drift, colour in inst["gratings"]:
            spatial = (2 * np.pi * f * (xx * np.cos(phi) + yy * np.sin(phi)) + ph).ravel()
            space += [np.cos(spatial), np.sin(spatial)]
            time_ += [np.cos(drift * t)[:, None] * colour, -np.sin(drift * t)[:, None] * colour]  # T x 3 each
        waves = np.stack(space, 1, dtype=np.float32) @ np.stack(time_).reshape(len(time_), T * 3)  # P x 3T
        frames = waves.reshape(S, S, T, 3).transpose(2, 0, 1, 3) + inst["base"]  # T x S x S x 3
        g = 5 * self.cell
        ar, ti = np.arange(g), np.arange(T)[:, None, None]
        span = S - g  # sprites bounce inside the frame: position folded into [0, span]
        for sprite, pos, vel, colour, amp in inst["sprites"]:
            p = np.abs(((pos[None] * span / S + vel[None] * t[:, None]) % (2 * span)) - span)  # T x 2, triangle wave
            r0c0 = np.rint(p).astype(int)
            rows = r0c0[:, 0:1] + ar[None]  # T x g
            cols = r0c0[:, 1:2] + ar[None]
            frames[ti, rows[:, :, None], cols[:, None, :]] += (
                (amp[o:o + T, None, None] * sprite[None])[..., None] * colour)
        return frames

    def render_audio(self, inst: dict, o: int) -> np.ndarray:
        """Mel frames of video frames o .. o+T-1: B x T_a log-energies."""
        y, r, B = inst["label"], self.r, self.B
        Ta_src, lo, hi = self.src_T * r, o * r, (o + self.T) * r
        band = np.arange(B, dtype=np.float32)[:, None]
        frame_noise = np.random.default_rng(inst["audio_seed"]).standard_normal((B, Ta_src), dtype=np.float32)
        tt = np.arange(lo, hi, dtype=np.float32) / Ta_src
        env = np.repeat(inst["rhythm"], r)[lo:hi] * (0.6 + 0.4 * np.cos(2 * np.pi * self.am_rate[y] * 2 * tt + inst["am_phase"]))
        shift = self.glide[y] * (tt - 0.5)[None]  # pitch glide: bands move over the clip
        call = sum(np.exp(-0.5 * ((band - b - shift) / 1.2) ** 2) for b in self.bands[y])
        distractor = np.exp(-0.5 * ((band - inst["dist_band"]) / 1.5) ** 2) * inst["dist_env"][lo:hi][None]
        audio = (inst["spectrum"][:, None] + 0.35 * frame_noise[:, lo:hi] + 1.6 * call * env[None]
                 + 1.6 * self.nuisance * distractor + inst["gain"])
        return audio.astype(np.float32)

    # ---- one clip: temporal window + augmentation ----
    def _view(self, inst: dict, rng: np.random.Generator | None, modality: str | None = None):
        """(video 3 x T x S x S, audio B x T_a) of one clip; None for a stream not asked for.

        All random draws happen in a fixed order whatever ``modality`` is, so a video-only
        request renders exactly the video of the full request.
        """
        T, S, Sp = self.T, self.S, self.src_S
        if rng is None:  # eval: centred window, the full frame resized, no augmentation
            o, box, flip, gray, gain, noise_seed = (self.src_T - T) // 2, (0, 0, Sp, Sp), False, False, 0.0, None
        else:
            o = int(rng.integers(0, self.src_T - T + 1))  # temporal jitter
            area = rng.uniform(0.5, 1.0) * Sp * Sp  # random resized crop
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            h = int(round(min(Sp, math.sqrt(area / ratio))))
            w = int(round(min(Sp, math.sqrt(area * ratio))))
            box = (int(rng.integers(0, Sp - h + 1)), int(rng.integers(0, Sp - w + 1)), h, w)
            flip, gray = rng.random() < 0.5, rng.random() < 0.2
            gain, noise_seed = float(rng.normal(0, 0.3)), int(rng.integers(2**31))
        v = a = None
        if modality in (None, "video"):
            i0, j0, h, w = box
            frames = np.ascontiguousarray(self.render_video(inst, o)[:, i0:i0 + h, j0:j0 + w])
            v = torch.from_numpy(frames).permute(0, 3, 1, 2)  # T x 3 x h x w
            v = F.interpolate(v, size=(S, S), mode="bilinear", align_corners=False, antialias=True)
            if noise_seed is not None:
                noise = np.random.default_rng(noise_seed).standard_normal(v.shape, dtype=np.float32)
                v = v + torch.from_numpy(noise) * (0.06 * self.nuisance)
            if flip:
                v = v.flip(-1)
            if gray:
                v = (0.299 * v[:, 0] + 0.587 * v[:, 1] + 0.114 * v[:, 2])[:, None].expand(-1, 3, -1, -1)
            v = ((v.clamp(0.0, 1.0) - VIDEO_MEAN) / VIDEO_STD).permute(1, 0, 2, 3).contiguous().float()
        if modality in (None, "audio"):
            a = torch.from_numpy(self.render_audio(inst, o) + np.float32(gain))
        if modality not in (None, "video", "audio"):
            raise ValueError(f"modality must be None, 'video' or 'audio', got {modality!r}")
        return v, a

    def __getitem__(self, req) -> dict[str, torch.Tensor]:
        if isinstance(req, (int, np.integer)):
            req = ClipRequest(int(req))
        inst = self.instance(req.index)
        out = {"index": torch.tensor(req.index), "label": self.labels[req.index]}
        rng = None if req.tag == "eval" else np.random.default_rng([self.seed, 31, req.epoch, req.index, TAGS[req.tag]])
        v, a = self._view(inst, rng, req.modality)
        out.update({k: x for k, x in (("video", v), ("audio", a)) if x is not None})
        if self.views == 2 and req.tag != "eval":
            v, a = self._view(inst, rng, req.modality)
            out.update({k: x for k, x in (("video_k", v), ("audio_k", a)) if x is not None})
        return out
