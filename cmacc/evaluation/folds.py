"""Train/test splits for evaluation: a dataset's own folds, or K folds grouped by source.

ESC-50 cuts several 5 s clips from one freesound recording (``src_file``); a clip and its sibling
on opposite sides of a split share background, microphone and often the event itself, so every
split here keeps each source on one side. The dataset's folds (ESC-50's ``fold`` column) are used
as they are -- and checked; when there are fewer than two, K folds are built with scikit-learn's
StratifiedGroupKFold (classes balanced, sources grouped) and the result says so.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from ..errors import InputError


class SplitError(InputError, ValueError):
    """A split would leak a source across train and test, or cannot be built; names the source."""


@dataclass
class Fold:
    name: str
    train: np.ndarray  # indices into the dataset's rows
    test: np.ndarray


def check_no_leak(groups: np.ndarray, train: np.ndarray, test: np.ndarray, what: str) -> None:
    shared = sorted(set(groups[train].tolist()) & set(groups[test].tolist()))
    if shared:
        raise SplitError(f"{what}: source {shared[0]!r} has clips on both sides of the split "
                         f"({len(shared)} source(s) in all); clips sharing a src_file must stay together")


def make_folds(folds: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, cv: int | None,
               default_cv: int, seed: int, what: str) -> tuple[list[Fold], str]:
    """(folds, how they were made). ``folds``: each row's official fold; ``cv``: force K grouped
    folds (``--cv K``); ``default_cv``: K when the dataset holds fewer than two folds."""
    official = sorted(set(folds.tolist()))
    if cv is None and len(official) >= 2:
        out = [Fold(f"fold{f}", np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in official]
        how = f"the dataset's {len(official)} folds (train on the others, test on one)"
    else:
        k = cv or default_cv
        n_groups = len(set(groups.tolist()))
        if n_groups < k:
            raise SplitError(f"{what}: {k} folds grouped by source need >= {k} sources, found {n_groups}")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        out = [Fold(f"cv{i + 1}", tr, te) for i, (tr, te) in
               enumerate(splitter.split(np.zeros(len(labels)), labels, groups))]
        reason = f"the csv holds {len(official)} fold(s)" if cv is None else f"--cv {k} was asked for"
        how = (f"{k}-fold cross-validation grouped by src_file (StratifiedGroupKFold, seed {seed}): "
               f"{reason}")
    for f in out:
        check_no_leak(groups, f.train, f.test, f"{what}, {f.name}")
    return out, how
