"""The methods: a registry from name to family (registry.py), the family protocol the training
engine talks to (protocol.py), the losses (losses.py), the parts both families share (shared.py),
and one subpackage per family (moco/, avid/).

    >>> from cmacc import methods
    >>> sorted(methods.METHODS)[:3]
    ['avid_cma', 'avid_cross', 'avid_joint']
    >>> methods.family("cmacc").name   # imports the family's code (torch) on first use
    'moco'

Importing this package loads only the registry (no torch): the config reads it.
"""
from __future__ import annotations

import importlib

from .registry import FAMILIES, METHODS, Method, family_of, methods_of, table

__all__ = ["FAMILIES", "METHODS", "Method", "family", "family_of", "methods_of", "table"]


def family(method: str):
    """The Family object (cmacc.methods.protocol.Family) of a method name or a family name."""
    name = METHODS[method].family if method in METHODS else method
    if name not in FAMILIES:
        raise KeyError(f"no method or family {method!r}; methods: {sorted(METHODS)}")
    return importlib.import_module(FAMILIES[name] + ".family").FAMILY
