"""Linear evaluation on one labelled train/test split -- the one path behind pretraining's summary
probe and ``cmacc eval synthetic`` (cmacc.evaluation.features + cmacc.evaluation.linear).

Features are the frozen encoders' pooled stage outputs in eval mode. The summary probe reads the
last stage (``layer4``, the pooled backbone output) of one centred, unaugmented clip per video
for both splits and fits a standardised multinomial logistic regression (``probe.C``); ``cmacc
eval synthetic`` reads every stage with the linear protocol's crops and SVM. The random-init
baseline is the same architecture at the same seed before any training.
"""
from __future__ import annotations

import numpy as np
import torch

from . import features, linear


def evaluate(encoder: torch.nn.Module, key: str, train_set, test_set, device: torch.device, *, crops: int = 1,
             random_train_crops: bool = False, classifier: str = "logreg", C: float = 1.0, seed: int = 0,
             stages: tuple[str, ...] | None = None, num_workers: int = 0, progress: bool = False) -> dict[str, dict]:
    """{stage: {"accuracy": fraction, "pred": test predictions}} of ``encoder`` on ``key`` clips."""
    kw = dict(device=device, num_workers=num_workers, progress=progress)
    tr = features.crop_features(encoder, train_set, key, np.arange(len(train_set)), crops, train=random_train_crops,
                                desc=f"{key} training clips", **kw)
    te = features.crop_features(encoder, test_set, key, np.arange(len(test_set)), crops, train=False,
                                desc=f"{key} test clips", **kw)
    y_tr, y_te = train_set.labels.numpy(), test_set.labels.numpy()
    out = {}
    for stage in stages or tuple(tr):
        pred, _, warn = linear.fit_predict(tr[stage], y_tr, te[stage], classifier=classifier, C=C, seed=seed)
        out[stage] = {"accuracy": float((pred == y_te).mean()), "pred": pred, "not_converged": warn}
    return out


def accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             C: float = 1.0, seed: int = 0) -> float:
    """Top-1 accuracy (%) of the summary probe's classifier on given features (n x C, one clip each)."""
    pred, _, _ = linear.fit_predict(x_train[:, None], y_train, x_test[:, None], classifier="logreg", C=C, seed=seed)
    return float(100.0 * (pred == y_test).mean())


def linear_probe(f_v, f_a, train_set, test_set, device, C: float = 1.0, seed: int = 0,
                 num_workers: int = 0) -> dict[str, float]:
    """{'video': acc %, 'audio': acc %}: the summary probe (last stage, one centred clip, logistic regression)."""
    return {key: 100.0 * evaluate(f, key, train_set, test_set, device, C=C, seed=seed, stages=("layer4",),
                                  num_workers=num_workers)["layer4"]["accuracy"]
            for key, f in (("video", f_v), ("audio", f_a))}
