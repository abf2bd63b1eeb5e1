"""Linear evaluation on frozen features (AVID §4, Tables 1b/2b): scikit-learn classifiers on
standardised crop features; an item's prediction averages its crops' decision scores.

    fit:      StandardScaler on the training crops (training statistics only), then a one-vs-rest
              linear SVM (LinearSVC) -- or multinomial logistic regression for the baselines --
              on every training crop with its item's label;
    predict:  scores of the test item's crops averaged, argmax.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC


def _scores(clf, x: np.ndarray) -> np.ndarray:
    s = clf.decision_function(x)
    return np.stack([-s, s], 1) if s.ndim == 1 else s  # binary: one score column


def fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, classifier: str = "svm",
                C: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """train_x: n x crops x C features, train_y: n labels; test_x: m x crops x C.

    Returns (predicted labels m, crop-averaged scores m x classes, convergence warnings)."""
    n, crops, dim = train_x.shape
    if classifier == "svm":
        model = LinearSVC(C=C, max_iter=20000, random_state=seed)
    elif classifier == "logreg":
        model = LogisticRegression(C=C, max_iter=5000, random_state=seed)
    else:
        raise ValueError(f"classifier must be 'svm' or 'logreg', got {classifier!r}")
    clf = make_pipeline(StandardScaler(), model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(train_x.reshape(n * crops, dim), np.repeat(train_y, crops))
    not_converged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    m = test_x.shape[0]
    scores = _scores(clf, test_x.reshape(m * test_x.shape[1], dim)).reshape(m, test_x.shape[1], -1).mean(1)
    return clf.classes_[scores.argmax(1)], scores, not_converged
