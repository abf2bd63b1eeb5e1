"""What the training engine asks of the MoCo family: the model, the dictionaries' first fill
(Alg. 1 l.3-5), the pool's refresh (l.7-9), and the picks re-encoded by the current key encoders."""
from __future__ import annotations

import time
from concurrent.futures import Future

import torch
from torch import nn

from ...data import ClipRequest
from ...system.seeds import POOL, QUEUE
from ..protocol import Context, Encoders, Family, log_k1
from ..shared import SamplerOptions
from . import checks
from .model import CrossModalMoCo


class MocoFamily(Family):
    name = "moco"

    def validate(self, cfg) -> None:
        checks.validate(cfg)

    def describe(self, cfg) -> str:
        return f"M={cfg.M} K={cfg.K} N={cfg.N} m={cfg.m} tau={cfg.tau}"

    def data_needs(self, cfg) -> list[tuple[str, int, str]]:
        needs = super().data_needs(cfg)
        if checks.uses_pool(cfg):
            needs.append(("N", cfg.N, "the pool"))
        if cfg.queue_init == "clips":
            needs.append(("K", cfg.K, "the initial dictionary"))
        return needs

    def key_views(self, cfg) -> int:
        return 2 if cfg.spec.objective == "self" else 1  # SMoCo's keys are a second augmentation

    def build(self, cfg, encoders: Encoders, comm, n_train: int, backend: str) -> CrossModalMoCo:
        s = cfg.sampler
        options = SamplerOptions(first=s.first, temperature=s.temperature, backend=backend,
                                 exclude_batch=s.exclude_batch)
        return CrossModalMoCo(*encoders, K=cfg.K, M=cfg.M, N=cfg.N, m=cfg.m, tau=cfg.tau,
                              objective=cfg.spec.objective, negatives=cfg.spec.negatives, fc=cfg.fc,
                              shuffle_bn=cfg.model.shuffle_bn, comm=comm, sampler=options)

    def sync_bn_modules(self, model: CrossModalMoCo) -> list[nn.Module]:
        return [model.f_v, model.f_a, model.h_v, model.h_a]

    def start(self, model: CrossModalMoCo, ctx: Context) -> None:
        if ctx.cfg.queue_init == "clips":  # Alg. 1 l.3-5: D_v, D_a <- keys of K random clips
            ctx.mark("queue_init")
            ids = torch.randperm(ctx.n_train, generator=ctx.generator(QUEUE))[:ctx.cfg.K]
            kv, ka = ctx.encode((model.h_v, model.h_a), ids, "queue", 0)
            model.init_queues(kv, ka, ids.to(ctx.feed.device))
            ctx.average_bn()  # each rank's BN statistics saw its share of the K clips

    def before_step(self, model: CrossModalMoCo, ctx: Context, s: int) -> dict:
        every = _refresh_every(ctx)
        if not model.uses_pool or not (s % every == 0 or s == ctx.start_step and int(model.U_ids[0]) < 0):
            return {}
        ctx.mark("pool")
        t0 = time.perf_counter()
        refresh_pool(model, ctx, s // every)
        rec = {"time_pool": time.perf_counter() - t0}
        pool_labels = ctx.labels[model.U_ids.cpu()]
        if ctx.is_main and (pool_labels >= 0).any():
            from ...engine.diagnostics import class_separation
            rec["pool_class_sep_v"] = class_separation(model.U_v, pool_labels)
            rec["pool_class_sep_a"] = class_separation(model.U_a, pool_labels)
        return rec

    def step_kwargs(self, model: CrossModalMoCo, ctx: Context, s: int) -> dict:
        if not (model.uses_pool and ctx.cfg.sampler.fresh_keys):
            return {}
        ctx.mark("picks")
        return {"encode_picks": PickEncoder(model, ctx, s // _refresh_every(ctx))}

    def after_update(self, model: CrossModalMoCo) -> None:
        model.momentum_update()  # Alg. 1 l.38-39

    def chance_loss(self, cfg, model: CrossModalMoCo) -> float:
        return log_k1(cfg.K)

    def replicated(self, model: CrossModalMoCo) -> dict[str, torch.Tensor]:
        return {f"{name} parameters": torch.cat([p.detach().reshape(-1) for p in getattr(model, name).parameters()])
                for name in ("h_v", "h_a", "f_v", "f_a")}


FAMILY = MocoFamily()


def _refresh_every(ctx: Context) -> int:
    """Steps between pool refreshes: pool_refresh, or once per epoch (Alg. 1 l.7-9)."""
    return ctx.cfg.pool_refresh or ctx.steps_per_epoch


def refresh_pool(model: CrossModalMoCo, ctx: Context, round_: int) -> None:
    """Alg. 1 l.7-9: draw N distinct clips (the same on every rank) and encode them with h."""
    ids = torch.randperm(len(ctx.feed.dataset), generator=ctx.generator(POOL, round_))[:ctx.cfg.N]
    kv, ka = ctx.encode((model.h_v, model.h_a), ids, "pool", round_)
    model.set_pool(ids.to(ctx.feed.device), kv, ka)


class PickEncoder:
    """encode_picks for CrossModalMoCo: keys of this rank's share of the picked pool clips, from
    the current key encoders.

    The clips are rendered exactly as in pool round ``round_`` (same augmentation), so a fresh
    key is the pool key re-computed with today's h -- only the encoder's age differs. The model
    calls :meth:`prefetch` as soon as one modality's picks are known, so that a worker process
    loads them while the main process samples the other modality; without workers (or for ids
    not prefetched) they are loaded in the main process."""

    def __init__(self, model: CrossModalMoCo, ctx: Context, round_: int) -> None:
        self.model, self.feed, self.round, self.amp = model, ctx.feed, round_, ctx.amp
        self.loading: dict[str, tuple[list[ClipRequest], Future]] = {}

    def _requests(self, modality: str, ids: torch.Tensor) -> list[ClipRequest]:
        return [ClipRequest(int(i), self.round, "pool", modality) for i in ids.tolist()]

    def prefetch(self, modality: str, ids: torch.Tensor) -> None:
        reqs = self._requests(modality, ids)
        loading = self.feed.submit(reqs)
        if loading is not None:
            self.loading[modality] = (reqs, loading)

    def _clips(self, modality: str, ids: torch.Tensor) -> torch.Tensor:
        reqs = self._requests(modality, ids)
        sent, loading = self.loading.pop(modality, (None, None))
        return self.feed.one(reqs, loading if sent == reqs else None)[modality]

    @torch.no_grad()
    def __call__(self, ids_v: torch.Tensor, ids_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # One modality at a time: the audio picks finish loading while the video picks are encoded.
        with self.amp():
            k_v = self.model.h_v(self._clips("video", ids_v).to(self.feed.device, non_blocking=True)).float()
            k_a = self.model.h_a(self._clips("audio", ids_a).to(self.feed.device, non_blocking=True)).float()
        return k_v, k_a
