"""BatchNorm across ranks: split-BN groups of the global batch, SyncBN groups, running statistics.

``model.bn_splits`` counts BatchNorm groups of the *global* batch M (0 = one per rank: per-GPU
BN, as in He et al. 2020). With W ranks, s groups are s/W split-BN groups per rank when W divides s; otherwise
SyncBatchNorm (CUDA) joins W/s ranks per group. Running statistics are averaged over ranks after
every step (cmacc.engine.train), so checkpoints do not depend on W.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from ..config import Config, ConfigError
from ..system.dist import Comm

log = logging.getLogger("cmacc")


def bn_layout(cfg: Config, world: int, cuda: bool) -> tuple[int, list[list[int]] | None]:
    """(split-BN groups per rank, SyncBN rank groups or None) for model.bn_splits over W ranks."""
    M, s = cfg.M, cfg.model.bn_splits or world
    if M % world or M // world < 2:
        raise ConfigError(f"config key 'M': the global mini-batch M={M} must split into {world} equal shares "
                          f"of at least 2 clips (each rank takes M/W)")
    if M % s:
        raise ConfigError(f"config key 'model.bn_splits': M={M} does not split into {s} BatchNorm groups")
    if cfg.model.sync_bn and s % world:
        if not cuda:
            raise ConfigError("config key 'model.sync_bn': SyncBatchNorm needs CUDA (NCCL); on CPU set "
                              f"model.bn_splits to a multiple of the world size {world}")
        if world % s:
            raise ConfigError(f"config key 'model.bn_splits': with model.sync_bn, {s} groups must divide the "
                              f"world size {world} (each group is synchronised over W/bn_splits ranks)")
        return 1, [[r for r in range(world) if r % s == j] for j in range(s)]
    if s % world:
        raise ConfigError(f"config key 'model.bn_splits': {s} BatchNorm group(s) of the global batch cannot be "
                          f"computed by {world} ranks without SyncBN; use a multiple of {world} "
                          f"(0 or {world}: BatchNorm per rank, per-GPU BN) or model.sync_bn=true on CUDA")
    if cfg.model.sync_bn:
        log.warning("model.sync_bn has no effect: bn_splits=%d groups fall on whole ranks", s)
    return s // world, None


def sync_batchnorm(modules: list[nn.Module], comm: Comm, groups: list[list[int]]) -> None:
    """Every BN layer of ``modules`` (the family's sync_bn_modules) becomes a SyncBatchNorm over
    this rank's group (CUDA/NCCL only)."""
    pgs = [torch.distributed.new_group(g) for g in groups]  # every rank creates every group, in order
    convert_sync_batchnorm(modules, pgs[[comm.rank in g for g in groups].index(True)])


def convert_sync_batchnorm(modules: list[nn.Module], group) -> None:
    """Replace the BN layers inside each module, in place (a module that is itself a BN layer
    cannot be replaced in place: refused)."""
    for module in modules:
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"{type(module).__name__} cannot be converted in place; pass its parent")
        nn.SyncBatchNorm.convert_sync_batchnorm(module, group)


def bn_statistics(model: nn.Module) -> list[torch.Tensor]:
    """Running means and variances of every BN layer (averaged over ranks after each step)."""
    return [t for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for t in (m.running_mean, m.running_var) if t is not None]
