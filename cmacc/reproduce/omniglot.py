"""Spatial-MultiOmniglot (Ozair et al., 2019; CM-ACC Appendix A): paired images with known MI.

A canvas of 3 x 3 cells of 32 px. In each used cell i (the first k, row-major) a label
z_i ~ Uniform(l_i): x shows character z_i of alphabet i, y shows character (z_i + 1) mod l_i of the
same alphabet, each by a randomly chosen drawer (x's and y's drawers differ). Unused cells stay
blank, so the input size and cost do not change with k. Then I(x; y) = sum_{i<k} log l_i exactly:
y determines z (and x) up to the drawers, and z is uniform.

Alphabets. The paper uses the nine largest alphabets of Omniglot's background set, of sizes
PAPER_SIZES. Any ``images_background*.zip`` (``<root>/<alphabet>/<character>/<drawing>.png``)
works: when it holds enough characters, alphabet i is l_i characters of its own; when it holds
fewer (the small sets: 136 characters in images_background_small1), alphabet i is a seeded random
choice of l_i distinct characters from all of the zip's characters, so alphabets may share
characters -- they never share a cell, so the MI is unchanged; what changes is that the same glyph
can mean different labels in different cells. ``alphabets_note`` says which construction ran.

Drawers (20 per character) are split: the first ``train_drawers`` for pretraining and for the
probe's training set, the rest for the probe's test set (``probe_test_seen`` draws test pairs by the
pretraining drawers instead: the protocol without a drawer split). Every pair is fixed by (seed, split,
index) -- the training set is a fixed set of ``size`` pairs, as in the paper (50K there).
"""
from __future__ import annotations

import functools
import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..choices import POSITIVES  # SMoCo's second view (data.positive; see SpatialMultiOmniglot)
from ..data.request import TAGS, ClipRequest
from ..errors import InputError

PAPER_SIZES = (55, 52, 48, 47, 46, 43, 42, 41, 41)  # Tifinagh, Hiragana, Gujarati, Katakana, ...
CELL, GRID = 32, 3
# probe_test: held-out drawers; probe_test_seen: new pairs by the pretraining drawers (the protocol
# without a drawer split: the same glyph images as in training, in new combinations)
SPLITS = {"train": 0, "probe_train": 1, "probe_test": 2, "probe_test_seen": 3}
SHIFT = 2  # px, positive="shift": the glyphs' blank margin, so a shift crops little ink


class OmniglotError(InputError, ValueError):
    """The Omniglot zip is missing, unreadable or not in the background-set layout."""


@dataclass
class Glyphs:
    images: np.ndarray  # characters x drawers x CELL x CELL, float32 in [0, 1], ink = 1
    names: list[str]  # "alphabet/character"
    alphabets: list[str]  # the zip's alphabet of each character


def _glyph(png: bytes) -> np.ndarray:
    from PIL import Image
    im = Image.open(io.BytesIO(png)).convert("L").resize((CELL - 4, CELL - 4), Image.BOX)
    ink = 1.0 - np.asarray(im, dtype=np.float32) / 255.0  # Omniglot draws black on white
    out = np.zeros((CELL, CELL), np.float32)
    out[2:-2, 2:-2] = ink
    return out


