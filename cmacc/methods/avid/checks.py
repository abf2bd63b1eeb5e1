"""Config checks of the AVID family (torch-free: they run when a config is loaded)."""
from __future__ import annotations

from ...config.validation import TAU, need


def bank_clips(cfg) -> int:
    """Clips each row's negatives must avoid besides being drawn: itself and (CMA) its positive set,
    plus the K negatives themselves."""
    return cfg.avid.num_negatives + 1 + (cfg.cma.pos_k if cfg.spec.objective == "cma" else 0)


def validate(cfg) -> None:
    a, c, d = cfg.avid, cfg.cma, cfg.data
    need(TAU[0] <= a.tau <= TAU[1], "avid.tau", f"must lie in [{TAU[0]:g}, {TAU[1]:g}], got {a.tau}")
    need(0.0 <= a.momentum < 1.0, "avid.momentum", f"must lie in [0, 1), got {a.momentum}")
    need(a.num_negatives >= 1, "avid.num_negatives", f"must be >= 1, got {a.num_negatives}")
    cma = cfg.spec.objective == "cma"
    if d.name in ("synthetic", "omniglot"):
        left = d.train_size - 1 - (c.pos_k if cma else 0)
        need(a.num_negatives <= left, "avid.num_negatives",
             f"{a.num_negatives} negatives per clip need that many other clips; data.train_size={d.train_size} "
             f"leaves {left}")
    if cma:
        need(c.pos_k >= 1, "cma.pos_k", f"must be >= 1, got {c.pos_k}")
        need(0 <= c.num_positives <= c.pos_k, "cma.num_positives", f"must lie in 0..cma.pos_k={c.pos_k} "
             f"(0: all of them), got {c.num_positives}")
        need(c.within_negatives >= 0, "cma.within_negatives",
             f"must be >= 0 (the first n of the avid.num_negatives; 0 or n >= K: all K), got {c.within_negatives}")
        need(c.resample_every >= 1, "cma.resample_every", f"must be >= 1 (epochs), got {c.resample_every}")
        need(c.within_weight >= 0, "cma.within_weight", f"must be >= 0, got {c.within_weight}")
        need(bool(cfg.init_from), "init_from", "method=avid_cma starts from an AVID run: set init_from=RUN_DIR "
             "(a finished `cmacc pretrain --set method=avid_cross` run)")
