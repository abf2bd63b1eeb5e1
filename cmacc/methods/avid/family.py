"""What the training engine asks of the AVID family: the model, the banks' first fill, and
AVID-CMA's positive sets (from the source run's banks, then every cma.resample_every epochs)."""
from __future__ import annotations

import time

import torch

from ..losses import nce_flat
from ..protocol import Context, Encoders, Family, log_k1
from ..shared import SamplerOptions
from . import checks
from .model import AVID


class AvidFamily(Family):
    name = "avid"

    def validate(self, cfg) -> None:
        checks.validate(cfg)

    def describe(self, cfg) -> str:
        a = cfg.avid
        text = (f"M={cfg.M} K={a.num_negatives} per clip ({a.negatives}) tau={a.tau} bank mu={a.momentum} "
                f"loss={a.loss} Z from {a.z_from}")
        if cfg.spec.objective != "cma":
            return text
        c = cfg.cma
        return (text + f"; CMA: P_i of {c.pos_k} by {c.agreement}, {c.num_positives or 'all'} per step, cross-modal "
                f"positives {c.cross_positives}, within-modal x{c.within_weight:g} on {c.within_negatives or 'all'} negatives")

    def data_needs(self, cfg) -> list[tuple[str, int, str]]:
        return super().data_needs(cfg) + [("avid.num_negatives", checks.bank_clips(cfg),
                                           "each clip's negatives (other clips, outside its CMA positive set)")]

    def build(self, cfg, encoders: Encoders, comm, n_train: int, backend: str) -> AVID:
        a, c, s = cfg.avid, cfg.cma, cfg.sampler
        options = SamplerOptions(first=s.first, temperature=s.temperature, backend=backend,
                                 exclude_batch=s.exclude_batch)
        return AVID(*encoders, n_train, objective=cfg.spec.objective, K=a.num_negatives, tau=a.tau,
                    momentum=a.momentum, loss=a.loss, negatives=a.negatives, z_from=a.z_from, pos_k=c.pos_k,
                    num_positives=c.num_positives, agreement=c.agreement, within_weight=c.within_weight,
                    cross_positives=c.cross_positives, within_negatives=c.within_negatives,
                    sampler=options, comm=comm, seed=cfg.seed)

    def init_from_buffers(self, cfg) -> list[str]:
        return ["bank_v", "bank_a", "Z"] if cfg.spec.objective == "cma" else []  # CMA: the AVID run's banks

    def start(self, model: AVID, ctx: Context) -> None:
        cfg = ctx.cfg
        if cfg.avid.bank_init == "encode" and not cfg.init_from:  # every clip through the initial f_v, f_a
            ctx.mark("bank_init")
            n_pad = -ctx.n_train % cfg.M  # mini-batches of M, the last one padded
            ids = torch.cat([torch.arange(ctx.n_train), torch.arange(n_pad)])
            kv, ka = ctx.encode((model.f_v, model.f_a), ids, "bank", 0)
            model.bank_v.copy_(kv[:ctx.n_train])
            model.bank_a.copy_(ka[:ctx.n_train])
            ctx.average_bn()
        if cfg.spec.objective == "cma":  # positive sets from the AVID run's banks
            model.find_positives()

    def before_step(self, model: AVID, ctx: Context, s: int) -> dict:
        every = ctx.steps_per_epoch * ctx.cfg.cma.resample_every
        if ctx.cfg.spec.objective != "cma" or s == 0 or s % every:
            return {}
        t0 = time.perf_counter()
        model.find_positives()  # AVID-CMA: positive sets from the banks every resample_every epochs
        return {"time_positives": time.perf_counter() - t0}

    def chance_loss(self, cfg, model: AVID) -> float:
        """Each direction's loss when every score is 1 / tau (queries and banks at one point): the sum
        over its terms of weight times log(K_t + 1) (InfoNCE) or NCE at that score with the run's Z,
        K_t the term's negatives (NaN before Z is estimated at step 1)."""
        Z = float(model.Z)
        if model.loss_type == "nce" and Z <= 0:
            return float("nan")
        per_term = (lambda K: log_k1(K)) if model.loss_type == "infonce" else (lambda K: nce_flat(1.0 / model.tau, K, Z))
        return sum(w * per_term(model.term_negatives(kind)) for m, _, kind, w in model.terms() if m == "v")


FAMILY = AvidFamily()
