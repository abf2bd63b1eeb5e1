"""Config checks of the MoCo family (torch-free: they run when a config is loaded)."""
from __future__ import annotations

from ...config.validation import TAU, need


def validate(cfg) -> None:
    spec, d = cfg.spec, cfg.data
    need(cfg.K >= cfg.M, "K", f"dictionary size K={cfg.K} must be at least M={cfg.M}")
    need(cfg.K % cfg.M == 0, "K", f"K={cfg.K} must be a multiple of M={cfg.M} (the queue advances M per step)")
    need(cfg.N >= cfg.M, "N", f"pool size N={cfg.N} must be at least M={cfg.M}")
    need(cfg.N % cfg.M == 0, "N", f"pool size N={cfg.N} must be a multiple of M={cfg.M} (pool encoded in mini-batches)")
    need(0.0 <= cfg.m < 1.0, "m", f"momentum must lie in [0, 1), got {cfg.m}")
    need(TAU[0] <= cfg.tau <= TAU[1], "tau", f"temperature must lie in [{TAU[0]:g}, {TAU[1]:g}] (logits are "
         f"similarities / tau; the paper uses 0.07-0.7), got {cfg.tau}")
    need(not (spec.objective == "self" and cfg.fc == "cross"), "model.fc",
         f"method={cfg.method} is unimodal: a cross-modal FC layer has no partner")
    synthetic = d.name in ("synthetic", "omniglot")  # sizes known before the data is built
    if uses_pool(cfg):
        if synthetic:
            need(d.train_size >= cfg.N, "N", f"pool size N={cfg.N} exceeds the dataset (data.train_size="
                 f"{d.train_size}); the pool holds distinct clips")
        need(cfg.N >= cfg.K + 2 * cfg.M, "N",
             f"method={cfg.method} picks M={cfg.M} per step from U \\ D minus the mini-batch: "
             f"needs N >= K + 2M = {cfg.K + 2 * cfg.M}, got N={cfg.N}")
    if cfg.queue_init == "clips" and synthetic:
        need(d.train_size >= cfg.K, "queue_init",
             f"'clips' fills the queue with K={cfg.K} distinct clips but data.train_size={d.train_size}")


def uses_pool(cfg) -> bool:
    """Active (or pool-random) negatives: a candidate pool U is drawn and encoded every refresh."""
    return cfg.spec.negatives != "queue"
