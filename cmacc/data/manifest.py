"""Dataset manifests: one plain CSV format, and builders from the common dataset layouts.

Format (header required; only ``path`` is mandatory)::

    path,label,split,start,end
    videos/abseiling/x1.mp4,abseiling,train,,
    /data/audioset/y2.mkv,,train,30.0,40.0

``path`` is absolute or relative to the manifest's folder; ``label`` a class name (empty when
unknown); ``split`` a free name (default ``train``); ``start``/``end`` an optional segment in
seconds. Reading validates every line and names the file, line and column of anything wrong.
Builders never drop a row silently: rows whose file is missing are returned separately.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

COLUMNS = ("path", "label", "split", "start", "end")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ogv", ".3gp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus")


class ManifestError(InputError, ValueError):
    """A manifest or dataset-layout file is malformed; the message names file, line and column."""


@dataclass(frozen=True)
class Row:
    path: Path  # absolute
    label: str | None = None
    split: str = "train"
    start: float | None = None
    end: float | None = None


@dataclass
class Manifest:
    rows: list[Row]
    source: str = ""

    def __len__(self) -> int:
        return len(self.rows)

    def split(self, name: str) -> "Manifest":
        return Manifest([r for r in self.rows if r.split == name], f"{self.source}[{name}]")

    @property
    def classes(self) -> list[str]:
        return sorted({r.label for r in self.rows if r.label})

    def write(self, path: str | Path) -> None:
        from ..system.checkpoint import write_atomic
        path = Path(path)
        base = path.resolve().parent
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in self.rows:
            try:
                p = r.path.relative_to(base)
            except ValueError:
                p = r.path
            w.writerow([str(p), r.label or "", r.split, "" if r.start is None else repr(r.start),
                        "" if r.end is None else repr(r.end)])
        write_atomic(path, buf.getvalue())


def read_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    base = path.resolve().parent
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ManifestError(f"manifest {path} is empty (expected a header: {','.join(COLUMNS)})") from None
        unknown = [h for h in header if h not in COLUMNS]
        if unknown:
            raise ManifestError(f"manifest {path}: unknown column(s) {unknown}; columns are {list(COLUMNS)}")
        if "path" not in header:
            raise ManifestError(f"manifest {path}: no 'path' column in header {header}")
        rows = []
        for lineno, values in enumerate(reader, start=2):
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise ManifestError(f"manifest {path} line {lineno}: {len(values)} fields, header has {len(header)}")
            rec = dict(zip(header, (v.strip() for v in values)))
            if not rec["path"]:
                raise ManifestError(f"manifest {path} line {lineno}: empty 'path'")
            times = {}
            for col in ("start", "end"):
                v = rec.get(col, "")
                try:
                    times[col] = float(v) if v else None
                except ValueError:
                    raise ManifestError(f"manifest {path} line {lineno}: column '{col}' is not a number: {v!r}") from None
                if times[col] is not None and times[col] < 0:
                    raise ManifestError(f"manifest {path} line {lineno}: column '{col}' is negative: {v}")
            if times["start"] is not None and times["end"] is not None and times["end"] <= times["start"]:
                raise ManifestError(f"manifest {path} line {lineno}: end {times['end']} <= start {times['start']}")
            p = Path(rec["path"])
            rows.append(Row((p if p.is_absolute() else base / p), rec.get("label") or None,
                            rec.get("split") or "train", times["start"], times["end"]))
    return Manifest(rows, str(path))


# ---------------------------------------------------------------- builders
def from_folder(root: str | Path, *, label_from_parent: bool = True, split: str = "train",
                extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> Manifest:
    """Every file under ``root`` (recursive) with a media extension; label = parent folder name."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise ManifestError(f"folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
    return Manifest([Row(p, p.parent.name if (label_from_parent and p.parent != root) else None, split)
                     for p in files], str(root))


