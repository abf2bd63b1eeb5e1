"""Data fingerprints: which data a result was computed on, as one digest and its counts.

A manifest's digest is SHA-256 over its rows sorted, each row as ``path<TAB>size<TAB>label<TAB>
split<TAB>start<TAB>end`` (path relative to the manifest's folder when under it, size in bytes or
-1 when the file is absent): two copies of a dataset at different places have one digest, and a
file re-encoded, added, removed or relabelled changes it. Short form: the first 16 hex digits.

A pretraining run records in run.json and in every checkpoint (``data_fingerprint``): the digest,
rows, files used, files left out by reason, classes, sample rate, clip length and fps; for a
manifest also the rows themselves in ``data_rows.tsv`` of the run folder, so that ``--resume``
on a changed manifest can say what changed (:func:`compare`). The built-in and the Omniglot data
are fingerprinted by their generator's settings (and the zip's SHA-256).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from ..errors import InputError

ROWS_FILE = "data_rows.tsv"


class DataChanged(InputError, ValueError):
    """--resume found other data than the checkpoint was trained on; the message says what changed."""


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when under it, else as given."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def row_lines(manifest, root: Path | None = None) -> list[str]:
    """One line per row (see the module docstring), sorted."""
    root = Path(root) if root is not None else Path(manifest.source).resolve().parent
    out = []
    for r in manifest.rows:
        try:
            size = r.path.stat().st_size
        except OSError:
            size = -1
        out.append("\t".join([relative(Path(r.path), root), str(size), r.label or "", r.split,
                              "" if r.start is None else repr(float(r.start)),
                              "" if r.end is None else repr(float(r.end))]))
    return sorted(out)


def digest_lines(lines: list[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def manifest_digest(manifest, root: Path | None = None) -> dict:
    lines = row_lines(manifest, root)
    return {"digest": digest_lines(lines), "rows": len(lines), "classes": len(manifest.classes)}


def short(digest: str | None) -> str:
    return (digest or "none")[:16]


def settings_digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def of_run_data(cfg, data) -> tuple[dict, list[str] | None]:
    """(the run's fingerprint, its manifest rows or None) for a pretraining run's Data."""
    d = cfg.data
    if d.name == "manifest":
        lines = row_lines(data.manifest, Path(d.manifest).resolve().parent)  # the rows build_data read
        excluded = data.info.get("excluded", [])
        mel = data.info.get("mel", {})
        return {"kind": "manifest", "manifest": str(d.manifest), "split": d.split, "digest": digest_lines(lines),
                "rows": len(lines), "files_used": len(data.train), "skipped": dict(Counter(e["reason"] for e in excluded)),
                "classes": data.info.get("classes"), "sample_rate": mel.get("sample_rate"),
                "clip_seconds": d.frames / d.fps, "fps": d.fps, "frames": d.frames}, lines
    if d.name == "omniglot":
        settings = {"zip_sha256": file_sha256(d.omniglot), "chars": d.chars, "train_size": d.train_size,
                    "train_drawers": d.train_drawers, "seed": cfg.seed}
        return {"kind": "omniglot", "zip": d.omniglot, "digest": settings_digest(settings), "rows": d.train_size,
                "files_used": d.train_size, "skipped": {}, "classes": None, "sample_rate": None,
                "clip_seconds": None, "fps": None, "frames": 1, "settings": settings}, None
    settings = {k: getattr(d, k) for k in ("num_classes", "train_size", "frames", "size", "mel_bands",
                                           "audio_frames", "nuisance")} | {"seed": cfg.seed}
    return {"kind": "synthetic", "digest": settings_digest(settings), "rows": d.train_size,
            "files_used": d.train_size, "skipped": {}, "classes": d.num_classes, "sample_rate": None,
            "clip_seconds": None, "fps": None, "frames": d.frames, "settings": settings}, None


def write_rows(run_dir: Path, lines: list[str]) -> None:
    from ..system.checkpoint import write_atomic
    write_atomic(run_dir / ROWS_FILE, "".join(line + "\n" for line in lines))


def check_resume(saved: dict | None, now: dict, run_dir: Path, now_lines: list[str] | None, *, allow: bool,
                 checkpoint: str, step: int) -> str | None:
    """--resume: None when the data is the checkpoint's; what changed when ``allow`` (run.allow_data_change);
    else DataChanged naming the change."""
    change = compare(saved, now, run_dir, now_lines)
    if change and not allow:
        raise DataChanged(f"--resume {run_dir}: the data changed since {checkpoint} (step {step}): {change}; resume "
                          f"with --set run.allow_data_change=true to train on it anyway (recorded in run.json), or "
                          f"start a new --out")
    return change


def compare(saved: dict | None, now: dict, run_dir: Path, now_lines: list[str] | None) -> str | None:
    """None when the data is the one the checkpoint was trained on, else what changed (one line)."""
    if not saved or saved.get("digest") == now.get("digest"):
        return None
    what = f"{saved.get('kind')} data {short(saved.get('digest'))} -> {short(now.get('digest'))}"
    rows_path = run_dir / ROWS_FILE
    if now_lines is not None and rows_path.is_file():
        old = {ln.split("\t", 1)[0]: ln for ln in rows_path.read_text().splitlines() if ln}
        new = {ln.split("\t", 1)[0]: ln for ln in now_lines}
        added = sorted(set(new) - set(old))
        removed = sorted(set(old) - set(new))
        changed = sorted(p for p in set(old) & set(new) if old[p] != new[p])
        parts = [f"{len(x)} {name}" + (f" (e.g. {x[0]})" if x else "")
                 for name, x in (("added", added), ("removed", removed), ("changed", changed)) if x]
        what += f": {saved.get('rows')} -> {now.get('rows')} rows; " + ", ".join(parts or ["rows reordered"])
    elif saved.get("kind") != "manifest" and saved.get("settings") != now.get("settings"):
        keys = sorted(k for k in set(saved.get("settings") or {}) | set(now.get("settings") or {})
                      if (saved.get("settings") or {}).get(k) != (now.get("settings") or {}).get(k))
        what += f": {', '.join(keys)} differ"
    return what
