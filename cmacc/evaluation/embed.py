"""``cmacc embed``: the trained towers applied to a user's own files, as arrays a classifier or a
nearest-neighbour search reads directly.

    cmacc embed (--run DIR | --encoders FILE | --random-init) --data PATH [PATH ...] --out DIR
                [--tower video|audio|both] [--level clip|video] [--clips 10] [--stage layer4]

``--data``: folders (every video and audio file under them, label = parent folder), manifest CSVs,
or files. Videos are cut into the clips ``cmacc eval`` reads (``eval.crops`` = ``--clips``
uniformly spaced clips of eval.frames at eval.fps, eval.size² centre crops; the audio of the same
spans, log-mel with the encoder's pretraining parameters); audio-only files (wav, flac, ogg, ...)
into ``--clips`` windows of eval.audio_seconds, as ``cmacc eval esc50`` does (``--tower audio``).
A row is one stage's pooled features (``--stage``, default ``layer4``, the last stage; the
features ``cmacc eval``'s linear protocols and retrieval read), float32; ``--level video`` averages
a file's clips.

Writes OUT/video.npy and/or audio.npy (rows in the order of index.csv), index.csv (path, clip,
start_s, end_s, label) and embed.json (encoders and their pretraining data fingerprint, clip
settings, sample rate, this data's fingerprint, every skipped file with its reason). Files that
cannot be used are skipped under the bad-input policy (scan problems, no audio for an audio tower,
a decoder error) and listed; one bad file never stops the run.

Bounded and resumable: files are processed in shards of ``--shard-files``, each written atomically
to OUT/shards/ with the request's signature; a rerun with the same request and OUT skips finished
shards (a finished OUT: nothing at all), so an interrupted run's result is byte-identical to an
uninterrupted one. The final arrays are assembled shard by shard into memory-mapped .npy files, so
peak memory follows the shard, not the number of files.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import Config, ConfigError
from ..data import fingerprint
from ..data.manifest import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS, Manifest, Row, from_folder, read_manifest
from ..errors import InputError
from ..system import provenance
from ..system.checkpoint import write_atomic

log = logging.getLogger("cmacc")
TOWERS = ("video", "audio", "both")
LEVELS = ("clip", "video")


@dataclass
class Request:
    tower: str = "both"
    level: str = "clip"
    clips: int = 10
    stage: str = "layer4"
    shard_files: int = 64


def collect(paths: list[str | Path]) -> tuple[Manifest, Path]:
    """Rows of every given folder, manifest CSV or file (in that order), and the root that paths
    are reported relative to (the common parent)."""
    rows: list[Row] = []
    for p in map(Path, paths):
        if p.is_dir():
            rows += from_folder(p, extensions=VIDEO_EXTENSIONS + AUDIO_EXTENSIONS).rows
        elif p.is_file() and p.suffix.lower() == ".csv":
            rows += read_manifest(p).rows
        elif p.is_file():
            rows.append(Row(p.resolve()))
        else:
            raise InputError(f"--data {p}: no such file or folder")
    if not rows:
        raise InputError(f"--data {' '.join(map(str, paths))}: no video or audio files")
    parents = [Path(os.path.abspath(r.path)).parent for r in rows]  # links keep their own names
    root = parents[0]
    while not all(root == q or root in q.parents for q in parents):
        root = root.parent
    return Manifest(rows, str(root / "embed")), root


def is_audio_file(path: Path) -> bool:
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


class Embedder:
    """One shard of files -> rows, index entries, skips (see the module docstring)."""

    def __init__(self, cfg: Config, enc, req: Request, device: torch.device) -> None:
        from .esc50 import mel_spec_of
        self.cfg, self.enc, self.req, self.device = cfg, enc, req, device
        self.mel = mel_spec_of(cfg, enc)
        self.want = ("video", "audio") if req.tower == "both" else (req.tower,)

    def shard(self, rows: list[Row], records: dict) -> dict:
        """{"video": n x D, "audio": n x D, "index": [...], "skipped": [...]} for these rows, in order."""
        skipped, per_file = [], {}
        videos = [r for r in rows if not is_audio_file(r.path)]
        audios = [r for r in rows if is_audio_file(r.path)]
        if audios and self.req.tower != "audio":
            skipped += [{"path": str(r.path), "reason": "audio-only file (--tower audio embeds it)"} for r in audios]
            audios = []
        for r in videos:  # the scan decides first, then each file alone on a decoder error
            per_file.update(self._video(r, records, skipped))
        per_file.update(self._audios(audios, skipped))
        out = {k: [] for k in self.want}
        index = []
        for r in rows:
            got = per_file.get(str(r.path))
            if got is None:
                continue
            feats, spans = got
            if self.req.level == "video":
                feats = {k: v.mean(0, keepdims=True) for k, v in feats.items()}
                spans = [("mean", spans[0][1], spans[-1][2])]
            for k in self.want:
                out[k].append(feats[k])
            index += [{"path": str(r.path), "clip": c, "start_s": t0, "end_s": t1, "label": r.label or ""}
                      for c, t0, t1 in spans]
        return {**{k: (np.concatenate(v).astype(np.float32) if v else np.zeros((0, 0), np.float32))
                   for k, v in out.items()}, "index": index, "skipped": skipped}

    def _features(self, encoder, ds, key: str, n: int) -> np.ndarray:
        from .features import crop_features
        f = crop_features(encoder, ds, key, np.arange(n), self.req.clips, train=False, device=self.device,
                          num_workers=0, progress=False)
        if self.req.stage not in f:
            raise ConfigError(f"--stage {self.req.stage!r}: the encoder's stages are {', '.join(f)}")
        return f[self.req.stage]

    def _video(self, row: Row, records: dict, skipped: list) -> dict:
        """{path: (features per tower, clip spans)} of one video file, or {} with the reason in ``skipped``."""
        from ..data.real import BadInput
        from .video import eval_dataset
        m = Manifest([row], row.path.name)
        silence = "silence" if self.req.tower == "video" else self.cfg.data.on_missing_audio
        try:
            ds = eval_dataset(m, records, self.cfg, self.device, mel=self.mel, num_clips=self.req.clips,
                              on_missing_audio="skip" if silence == "error" else silence, on_corrupt="error",
                              on_blank="skip" if self.cfg.data.on_blank == "error" else self.cfg.data.on_blank,
                              cache_dir=self._cache())
        except BadInput as e:
            if not _excluded(row, records, skipped):
                skipped.append({"path": str(row.path), "reason": f"{e}"})
            return {}
        try:
            feats = {k: self._features(self.enc.f_v if k == "video" else self.enc.f_a, ds, k, len(ds))
                     for k in self.want}
        except (BadInput, OSError, ValueError) as e:
            skipped.append({"path": str(row.path), "reason": f"decode failed: {' '.join(str(e).split())[:200]}"})
            return {}
        spans = [(c, *(round(t, 6) for t in ds.eval_span(0, c))) for c in range(self.req.clips)]
        return {str(row.path): ({k: v[0] for k, v in feats.items()}, spans)}

    def _audios(self, rows: list[Row], skipped: list) -> dict:
        from ..data.audio import MelCache
        from ..data.real import AudioClips
        cache, keep, lengths = MelCache(self._cache(), self.mel), [], []
        for r in rows:
            try:
                mel, _ = cache.get(r.path, r.start, r.end)
            except Exception as e:  # the policy: skip and say why
                skipped.append({"path": str(r.path), "reason": f"unreadable audio ({type(e).__name__}: "
                                                              f"{' '.join(str(e).split())[:160]})"})
                continue
            keep.append(r)
            lengths.append(mel.shape[1] / self.mel.frames_per_second)
        if not keep:
            return {}
        ds = AudioClips(Manifest(keep), seconds=self.cfg.eval.audio_seconds, mel=self.mel, cache_dir=self._cache(),
                        seed=self.cfg.seed, num_clips=self.req.clips)
        feats = self._features(self.enc.f_a, ds, "audio", len(keep))
        secs = self.cfg.eval.audio_seconds
        return {str(r.path): ({"audio": feats[i]},
                              [(c, round((r.start or 0.0) + ds.eval_start(n, c), 6),
                                round((r.start or 0.0) + ds.eval_start(n, c) + min(secs, n), 6))
                               for c in range(self.req.clips)])
                for i, (r, n) in enumerate(zip(keep, lengths))}

    def _cache(self) -> str:
        from ..data.build import mel_cache_dir
        return mel_cache_dir(self.cfg)


def _excluded(row: Row, records: dict, skipped: list) -> bool:
    """A file the scan found unusable: listed with the scan's reason."""
    rec = records.get(str(row.path))
    if rec is None or rec.usable and not rec.warnings:
        return False
    reasons = rec.problems + [w for w in rec.warnings if w in ("silent-audio", "blank-video")]
    if not reasons:
        return False
    skipped.append({"path": str(row.path), "reason": ", ".join(reasons), "detail": rec.detail})
    return True


