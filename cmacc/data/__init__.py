"""Datasets that feed the training loop. Each returns dicts with ``video`` (3 x T x H x W),
``audio`` (mel bands x T_a, the same time span), ``index`` and, for diagnostics only, ``label``."""
from .request import TAGS, ClipRequest
from .synthetic import SyntheticAV

__all__ = ["TAGS", "ClipRequest", "SyntheticAV"]
