"""``cmacc eval ucf101|hmdb51`` (action recognition) and ``cmacc eval retrieval`` with the video encoder.

Layouts as released. UCF101: ``ROOT/<Class>/v_*.avi`` and the split folder ``ucfTrainTestlist``
(classInd.txt, trainlist0k.txt, testlist0k.txt). HMDB51: ``ROOT/<class>/*.avi`` and
``testTrainMulti_7030_splits`` (``<class>_test_split<k>.txt``). ``--splits DIR`` names the split
folder when it is elsewhere; the manifest builders (cmacc.data.manifest) parse them.

Fine-tuning (CM-ACC §5): the video encoder plus a linear head, end to end (cmacc.evaluation.finetune),
on ``eval.frames`` frames at ``eval.fps`` and ``eval.size``² crops with the pretraining
augmentation; at test time ``eval.crops`` uniformly spaced clips per video. Reported from the
last epoch: Clip@1 (each test clip on its own) and Video@1 (the clips' softmax averaged).

Retrieval (Xu et al. 2019, as CM-ACC's Table 4 uses it): features of every stage averaged over
the test clips of each video, cosine similarity, every test video queries the training videos; a
query hits at k when one of its k nearest training videos has its class. Reported: top-k hit rate
per stage; the headline is ``layer4`` (the pooled last stage), fixed in advance.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..data.manifest import ManifestError, from_hmdb51, from_ucf101
from ..data.real import ManifestAV
from ..errors import InputError
from ..config.validation import int_list
from . import features, finetune
from .encoders import Encoders

SPLIT_DIRS = {"ucf101": "ucfTrainTestlist", "hmdb51": "testTrainMulti_7030_splits"}
RETRIEVAL_STAGE = "layer4"


def split_ids(split: str) -> list[int]:
    if split == "all":
        return [1, 2, 3]
    if split in ("1", "2", "3"):
        return [int(split)]
    raise InputError(f"--split must be 1, 2, 3 or all, got {split!r}")


def read_split(dataset: str, root: Path, splits_dir: Path | None, k: int, on_corrupt: str):
    """(manifest of split k, files listed but absent) -- absent files are an error under on_corrupt=error."""
    sd = splits_dir or root / SPLIT_DIRS[dataset]
    if not sd.is_dir():
        raise ManifestError(f"{sd}: no split folder (give --splits DIR: the folder of the official split files)")
    m, missing = (from_ucf101 if dataset == "ucf101" else from_hmdb51)(root, sd, k)
    if missing and on_corrupt == "error":
        first = missing[0]
        raise InputError(f"{first['path']} (listed in {first['file']}, line {first['line']}) does not exist; "
                         f"--set data.on_corrupt=skip evaluates without the {len(missing)} missing file(s)")
    if not len(m.split("train")) or not len(m.split("test")):
        raise ManifestError(f"{sd}: split {k} has {len(m.split('train'))} training and {len(m.split('test'))} "
                            f"test videos on disk; both must be non-empty")
    return m, [{"path": x["path"], "reason": "missing", "listed_in": x["file"]} for x in missing]


def scan(manifests, cfg: Config, out: Path) -> dict:
    """Scan records of every listed file (the bad-input policy reads them), or those of data.scan."""
    from ..data.scan import read_report, scan_paths, write_report
    if cfg.data.scan:
        return read_report(cfg.data.scan)
    paths = sorted({str(r.path) for m in manifests for r in m.rows})
    records = scan_paths(paths, clip_seconds=cfg.eval.frames / cfg.eval.fps, workers=cfg.data.num_workers)
    out.mkdir(parents=True, exist_ok=True)
    write_report(records, out / "scan.json")
    return {r.path: r for r in records}


def eval_dataset(m, records: dict, cfg: Config, device: torch.device, **changes) -> ManifestAV:
    """The evaluation clips of manifest ``m``: eval.frames at eval.fps, eval.size crops, eval.crops
    uniformly spaced clips per video (``cmacc embed`` reads the same clips; ``changes`` e.g. its
    mel spec, num_clips or policies)."""
    e, d = cfg.eval, cfg.data
    kw = dict(frames=e.frames, fps=e.fps, crop=e.size, backend=d.backend, gpu=device.type == "cuda",
              on_missing_audio="silence",  # the video encoder alone: files without audio stay
              on_corrupt=d.on_corrupt, on_blank=d.on_blank, seed=cfg.seed, num_clips=e.crops,
              classes=sorted({r.label for r in m.rows if r.label}))
    return ManifestAV(m, records, **{**kw, **changes})


def datasets(m, records: dict, cfg: Config, device: torch.device) -> tuple[ManifestAV, ManifestAV, list[dict]]:
    classes = sorted({r.label for r in m.rows})
    train, test = (eval_dataset(m.split(s), records, cfg, device, classes=classes) for s in ("train", "test"))
    excluded = [x | {"side": side} for side, ds in (("train", train), ("test", test)) for x in ds.excluded]
    return train, test, excluded


def _labels(ds: ManifestAV) -> np.ndarray:
    return ds.labels.numpy()


def finetune_split(cfg: Config, train: ManifestAV, test: ManifestAV, enc: Encoders, device, k: int,
                   progress: bool, skipped: list) -> dict:
    items, y_test = np.arange(len(train)), _labels(test)
    model = finetune.Classifier(enc.f_v, len(train.classes)).to(device)
    losses = finetune.train_epochs(model, train, "video", items, _labels(train), cfg.eval, device=device,
                                   seed=cfg.seed + k, num_workers=cfg.data.num_workers, desc=f"fine-tune split {k}",
                                   progress=progress, skipped=skipped)
    pred, _, per_clip = finetune.predict(model, test, "video", np.arange(len(test)), cfg.eval.crops, device=device,
                                         num_workers=cfg.data.num_workers, skipped=skipped)
    return {"fold": f"split{k}", "stages": {"finetuned": {
        "accuracy": float((pred == y_test).mean()), "pred": pred,
        "clip_accuracy": float((per_clip.argmax(2) == y_test[:, None]).mean()), "train_loss": losses,
        "n_train": len(train)}}}


def hit_rates(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
              ks: list[int]) -> dict[int, float]:
    """Fraction of test queries with a same-class training video among their k most cosine-similar."""
    a = train_x / np.maximum(np.linalg.norm(train_x, axis=1, keepdims=True), 1e-12)
    q = test_x / np.maximum(np.linalg.norm(test_x, axis=1, keepdims=True), 1e-12)
    order = np.argsort(-(q @ a.T), axis=1, kind="stable")  # ties: the lower training index first
    same = train_y[order] == test_y[:, None]
    return {k: float(same[:, :k].any(1).mean()) for k in ks}


def retrieval_split(cfg: Config, train: ManifestAV, test: ManifestAV, enc: Encoders, device, k: int,
                    progress: bool, skipped: list) -> dict:
    kw = dict(device=device, num_workers=cfg.data.num_workers, progress=progress, skipped=skipped)
    crops = cfg.eval.crops
    tr = features.crop_features(enc.f_v, train, "video", np.arange(len(train)), crops, train=False,
                                desc="training videos", **kw)
    te = features.crop_features(enc.f_v, test, "video", np.arange(len(test)), crops, train=False,
                                desc="test videos", **kw)
    ks = int_list(cfg.eval.retrieval_k, "eval.retrieval_k")
    y_tr, y_te = _labels(train), _labels(test)
    stages = {s: hit_rates(tr[s].mean(1), y_tr, te[s].mean(1), y_te, ks) for s in tr}
    # the headline stage's top-1 hits per query: the per-class picture
    hit1 = np.array([hit_rates(tr[RETRIEVAL_STAGE].mean(1), y_tr, te[RETRIEVAL_STAGE].mean(1)[i:i + 1],
                               y_te[i:i + 1], [1])[1] for i in range(len(test))])
    return {"fold": f"split{k}", "stages": stages, "n_train": len(train), "n_test": len(test),
            "pred": np.where(hit1 > 0, y_te, -1)}
