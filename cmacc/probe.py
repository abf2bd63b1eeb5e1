"""Linear probes on frozen features (scikit-learn logistic regression).

Features are the query encoders' pooled backbone outputs (before projection), extracted in
eval mode from held-out clips (centred window, no augmentation). The random-init baseline is
the same architecture at the same seed before any training.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .data import ClipRequest
from .data.real import Finisher, ManifestAV, collate


@torch.no_grad()
def extract(f_v, f_a, dataset, device: torch.device, batch_size: int = 64, num_workers: int = 0):
    """(video features n x C_v, audio features n x C_a, labels n) for every clip of ``dataset``."""
    was = f_v.training, f_a.training
    f_v.eval(), f_a.eval()
    reqs = [ClipRequest(i, tag="eval") for i in range(len(dataset))]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[reqs[i:i + batch_size] for i in range(0, len(reqs), batch_size)],
                                         collate_fn=collate, num_workers=num_workers)
    finish = Finisher(dataset if isinstance(dataset, ManifestAV) else None, device, max_batch=batch_size)
    fv, fa, ys = [], [], []
    for b in map(finish, loader):
        fv.append(f_v.features(b["video"].to(device)).float().cpu())
        fa.append(f_a.features(b["audio"].to(device)).float().cpu())
        ys.append(b["label"])
    f_v.train(was[0]), f_a.train(was[1])
    return torch.cat(fv).numpy(), torch.cat(fa).numpy(), torch.cat(ys).numpy()


def accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             C: float = 1.0, seed: int = 0) -> float:
    """Top-1 accuracy (%) of a standardised multinomial logistic regression."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000, random_state=seed))
    clf.fit(x_train, y_train)
    return float(100.0 * (clf.predict(x_test) == y_test).mean())


def linear_probe(f_v, f_a, train_set, test_set, device, C: float = 1.0, seed: int = 0,
                 num_workers: int = 0) -> dict[str, float]:
    """{'video': acc %, 'audio': acc %} of linear probes on frozen features."""
    tv, ta, ty = extract(f_v, f_a, train_set, device, num_workers=num_workers)
    ev, ea, ey = extract(f_v, f_a, test_set, device, num_workers=num_workers)
    return {"video": accuracy(tv, ty, ev, ey, C, seed), "audio": accuracy(ta, ty, ea, ey, C, seed)}