def signature(req: Request, enc, cfg: Config, data_fp: dict, mel: dict) -> dict:
    """Everything the bytes depend on: a rerun continues an OUT only with the same signature."""
    e = cfg.eval
    return {"request": dict(vars(req)), "encoder": enc.name, "encoder_step": enc.source.get("step"),
            "arch": enc.arch, "clip": {"frames": e.frames, "fps": e.fps, "size": e.size, "audio_seconds": e.audio_seconds},
            "mel": mel, "data": data_fp["digest"], "seed": cfg.seed}


def run(cfg: Config, enc, data: list[str], out: Path, req: Request, device: torch.device) -> dict:
    from ..data.scan import scan_paths
    if req.tower not in TOWERS or req.level not in LEVELS or req.clips < 1 or req.shard_files < 1:
        raise ConfigError(f"cmacc embed: --tower {req.tower} / --level {req.level} / --clips {req.clips} / "
                          f"--shard-files {req.shard_files} out of range")
    manifest, root = collect(data)
    data_fp = fingerprint.manifest_digest(manifest, root)
    emb = Embedder(cfg, enc, req, device)
    sig = signature(req, enc, cfg, data_fp, emb.mel.to_dict())
    out.mkdir(parents=True, exist_ok=True)
    done = _finished(out, sig)
    if done is not None:
        print(f"{out} already holds these embeddings ({done['rows']} rows); nothing to do")
        return done
    state = out / "embed.partial.json"
    if state.exists() and json.loads(state.read_text()) != sig:
        raise InputError(f"--out {out} holds embeddings of another request (other files, encoders or settings); "
                         f"choose another --out or delete it")
    write_atomic(state, json.dumps(sig, indent=1, default=str))
    shards = out / "shards"
    shards.mkdir(exist_ok=True)
    rows = manifest.rows
    chunks = [rows[i:i + req.shard_files] for i in range(0, len(rows), req.shard_files)]
    enc.f_v.to(device).eval(), enc.f_a.to(device).eval()
    bar = tqdm(total=len(rows), desc="embed", unit="file", disable=not cfg.run.progress)
    for k, chunk in enumerate(chunks):
        path = shards / f"shard_{k:05d}.npz"
        if not path.exists():
            videos = [str(r.path) for r in chunk if not is_audio_file(r.path)]
            records = {r.path: r for r in scan_paths(videos, clip_seconds=cfg.eval.frames / cfg.eval.fps,
                                                     workers=cfg.data.num_workers)} if videos else {}
            _save_shard(path, emb.shard(chunk, records))
        bar.update(len(chunk))
    bar.close()
    return _assemble(out, shards, len(chunks), sig, enc, cfg, req, data_fp, root, emb.mel.to_dict(), device)


