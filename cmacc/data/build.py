"""Datasets for a run, from its config: the built-in synthetic data or a manifest of real videos."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import Config, ConfigError
from .audio import MelSpec
from .synthetic import SyntheticAV

log = logging.getLogger("cmacc")


@dataclass
class Data:
    train: torch.utils.data.Dataset
    probe_train: torch.utils.data.Dataset | None = None
    probe_test: torch.utils.data.Dataset | None = None
    info: dict = field(default_factory=dict)  # what was read, left out and how (for run.json / summary)
    scan: dict | None = None  # manifest data: the scan records used, {path: ScanRecord}
    manifest: object | None = None  # manifest data: the training split's rows (the data fingerprint reads them)

    @property
    def labels(self) -> torch.Tensor:
        return self.train.labels  # -1 where unknown; diagnostics only


def mel_spec(cfg: Config) -> MelSpec:
    a = cfg.audio
    return MelSpec(sample_rate=a.sample_rate, n_fft=a.n_fft, win_length=a.win_length, hop_length=a.hop_length,
                   n_mels=cfg.data.mel_bands, fmin=a.fmin, fmax=a.fmax)


def mel_cache_dir(cfg: Config) -> str:
    """Where whole-file log-mel features are cached: data.cache_dir, else ~/.cache/cmacc/mel."""
    return cfg.data.cache_dir or str(Path.home() / ".cache" / "cmacc" / "mel")


def build_data(cfg: Config, device: torch.device, out: Path | None = None, scan: dict | None = None,
               views: int = 1) -> Data:
    """The run's datasets. ``scan``: scan records to use instead of data.scan or a fresh scan
    (ranks other than 0 get rank 0's). ``views``: augmented views per training clip (2: a second
    view for the keys; the method's family says, cmacc.methods.protocol.Family.key_views)."""
    d = cfg.data
    if d.name == "synthetic":
        common = dict(num_classes=d.num_classes, seed=cfg.seed, frames=d.frames, crop=d.size,
                      mel_bands=d.mel_bands, audio_frames=d.audio_frames or 4 * d.frames, nuisance=d.nuisance)
        return Data(SyntheticAV(d.train_size, split="train", views=views, **common),
                    SyntheticAV(d.probe_train_size, split="probe_train", **common),
                    SyntheticAV(d.probe_test_size, split="probe_test", **common),
                    {"source": "synthetic", "train_clips": d.train_size})
    if d.name == "omniglot":
        return _omniglot_data(cfg, views)
    return _manifest_data(cfg, device, out, views, scan)


def _omniglot_data(cfg: Config, views: int) -> Data:
    """Spatial-MultiOmniglot pairs (cmacc.reproduce.omniglot): x in the video slot, y in the audio slot."""
    from ..reproduce.omniglot import PAPER_SIZES, SpatialMultiOmniglot, make_alphabets, mutual_information, read_glyphs
    d = cfg.data
    glyphs = read_glyphs(d.omniglot)
    alphabets, how = make_alphabets(glyphs, PAPER_SIZES, cfg.seed)
    common = dict(glyphs=glyphs, alphabets=alphabets, k=d.chars, seed=cfg.seed, train_drawers=d.train_drawers)
    mi = mutual_information(PAPER_SIZES, d.chars)
    return Data(SpatialMultiOmniglot(size=d.train_size, split="train", views=views, positive=d.positive, **common),
                SpatialMultiOmniglot(size=d.probe_train_size, split="probe_train", **common),
                SpatialMultiOmniglot(size=d.probe_test_size, split="probe_test", **common),
                {"source": "omniglot", "zip": d.omniglot, "train_clips": d.train_size, "chars": d.chars,
                 "mi_nats": mi, "exp_mi": float(np.exp(mi)), "alphabets": how})


def _manifest_data(cfg: Config, device: torch.device, out: Path | None, views: int, scan: dict | None) -> Data:
    from .manifest import read_manifest
    from .real import ManifestAV
    from .scan import read_report, scan_paths, summarize, write_report

    d = cfg.data
    manifest = read_manifest(d.manifest)
    train_rows = manifest.split(d.split)
    if not len(train_rows):
        have = sorted({r.split for r in manifest.rows})
        raise ConfigError(f"config key 'data.split': manifest {d.manifest} has no rows of split {d.split!r} "
                          f"(splits: {have})")
    probe_splits = [s for s in ("probe_train", "probe_test") if len(manifest.split(s))]
    wanted = train_rows.rows + [r for s in probe_splits for r in manifest.split(s).rows]
    if scan is not None:
        scan_path = d.scan or (str(out / "scan.json") if out else None)
    elif d.scan:
        scan = read_report(d.scan)
        scan_path = d.scan
    else:
        log.info("scanning %d files of %s (decode check); pass data.scan=<report> to reuse a scan", len(wanted), d.manifest)
        records = scan_paths([r.path for r in wanted], clip_seconds=d.frames / d.fps, workers=d.num_workers)
        scan = {r.path: r for r in records}
        scan_path = str(out / "scan.json") if out else None
        if scan_path:
            write_report(records, scan_path)
        log.info("%s", summarize(records))
    mel = mel_spec(cfg)
    cache = mel_cache_dir(cfg)
    common = dict(frames=d.frames, fps=d.fps, crop=d.size, mel=mel, cache_dir=cache, backend=d.backend,
                  gpu=device.type == "cuda", on_missing_audio=d.on_missing_audio, on_corrupt=d.on_corrupt,
                  on_blank=d.on_blank,
                  seed=cfg.seed, classes=manifest.classes)
    train = ManifestAV(train_rows, scan, views=views, num_clips=d.eval_clips, **common)
    probes = [ManifestAV(manifest.split(s), scan, num_clips=1, **common) for s in probe_splits] \
        if len(probe_splits) == 2 else [None, None]
    info = {"source": "manifest", "manifest": d.manifest, "split": d.split, "scan": scan_path,
            "train_clips": len(train), "excluded": train.excluded, "backends": train.backends(),
            "mel": mel.to_dict(), "audio_frames": train.audio_frames, "classes": len(manifest.classes)}
    for e in train.excluded:
        log.warning("left out %s: %s (%s)", e["path"], e["reason"], e["detail"])
    return Data(train, probes[0], probes[1], info, scan, train_rows)
