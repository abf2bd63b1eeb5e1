"""Every method cmacc trains, by name: its family and the options the name fixes.

One table read by everything that names a method: the config (``method=`` choices and the
family's checks), the CLI (``cmacc methods``), the reproductions' method lists, the README's
method table (a test compares them) and the training engine, which asks the method's family
(cmacc.methods.family) for every family-specific decision and names no method itself.

A new method is one row here plus, if no family does what it needs, a family's code.
Torch-free: the config imports it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# family name -> its package (a Family subclass in <package>.family, config checks in <package>.checks)
FAMILIES: dict[str, str] = {
    "moco": "cmacc.methods.moco",  # MoCo's momentum key encoders and FIFO dictionaries (CM-ACC, Alg. 1)
    "avid": "cmacc.methods.avid",  # AVID's memory banks and NCE (Morgado et al., 2021)
}

# Option vocabularies, defined here once (the sampler's embeddings: cmacc.sampling.EMBEDDINGS).
MOCO_OBJECTIVES = ("cross", "self")  # cross: q_v vs [k_a+; D_a] and q_a vs [k_v+; D_v]; self: two MoCo's
FC_LAYERS = ("cross", "self", "none")  # cross: h_a's FC momentum-updated from f_v's FC (CM-ACC §3.3)
AVID_OBJECTIVES = ("self", "cross", "joint", "cma")  # AVID Eqs. 1-3, and Cross-Modal Agreement
AGREEMENTS = ("consensus", "union", "video", "audio")  # how CMA's positive sets agree across modalities
Z_SOURCES = ("first", "all")  # NCE's Z from the first term's negatives (AVID's code) or from every term's
CROSS_POSITIVES = ("instance", "instance+set")  # CMA's cross-modal term: the clip (AVID-CMA's code) or also P_i


@dataclass(frozen=True, eq=False)
class Method:
    """What a ``method=`` name means: a family and the options its name fixes."""

    family: str
    options: dict[str, Any] = field(default_factory=dict)
    paper: str = ""  # where the method is in the papers (README's method table)

    def __getattr__(self, name: str) -> Any:  # spec.objective, spec.negatives, spec.fc
        try:
            return self.__dict__["options"][name]
        except KeyError:
            raise AttributeError(f"{self.family} methods have no option {name!r}") from None


def _moco(objective: str, negatives: str, fc: str, paper: str) -> Method:
    """negatives: "queue" (MoCo: enqueue the batch's keys) or a pool embedding of cmacc.sampling."""
    return Method("moco", {"objective": objective, "negatives": negatives, "fc": fc}, paper)


def _avid(objective: str, paper: str) -> Method:
    return Method("avid", {"objective": objective, "fc": "none"}, paper)


METHODS: dict[str, Method] = {
    "cmacc": _moco("cross", "gradient", "cross", "CM-ACC Table 1 row 6 (Alg. 1)"),
    "xmoco": _moco("cross", "queue", "cross", "CM-ACC Table 1 row 5"),
    "xmoco_nofcl": _moco("cross", "queue", "none", "CM-ACC Table 1 row 4"),
    "smoco": _moco("self", "queue", "none", "CM-ACC Table 1 row 3"),
    "ohem": _moco("cross", "ohem", "cross", "CM-ACC Table 5"),
    "feature_active": _moco("cross", "feature", "cross", "CM-ACC Fig. 2, feature embedding"),
    "key_gradient_active": _moco("cross", "key_gradient", "cross", "the released CM-ACC code's embedding"),
    "random_pool": _moco("cross", "random", "cross", "control: the pool and U \\ D, random picks"),
    "avid_self": _avid("self", "AVID Eq. 1 (Self-AVID)"),
    "avid_cross": _avid("cross", "AVID Eq. 2 (Cross-AVID)"),
    "avid_joint": _avid("joint", "AVID Eq. 3 (Joint-AVID)"),
    "avid_cma": _avid("cma", "AVID-CMA (starts from an AVID run: init_from)"),
}


def family_of(method: str) -> str:
    return METHODS[method].family


def methods_of(family: str) -> tuple[str, ...]:
    return tuple(name for name, spec in METHODS.items() if spec.family == family)


def table() -> list[dict[str, Any]]:
    """One row per method: name, family, options, paper (``cmacc methods``, the README's table)."""
    return [{"method": name, "family": m.family, "options": dict(m.options), "paper": m.paper}
            for name, m in METHODS.items()]