def from_kinetics(csv_path: str | Path, root: str | Path) -> tuple[Manifest, list[dict]]:
    """Kinetics annotations (label,youtube_id,time_start,time_end,split[,...]) + a video folder.

    Files are found anywhere under ``root`` by stem, either trimmed clips named
    ``<id>_<start:06d>_<end:06d>`` (the usual downloaders; no start/end recorded) or whole
    videos named ``<id>`` (the segment becomes start/end). Returns (manifest, missing rows).
    """
    csv_path, root = Path(csv_path), Path(root).resolve()
    index = {p.stem: p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS}
    rows, missing = [], []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"label", "youtube_id", "time_start", "time_end"}
        if not need <= set(reader.fieldnames or ()):
            raise ManifestError(f"{csv_path}: Kinetics CSV needs columns {sorted(need)}, has {reader.fieldnames}")
        for lineno, rec in enumerate(reader, start=2):
            try:
                t0, t1 = int(float(rec["time_start"])), int(float(rec["time_end"]))
            except ValueError:
                raise ManifestError(f"{csv_path} line {lineno}: time_start/time_end not numbers") from None
            yid, split = rec["youtube_id"], rec.get("split") or "train"
            trimmed = index.get(f"{yid}_{t0:06d}_{t1:06d}")
            if trimmed is not None:
                rows.append(Row(trimmed, rec["label"], split))
            elif yid in index:
                rows.append(Row(index[yid], rec["label"], split, float(t0), float(t1)))
            else:
                missing.append({"line": lineno, "youtube_id": yid, "label": rec["label"], "split": split})
    return Manifest(rows, str(csv_path)), missing


def from_ucf101(root: str | Path, splits_dir: str | Path, split_id: int = 1) -> tuple[Manifest, list[dict]]:
    """UCF101: ``classInd.txt`` and ``trainlist0k.txt`` / ``testlist0k.txt`` (k = split_id)."""
    root, sd = Path(root).resolve(), Path(splits_dir)
    classes = {}
    for lineno, line in enumerate(_lines(sd / "classInd.txt"), start=1):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ManifestError(f"{sd / 'classInd.txt'} line {lineno}: expected '<index> <class>', got {line!r}")
        classes[parts[1]] = int(parts[0])
    rows, missing = [], []
    for split in ("train", "test"):
        f = sd / f"{split}list{split_id:02d}.txt"
        for lineno, line in enumerate(_lines(f), start=1):
            rel = line.split()[0]
            label = rel.split("/")[0]
            if label not in classes:
                raise ManifestError(f"{f} line {lineno}: class {label!r} is not in classInd.txt")
            p = root / rel
            (rows.append(Row(p, label, split)) if p.is_file()
             else missing.append({"file": str(f), "line": lineno, "path": rel}))
    return Manifest(rows, str(sd)), missing


def from_hmdb51(root: str | Path, splits_dir: str | Path, split_id: int = 1) -> tuple[Manifest, list[dict]]:
    """HMDB51: ``<class>_test_split<k>.txt`` lines '<video> <1|2|0>' (train / test / unused)."""
    root, sd = Path(root).resolve(), Path(splits_dir)
    files = sorted(sd.glob(f"*_test_split{split_id}.txt"))
    if not files:
        raise ManifestError(f"{sd}: no *_test_split{split_id}.txt files")
    rows, missing = [], []
    for f in files:
        label = f.name[: -len(f"_test_split{split_id}.txt")]
        for lineno, line in enumerate(_lines(f), start=1):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ManifestError(f"{f} line {lineno}: expected '<video> <0|1|2>', got {line!r}")
            if parts[1] == "0":
                continue  # not part of this split, by the dataset's definition
            p = root / label / parts[0]
            split = "train" if parts[1] == "1" else "test"
            (rows.append(Row(p, label, split)) if p.is_file()
             else missing.append({"file": str(f), "line": lineno, "path": str(p)}))
    return Manifest(rows, str(sd)), missing