def read_glyphs(path: str | Path) -> Glyphs:
    """Every character's drawings, resized to a 28 px glyph in a 32 px cell. Read once per process
    and file version: a reproduction builds the data for every run and again for its probe."""
    path = Path(path)
    if not path.is_file():
        raise OmniglotError(f"{path}: no such file (an Omniglot images_background*.zip)")
    st = path.stat()
    return _read_glyphs(str(path.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=2)
def _read_glyphs(path: str, mtime_ns: int, size: int) -> Glyphs:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise OmniglotError(f"{path} is not a zip file") from None
    chars: dict[tuple[str, str], list[str]] = {}
    with zf:
        for name in zf.namelist():
            parts = name.split("/")
            if len(parts) == 4 and parts[3].lower().endswith(".png"):
                chars.setdefault((parts[1], parts[2]), []).append(name)
        if not chars:
            raise OmniglotError(f"{path}: no <root>/<alphabet>/<character>/<drawing>.png entries")
        drawers = min(len(v) for v in chars.values())
        if drawers < 6:
            raise OmniglotError(f"{path}: a character has {drawers} drawing(s); the splits need >= 6")
        keys = sorted(chars)
        images = np.stack([[_glyph(zf.read(f)) for f in sorted(chars[k])[:drawers]] for k in keys])
    return Glyphs(images, [f"{a}/{c}" for a, c in keys], [a for a, _ in keys])


def make_alphabets(glyphs: Glyphs, sizes: tuple[int, ...], seed: int) -> tuple[list[np.ndarray], str]:
    """(character indices of each alphabet, how they were made); see the module docstring."""
    n = len(glyphs.names)
    if n < max(sizes):
        raise OmniglotError(f"the zip holds {n} characters; an alphabet of {max(sizes)} needs that many")
    real = {}
    for i, a in enumerate(glyphs.alphabets):
        real.setdefault(a, []).append(i)
    ranked = sorted(real.values(), key=len, reverse=True)
    if len(ranked) >= len(sizes) and all(len(r) >= s for r, s in zip(ranked, sizes)):
        return ([np.array(r[:s]) for r, s in zip(ranked, sizes)],
                f"the zip's {len(sizes)} largest alphabets, first l_i characters of each")
    rng = np.random.default_rng([seed, 3571])
    return ([np.sort(rng.choice(n, s, replace=False)) for s in sizes],
            f"pseudo-alphabets: alphabet i is {'/'.join(map(str, sizes))} distinct characters drawn (seed "
            f"{seed}) from all {n} characters of the zip, whose {len(ranked)} alphabets hold "
            f"{'/'.join(str(len(r)) for r in ranked)}; alphabets may share characters, never a cell")


def mutual_information(sizes: tuple[int, ...], k: int) -> float:
    """I(x; y) in nats with the first k cells used."""
    return float(sum(math.log(s) for s in sizes[:k]))


class SpatialMultiOmniglot(torch.utils.data.Dataset):
    """Pairs (x, y) as a two-modality dataset: ``video`` = x and ``audio`` = y, each 1 x 1 x 96 x 96
    (channels x frames x height x width: a one-frame clip). ``views=2`` adds ``video_k`` /
    ``audio_k``, SMoCo's positive: with ``positive="drawer"`` another drawing of the same labels
    (by another pretraining drawer), with ``positive="shift"`` the same drawings with each cell
    shifted by up to +-SHIFT px, drawn afresh at every read: for a ``ClipRequest`` from its own stream
    (seed, epoch, index, tag), as every augmentation here is, so a resumed run reads what the
    uninterrupted one did; for a plain integer index from torch's global generator.
    ``labels`` is the tuple z of the used cells in mixed radix (one id per latent class);
    ``cell_labels`` is z itself."""

    def __init__(self, glyphs: Glyphs, alphabets: list[np.ndarray], k: int, size: int, *, split: str = "train",
                 seed: int = 0, train_drawers: int = 15, views: int = 1, positive: str = "drawer") -> None:
        if not 1 <= k <= min(len(alphabets), GRID * GRID):
            raise ValueError(f"k must be 1..{min(len(alphabets), GRID * GRID)}, got {k}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if positive not in POSITIVES:
            raise ValueError(f"positive must be one of {POSITIVES}, got {positive!r}")
        D = glyphs.images.shape[1]
        if not 3 <= train_drawers <= D - 3:
            raise ValueError(f"train_drawers must leave >= 3 of the {D} drawers on each side, got {train_drawers}")
        self.glyphs, self.alphabets, self.k, self.size, self.views = glyphs, alphabets, k, size, views
        self.positive = positive
        self.sizes = np.array([len(a) for a in alphabets[:k]])
        self.drawers = np.arange(train_drawers) if split != "probe_test" else np.arange(train_drawers, D)
        rng = np.random.default_rng([seed, 8191, SPLITS[split]])
        self.cell_labels = (rng.random((size, k)) * self.sizes).astype(np.int64)  # z_i ~ U(l_i)
        radix = np.concatenate([[1], np.cumprod(self.sizes[:-1])])
        self.labels = torch.from_numpy(self.cell_labels @ radix)
        self.seed, self.split = seed, split

    def __len__(self) -> int:
        return self.size

    def _canvas(self, chars: np.ndarray, drawers: np.ndarray, shifts: np.ndarray | None = None) -> torch.Tensor:
        """The used cells' glyphs on a blank canvas; ``shifts`` (k x 2 ints, rows/columns) moves
        each cell's glyph within its cell, ink pushed past the cell's edge dropped."""
        canvas = np.zeros((GRID * CELL, GRID * CELL), np.float32)
        for i, (c, d) in enumerate(zip(chars, drawers)):
            r, col = divmod(i, GRID)
            glyph = self.glyphs.images[c, d] if shifts is None else shift_glyph(self.glyphs.images[c, d], *shifts[i])
            canvas[r * CELL:(r + 1) * CELL, col * CELL:(col + 1) * CELL] = glyph
        return torch.from_numpy(canvas)[None, None]  # 1 x 1 x H x W

    def pair_characters(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(x's characters, y's characters), one per used cell: y's label is the successor of x's."""
        z = self.cell_labels[index]
        x = np.array([self.alphabets[i][z[i]] for i in range(self.k)])
        y = np.array([self.alphabets[i][(z[i] + 1) % self.sizes[i]] for i in range(self.k)])
        return x, y

    def drawer_choice(self, index: int, view: int) -> tuple[np.ndarray, np.ndarray]:
        """x's and y's drawers per cell for view 0 (the pair) or 1 (the second rendering, SMoCo's
        positive). In every cell x's drawer differs from y's, and view 1's from view 0's."""
        rng = np.random.default_rng([self.seed, 131, SPLITS[self.split], index])
        n = len(self.drawers)
        perms = np.stack([rng.permutation(self.drawers) for _ in range(self.k)])  # k x n
        return perms[:, (2 * view) % n], perms[:, (2 * view + 1) % n]

    def __getitem__(self, req) -> dict:
        index = req.index if isinstance(req, ClipRequest) else int(req)
        if not 0 <= index < self.size:
            raise IndexError(f"pair {index} out of range for the {self.split} split of size {self.size}")
        modality = req.modality if isinstance(req, ClipRequest) else None
        xc, yc = self.pair_characters(index)
        out = {"index": torch.tensor(index), "label": self.labels[index]}
        for view, suffix in ((0, ""), (1, "_k"))[:self.views]:
            shift = view == 1 and self.positive == "shift"
            dx, dy = self.drawer_choice(index, 0 if shift else view)
            sx, sy = self.shifts(req) if shift else (None, None)
            if modality in (None, "video"):
                out["video" + suffix] = self._canvas(xc, dx, sx)
            if modality in (None, "audio"):
                out["audio" + suffix] = self._canvas(yc, dy, sy)
        return out

    def shifts(self, req) -> tuple[np.ndarray, np.ndarray]:
        """positive="shift": x's and y's per-cell offsets (k x 2 ints each, rows/columns). Both are
        drawn whichever modality is asked for, so a video-only read moves x as a full read does."""
        if isinstance(req, ClipRequest):
            rng = np.random.default_rng([self.seed, 47, req.epoch, req.index, TAGS[req.tag]])
            both = rng.integers(-SHIFT, SHIFT + 1, (2, self.k, 2))
        else:
            both = torch.randint(-SHIFT, SHIFT + 1, (2, self.k, 2)).numpy()
        return both[0], both[1]


def shift_glyph(glyph: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """``glyph`` moved by dr rows and dc columns on a blank cell of its size."""
    out = np.zeros_like(glyph)
    h, w = glyph.shape
    out[max(dr, 0):h + min(dr, 0), max(dc, 0):w + min(dc, 0)] = glyph[max(-dr, 0):h - max(dr, 0),
                                                                      max(-dc, 0):w - max(dc, 0)]
    return out
