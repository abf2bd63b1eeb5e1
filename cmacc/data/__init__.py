"""Datasets that feed the training loop. Each returns dicts with ``video`` (3 x T x H x W),
``audio`` (mel bands x T_a), ``index`` and, for diagnostics only, ``label``."""
from .synthetic import ClipRequest, SyntheticAV

__all__ = ["ClipRequest", "SyntheticAV"]