def from_esc50(csv_path: str | Path, audio_dir: str | Path) -> tuple[Manifest, list[dict]]:
    """ESC-50 ``meta/esc50.csv`` (filename,fold,target,category,...); split = 'fold<k>'."""
    csv_path, audio_dir = Path(csv_path), Path(audio_dir).resolve()
    rows, missing = [], []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"filename", "fold", "category"}
        if not need <= set(reader.fieldnames or ()):
            raise ManifestError(f"{csv_path}: ESC-50 CSV needs columns {sorted(need)}, has {reader.fieldnames}")
        for lineno, rec in enumerate(reader, start=2):
            p = audio_dir / rec["filename"]
            (rows.append(Row(p, rec["category"], f"fold{rec['fold']}")) if p.is_file()
             else missing.append({"line": lineno, "path": str(p)}))
    return Manifest(rows, str(csv_path)), missing


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise ManifestError(f"{path} does not exist")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


# ---------------------------------------------------------------- the pretraining sets of the papers
def _media_index(root: Path) -> dict[str, Path]:
    """Every media file under ``root`` by stem (video and audio extensions)."""
    exts = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS
    return {p.stem: p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts}


def _find_segment(index: dict[str, Path], yid: str, t0: float, t1: float, trimmed: tuple[str, ...]) -> Row | None:
    """A trimmed clip under one of the ``trimmed`` stems (no segment recorded), or the whole video
    ``<yid>`` / ``Y<yid>`` with the segment as start/end."""
    for stem in trimmed:
        if stem in index:
            return Row(index[stem])
    for stem in (yid, f"Y{yid}"):
        if stem in index:
            return Row(index[stem], start=t0, end=t1)
    return None


def from_audioset(csv_path: str | Path, root: str | Path) -> tuple[Manifest, list[dict]]:
    """AudioSet segment lists as released (balanced_train_segments.csv, unbalanced_train_segments.csv,
    eval_segments.csv): ``#`` comment lines, then ``YTID, start_seconds, end_seconds, "m1,m2,..."``
    with spaces after the commas and the label list quoted. A file is found by stem: a trimmed clip
    ``<YTID>_<start>_<end>`` (integer or 3-decimal seconds, or milliseconds), ``<YTID>_<start>``, or a
    whole video ``<YTID>`` / ``Y<YTID>`` (the segment becomes start/end, so clips are drawn inside it).
    ``label`` is the first of the positive labels (AudioSet is multi-label; pretraining reads none);
    split = the csv's stem. Returns (manifest, missing rows)."""
    csv_path, root = Path(csv_path), Path(root).resolve()
    index = _media_index(root)
    rows, missing = [], []
    split = csv_path.stem
    with open(csv_path, newline="") as f:
        for lineno, rec in enumerate(csv.reader(f, skipinitialspace=True), start=1):
            if not rec or rec[0].startswith("#"):
                continue
            if len(rec) != 4:
                raise ManifestError(f"{csv_path} line {lineno}: expected YTID, start_seconds, end_seconds, "
                                    f"\"labels\" (4 fields), got {len(rec)}")
            yid = rec[0].strip()
            try:
                t0, t1 = float(rec[1]), float(rec[2])
            except ValueError:
                raise ManifestError(f"{csv_path} line {lineno}: start_seconds/end_seconds not numbers: "
                                    f"{rec[1]!r}, {rec[2]!r}") from None
            labels = [x.strip() for x in rec[3].split(",") if x.strip()]
            stems = (f"{yid}_{int(t0)}_{int(t1)}", f"{yid}_{t0:.3f}_{t1:.3f}", f"{yid}_{int(t0 * 1000)}_{int(t1 * 1000)}",
                     f"{yid}_{int(t0)}")
            row = _find_segment(index, yid, t0, t1, stems)
            if row is None:
                missing.append({"line": lineno, "youtube_id": yid, "start": t0, "end": t1, "labels": ",".join(labels),
                                "split": split})
            else:
                rows.append(Row(row.path, labels[0] if labels else None, split, row.start, row.end))
    return Manifest(rows, str(csv_path)), missing


