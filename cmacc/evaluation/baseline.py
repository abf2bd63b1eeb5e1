"""The hand-crafted baseline of the audio tables: log-mel and MFCC statistics per crop (librosa),
classified like the learned features (cmacc.evaluation.linear, logistic regression).

Per crop of B mel bands x T frames (the same crops the encoders see): the mean and standard
deviation over time of the B log-mel bands and of 20 MFCCs computed from them (DCT-II of the dB
spectrogram, ``librosa.feature.mfcc(S=...)``): 2B + 40 numbers.
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from .features import crop_requests

N_MFCC = 20


def crop_statistics(mel_db: np.ndarray) -> np.ndarray:
    import librosa
    mfcc = librosa.feature.mfcc(S=mel_db, n_mfcc=N_MFCC)
    return np.concatenate([mel_db.mean(1), mel_db.std(1), mfcc.mean(1), mfcc.std(1)]).astype(np.float32)


def baseline_features(dataset, key: str, items: np.ndarray, crops: int, *, train: bool,
                      desc: str = "log-mel/MFCC", progress: bool = True) -> dict[str, np.ndarray]:
    """{"mfcc": items x crops x (2B + 40)} from the crops ``crop_features`` would encode."""
    reqs = crop_requests(items, crops, train)
    rows = [crop_statistics(dataset[r][key].numpy()) for r in tqdm(reqs, desc=desc, disable=not progress, leave=False)]
    return {"mfcc": np.stack(rows).reshape(len(items), crops, -1)}