def _save_shard(path: Path, s: dict) -> None:
    buf = io.BytesIO()
    arrays = {k: s[k] for k in ("video", "audio") if k in s}
    meta = {"index": s["index"], "skipped": s["skipped"], "dims": {k: a.shape[1] for k, a in arrays.items() if a.size}}
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    write_atomic(path, buf.getvalue())


def _shard_meta(path: Path) -> dict:
    with np.load(path) as z:  # an npz loads its members one by one: the arrays stay on disk
        return json.loads(z["meta"].tobytes().decode())


def _shard_arrays(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in ("video", "audio") if k in z}


def _finished(out: Path, sig: dict) -> dict | None:
    p = out / "embed.json"
    if not p.is_file():
        return None
    try:
        done = json.loads(p.read_text())
    except ValueError:
        return None
    return done if done.get("signature") == json.loads(json.dumps(sig, default=str)) else None


def _assemble(out: Path, shards: Path, n: int, sig: dict, enc, cfg: Config, req: Request, data_fp: dict,
              root: Path, mel: dict, device) -> dict:
    """Shards -> video.npy / audio.npy (memory-mapped, written shard by shard), index.csv, embed.json."""
    metas = [_shard_meta(shards / f"shard_{k:05d}.npz") for k in range(n)]
    total = sum(len(m["index"]) for m in metas)
    dims = {t: d for m in metas for t, d in m["dims"].items()}
    towers = ("video", "audio") if req.tower == "both" else (req.tower,)
    if not total:
        raise InputError(f"cmacc embed: none of the {sum(len(m['skipped']) for m in metas)} files could be used "
                         f"(first: {metas[0]['skipped'][0] if metas[0]['skipped'] else '-'})")
    outs = {t: np.lib.format.open_memmap(out / f".{t}.npy.tmp", mode="w+", dtype=np.float32, shape=(total, dims[t]))
            for t in towers}
    at = 0
    for k, meta in enumerate(metas):
        m = len(meta["index"])
        if m:
            arrays = _shard_arrays(shards / f"shard_{k:05d}.npz")
            for t in towers:
                outs[t][at:at + m] = arrays[t]
        at += m
    for a in outs.values():
        a.flush()
    outs.clear()
    for t in towers:
        (out / f".{t}.npy.tmp").replace(out / f"{t}.npy")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "clip", "start_s", "end_s", "label"])
    for meta in metas:
        for e in meta["index"]:
            w.writerow([fingerprint.relative(Path(e["path"]), root), e["clip"], e["start_s"], e["end_s"], e["label"]])
    write_atomic(out / "index.csv", buf.getvalue())
    skipped = [s for m in metas for s in m["skipped"]]
    record = {"rows": total, "files": len({e["path"] for m in metas for e in m["index"]}), "towers": list(towers),
              "dims": dims, "level": req.level, "clips": req.clips, "stage": req.stage,
              "encoder": {"name": enc.name, "arch": enc.arch, "step": enc.source.get("step"),
                          "method": enc.source.get("method"),
                          "pretraining_data_fingerprint": enc.source.get("data_fingerprint")},
              "clip_settings": {"frames": cfg.eval.frames, "fps": cfg.eval.fps, "size": cfg.eval.size,
                                "audio_seconds": cfg.eval.audio_seconds, "spacing": "uniform (cmacc eval)"},
              "sample_rate": mel["sample_rate"], "mel": mel,
              "data_fingerprint": {**data_fp, "root": str(root)}, "skipped": skipped,
              "versions": provenance.versions(), "git": provenance.git_revision(), "device": str(device),
              "signature": json.loads(json.dumps(sig, default=str))}
    write_atomic(out / "embed.json", json.dumps(record, indent=1, default=str))
    shutil.rmtree(shards)
    (out / "embed.partial.json").unlink(missing_ok=True)
    for s in skipped:
        log.warning("skipped %s: %s", s["path"], s["reason"])
    print(f"wrote {', '.join(f'{t}.npy ({total} x {dims[t]})' for t in towers)}, index.csv and embed.json to {out}: "
          f"{record['files']} files, {len(skipped)} skipped; data fingerprint {data_fp['digest'][:16]}")
    return record