def from_vggsound(csv_path: str | Path, root: str | Path, seconds: float = 10.0) -> tuple[Manifest, list[dict]]:
    """VGGSound's vggsound.csv as released: no header, ``YTID,start,label,split`` (split train or
    test; each clip is ``seconds`` = 10 s from start). A file is found by stem: ``<YTID>_<start:06d>``
    (the release's naming), ``<YTID>_<start>``, ``<YTID>_<start>_<end>``, or the whole video
    ``<YTID>`` with the segment as start/end. Returns (manifest, missing rows)."""
    csv_path, root = Path(csv_path), Path(root).resolve()
    index = _media_index(root)
    rows, missing = [], []
    with open(csv_path, newline="") as f:
        for lineno, rec in enumerate(csv.reader(f), start=1):
            if not rec or not "".join(rec).strip():
                continue
            if len(rec) != 4:
                raise ManifestError(f"{csv_path} line {lineno}: expected YTID,start,label,split (4 fields), "
                                    f"got {len(rec)}")
            yid, start, label, split = (x.strip() for x in rec)
            if lineno == 1 and not start.isdigit():
                continue  # a header some copies carry
            try:
                t0 = int(start)
            except ValueError:
                raise ManifestError(f"{csv_path} line {lineno}: start {start!r} is not an integer") from None
            t1 = t0 + seconds
            row = _find_segment(index, yid, float(t0), t1, (f"{yid}_{t0:06d}", f"{yid}_{t0}", f"{yid}_{t0}_{int(t1)}"))
            if row is None:
                missing.append({"line": lineno, "youtube_id": yid, "start": t0, "label": label, "split": split})
            else:
                rows.append(Row(row.path, label, split, row.start, row.end))
    return Manifest(rows, str(csv_path)), missing


def kinetics_sound_classes() -> tuple[list[str], dict]:
    """Kinetics-Sound's classes (cmacc/data/kinetics_sound.txt): the list's names, and its header
    lines as provenance."""
    path = Path(__file__).with_name("kinetics_sound.txt")
    names, notes = [], []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            notes.append(line[1:].strip())
        elif line.strip():
            names.append(line.strip())
    return names, {"file": path.name, "notes": notes}


KINETICS_RENAMED = {"mowing lawn by pushing lawnmower": "mowing lawn", "stomping": "stomping grapes"}


def from_kinetics_sound(csv_path: str | Path, root: str | Path) -> tuple[Manifest, list[dict], dict]:
    """Kinetics (400/600/700 CSV) restricted to Kinetics-Sound's 34 classes (names as Arandjelovic &
    Zisserman list them, matched to the released Kinetics names through KINETICS_RENAMED). Returns
    (manifest, missing rows of those classes, report: which of the 34 the annotations hold)."""
    names, source = kinetics_sound_classes()
    wanted = {KINETICS_RENAMED.get(n, n): n for n in names}
    m, missing = from_kinetics(csv_path, root)
    with open(csv_path, newline="") as f:
        annotated = {rec["label"] for rec in csv.DictReader(f)}
    keep = [r for r in m.rows if r.label in wanted]
    absent = sorted(n for k, n in wanted.items() if k not in annotated)
    report = {"classes": len(names), "in_annotations": len(names) - len(absent), "absent": absent, **source}
    return Manifest(keep, f"{csv_path}[kinetics-sound]"), [x for x in missing if x["label"] in wanted], report


def subset(m: Manifest, n: int, seed: int, having: set[str] | None = None) -> Manifest:
    """A reproducible subset of ``n`` rows (seeded, order kept), optionally of files in ``having``
    (e.g. those `cmacc scan` found to carry audio, as the papers' 240K subsets are)."""
    import numpy as np
    pool = [r for r in m.rows if having is None or str(r.path) in having]
    if n > len(pool):
        raise ManifestError(f"--subset {n}: only {len(pool)} rows{' with audio' if having is not None else ''} "
                            f"in {m.source}")
    pick = np.sort(np.random.default_rng(seed).choice(len(pool), size=n, replace=False))
    return Manifest([pool[i] for i in pick], f"{m.source}[subset {n}, seed {seed}]")


def write_missing(missing: list[dict], path: Path) -> None:
    """The annotated rows whose files were not found, beside the manifest (CSV)."""
    from ..system.checkpoint import write_atomic
    cols = list(dict.fromkeys(k for x in missing for k in x))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(missing)
    write_atomic(path, buf.getvalue())
