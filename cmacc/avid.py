"""Audio-Visual Instance Discrimination (AVID; Morgado, Vasconcelos, Misra, 2020), Eqs. 1-3, and
Cross-Modal Agreement (AVID-CMA; Morgado, Misra, Vasconcelos, 2021), in the harness of moco.py.

Memory banks hold one unit vector per training clip and modality, v̄_i and ā_i, initialised at
random. A step encodes the batch, v_i = f_v(video_i) and a_i = f_a(audio_i), and contrasts each
with bank entries by NCE (Wu et al., 2018), scores s = x.y / tau:

    Self-AVID   L_NCE(v_i; v̄_i, N_i) + L_NCE(a_i; ā_i, N_i)                       Eq. 1
    Cross-AVID  L_NCE(v_i; ā_i, N_i) + L_NCE(a_i; v̄_i, N_i)                       Eq. 2
    Joint-AVID  Self-AVID + Cross-AVID                                             Eq. 3

    L_NCE(x; P, N) = - mean_{p in P} log h(s_p) - sum_{n in N} log (1 - h(s_n)),
    h(s) = e^s / (e^s + K Z)

where N_i are K negatives drawn uniformly from the bank without the clip itself, and Z (the
partition function's estimate, as a mean of e^s) is computed once from the first batch's
negatives and then kept (in the state dict: checkpoints and resumes keep it). ``loss="infonce"``
replaces NCE by -log e^{s_p} / (e^{s_p} + sum_n e^{s_n}). After the loss, the batch's entries
become normalize(mu entry + (1 - mu) embedding), mu = 0.5.

CMA (``objective="cma"``, started from an AVID run): every clip i has a positive set P_i, the
``pos_k`` clips j != i with the highest agreement of the two banks' similarities, consensus
min(v̄_i.v̄_j, ā_i.ā_j) (or union = max, or one modality's), recomputed every
``resample_every`` epochs. Each step draws ``num_positives`` of P_i; negatives are drawn
uniformly outside P_i and i. The loss is the cross-modal instance NCE whose positives are i and
the drawn P_i (v_i against ā, a_i against v̄), plus ``within_weight`` times the within-modal NCE
whose positives are the drawn P_i (v_i against v̄, a_i against ā).

Active negatives (``negatives`` = a cmacc.sampling embedding, e.g. "gradient"): instead of
uniform draws, each bank's K negatives are picked with cmacc.sampling.select -- the bank is the
pool, the gathered queries contrasted against it are the queries, the batch's clips excluded --
and shared by the batch's queries, as D is in CM-ACC.

Across W ranks the banks, Z and the positive sets are replicated: embeddings and ids are gathered
before a bank update, negatives come from the step's generator (the same on every rank), and each
rank takes its rows. A single process is the W = 1 case.
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn
from torch.nn import functional as F

from . import sampling
from .dist import Comm
from .moco import QueryEncoders, SamplerOptions, StepOutput, spread
from .models import Encoder

OBJECTIVES = ("self", "cross", "joint", "cma")
AGREEMENTS = ("consensus", "union", "video", "audio")


def nce(pos: torch.Tensor, neg: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """NCE of Wu et al. (2018) as AVID uses it. pos: m x P scores (already / tau), neg: m x K.
    -mean_p log h(s_p) - sum_n log(1 - h(s_n)), h(s) = e^s / (e^s + K Z), averaged over rows;
    written with softplus: -log h(s) = softplus(log KZ - s), -log(1 - h(s)) = softplus(s - log KZ)."""
    log_kz = math.log(neg.shape[1]) + torch.log(Z.to(pos.dtype))
    return (F.softplus(log_kz - pos).mean(1) + F.softplus(neg - log_kz).sum(1)).mean()


def infonce_multi(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """-log e^{s_p} / (e^{s_p} + sum_n e^{s_n}), averaged over the P positives and the rows."""
    lse_neg = torch.logsumexp(neg, dim=1, keepdim=True)  # m x 1
    return (torch.logaddexp(pos, lse_neg) - pos).mean()


def draw_outside(n: int, excluded: torch.Tensor, K: int, generator: torch.Generator | None) -> torch.Tensor:
    """K indices per row, uniform over 0..n-1 without the row's ``excluded`` ids (rows x E, sorted,
    distinct), with replacement (as AVID's alias sampler). r ~ U{0..n-E-1} is shifted past every
    excluded id: after sorting, id e_j is the j-th one skipped, so r maps to r + #{j: e_j - j <= r}."""
    rows, E = excluded.shape
    r = torch.randint(n - E, (rows, K), generator=generator, device=generator.device if generator else "cpu")
    r = r.to(excluded.device)
    ref = excluded - torch.arange(E, device=excluded.device)  # non-decreasing
    return r + (r.unsqueeze(2) >= ref.unsqueeze(1)).sum(2)


@torch.no_grad()
def agreement_topk(bank_v: torch.Tensor, bank_a: torch.Tensor, k: int, agreement: str = "consensus",
                   chunk: int | None = None) -> torch.Tensor:
    """AVID-CMA's positive sets: for every clip i the k clips j != i of highest agreement between
    the two banks' similarities (consensus: min; union: max; video / audio: one bank's), sorted by
    index. n x k int64, computed in row chunks: chunk x n similarities at a time (default: about
    2^27 of them, 0.5 GB in fp32, whatever n -- 74 rows at AudioSet's 1.8 M clips)."""
    if agreement not in AGREEMENTS:
        raise ValueError(f"agreement must be one of {AGREEMENTS}, got {agreement!r}")
    n = bank_v.shape[0]
    chunk = chunk or max(1, min(1024, 2**27 // n))
    out = torch.empty(n, k, dtype=torch.long, device=bank_v.device)
    for s in range(0, n, chunk):
        rows = torch.arange(s, min(n, s + chunk), device=bank_v.device)
        sim_v, sim_a = bank_v[rows] @ bank_v.T, bank_a[rows] @ bank_a.T  # chunk x n
        sim = {"consensus": torch.minimum, "union": torch.maximum}.get(agreement)
        sim = sim(sim_v, sim_a) if sim is not None else (sim_v if agreement == "video" else sim_a)
        sim[torch.arange(len(rows)), rows] = float("-inf")  # never the clip itself
        out[rows] = sim.topk(k, dim=1).indices.sort(dim=1).values
    return out


class AVID(nn.Module):
    """f_v, f_a (trained by gradients) and the memory banks (updated by the rule above).

    n: training clips (bank rows); K: negatives per query; tau: NCE temperature (AVID: 0.07);
    momentum: bank mu (AVID: 0.5); loss: "nce" | "infonce"; negatives: "uniform" or a
    cmacc.sampling embedding; pos_k / num_positives / agreement / within_weight: CMA only.
    """

    def __init__(self, f_v: Encoder, f_a: Encoder, n: int, *, objective: str = "cross", K: int = 1024,
                 tau: float = 0.07, momentum: float = 0.5, loss: str = "nce", negatives: str = "uniform",
                 pos_k: int = 32, num_positives: int = 8, agreement: str = "consensus", within_weight: float = 1.0,
                 sampler: SamplerOptions | None = None, comm: Comm | None = None, seed: int = 0) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if loss not in ("nce", "infonce"):
            raise ValueError(f"loss must be 'nce' or 'infonce', got {loss!r}")
        if negatives != "uniform" and negatives not in sampling.EMBEDDINGS:
            raise ValueError(f"negatives must be 'uniform' or one of {sampling.EMBEDDINGS}, got {negatives!r}")
        if agreement not in AGREEMENTS:
            raise ValueError(f"agreement must be one of {AGREEMENTS}, got {agreement!r}")
        excluded = 1 + (pos_k if objective == "cma" else 0)
        if not 1 <= K <= n - excluded:
            raise ValueError(f"K={K} negatives per clip need 1 <= K <= {n - excluded} (the {n} clips less "
                             f"the clip itself{' and its positive set' if objective == 'cma' else ''})")
        if objective == "cma" and not 1 <= num_positives <= pos_k:
            raise ValueError(f"num_positives={num_positives} must be in 1..pos_k={pos_k}")
        self.objective, self.K, self.tau, self.mu, self.loss_type = objective, K, tau, momentum, loss
        self.negatives, self.pos_k, self.num_positives = negatives, pos_k, num_positives
        self.agreement, self.within_weight = agreement, within_weight
        self.sampler, self.comm = sampler or SamplerOptions(), comm or Comm()
        self.f_v, self.f_a = f_v, f_a
        self.__dict__["encode_queries"] = QueryEncoders(f_v, f_a)
        g = torch.Generator().manual_seed(seed)
        d = f_v.d
        self.register_buffer("bank_v", F.normalize(torch.randn(n, d, generator=g), dim=1))  # v̄: n x d
        self.register_buffer("bank_a", F.normalize(torch.randn(n, d, generator=g), dim=1))  # ā: n x d
        self.register_buffer("Z", torch.tensor(-1.0, dtype=torch.float64))  # < 0: not estimated yet
        if objective == "cma":
            self.register_buffer("positives", torch.full((n, pos_k), -1, dtype=torch.long))  # P_i, sorted

    # the harness's interface (train.py): no key encoders, no queue, no pool
    uses_pool = False

    def wrap_queries(self, wrap) -> nn.Module:
        self.__dict__["encode_queries"] = wrap(QueryEncoders(self.f_v, self.f_a))
        return self.encode_queries

    def momentum_update(self, m: float | None = None) -> None:
        """AVID has no momentum encoders; the banks move in :meth:`update_banks`."""

    @property
    def n(self) -> int:
        return self.bank_v.shape[0]

    @torch.no_grad()
    def update_banks(self, ids: torch.Tensor, v: torch.Tensor, a: torch.Tensor) -> None:
        """bank[ids] <- normalize(mu bank[ids] + (1 - mu) x), for the global batch (M ids, M x d)."""
        ids = ids.to(self.bank_v.device)
        for bank, x in ((self.bank_v, v), (self.bank_a, a)):
            bank.index_copy_(0, ids, F.normalize(self.mu * bank[ids] + (1 - self.mu) * x.to(bank.dtype), dim=1))

    @torch.no_grad()
    def find_positives(self) -> None:
        """CMA: P_i from the current banks (every rank computes the same from identical banks)."""
        self.positives.copy_(agreement_topk(self.bank_v, self.bank_a, self.pos_k, self.agreement))

    # ---- negatives and positives ----
    def _uniform(self, ids: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(M x K negatives, M x num_positives drawn positives or None) for the global batch."""
        ids = ids.to(self.bank_v.device)
        if self.objective != "cma":
            return draw_outside(self.n, ids[:, None], self.K, generator), None
        P = self.positives[ids]  # M x pos_k, sorted
        if (P < 0).any():
            raise RuntimeError("CMA positive sets were never computed (find_positives)")
        dev = generator.device if generator is not None else "cpu"
        pick = torch.randint(self.pos_k, (len(ids), self.num_positives), generator=generator, device=dev)
        pos = P.gather(1, pick.to(P.device))
        excluded = torch.cat([P, ids[:, None]], 1).sort(dim=1).values  # P_i and i
        return draw_outside(self.n, excluded, self.K, generator), pos

    def _active(self, bank: torch.Tensor, queries: torch.Tensor, batch_ids: torch.Tensor, generator) -> torch.Tensor:
        """K ids of ``bank`` picked by cmacc.sampling.select for the gathered ``queries``."""
        exclude = torch.zeros(self.n, dtype=torch.bool, device=bank.device)
        exclude[batch_ids.to(bank.device)] = True
        return sampling.select(bank, queries, self.K, embedding=self.negatives, exclude=exclude, generator=generator,
                               backend=self.sampler.backend, first=self.sampler.first,
                               temperature=self.sampler.temperature)

    def _terms(self) -> list[tuple[str, str, str, float]]:
        """(query modality, target bank, positives, weight): the terms of Eqs. 1-3 and of CMA."""
        cross = [("v", "a", "self", 1.0), ("a", "v", "self", 1.0)]
        within = [("v", "v", "self", 1.0), ("a", "a", "self", 1.0)]
        if self.objective == "cma":
            return [("v", "a", "self+P", 1.0), ("a", "v", "self+P", 1.0),
                    ("v", "v", "P", self.within_weight), ("a", "a", "P", self.within_weight)]
        return {"self": within, "cross": cross, "joint": cross + within}[self.objective]

    def _loss(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return nce(pos, neg, self.Z) if self.loss_type == "nce" else infonce_multi(pos, neg)

    # ---- one training step ----
    def forward(self, video: torch.Tensor, audio: torch.Tensor, ids: torch.Tensor,
                video_k: torch.Tensor | None = None, audio_k: torch.Tensor | None = None,
                generator: torch.Generator | None = None, encode_picks=None) -> StepOutput:
        """video: m x ...; audio: m x ...; ids: this rank's m clip indices (bank rows)."""
        c, timings = self.comm, {}
        q = dict(zip("va", self.encode_queries(video, audio)))  # v_i, a_i: m x d, unit
        batch_ids = c.gather(ids)  # M
        gathered = {t: c.gather(q[t].detach().float()) for t in "va"}  # M x d: sampler queries, bank update
        banks = {"v": self.bank_v, "a": self.bank_a}
        terms = self._terms()
        pos_ids = None
        if self.negatives == "uniform":
            neg_all, pos_ids = self._uniform(batch_ids, generator)  # M x K (and M x P): every rank the same
            neg_ids = {t: c.shard(neg_all) for t in "va"}
            neg_report = {t: neg_all for t in "va"}
        else:
            t0 = time.perf_counter()
            neg_ids, neg_report = {}, {}
            for t in "va":  # each bank's negatives, chosen by the queries contrasted against it
                Q = torch.cat([gathered[m] for m, target, _, _ in terms if target == t])
                picked = self._active(banks[t], Q, batch_ids, generator)
                neg_report[t] = picked
                neg_ids[t] = picked.expand(ids.shape[0], -1)
            timings["sampler"] = time.perf_counter() - t0
        mine = ids.to(self.bank_v.device)[:, None]  # m x 1: the clip itself
        P = c.shard(pos_ids) if pos_ids is not None else None
        with torch.no_grad():  # scores against the banks as they were before this step's update
            targets = {}
            for m, t, kind, _ in terms:
                pos_rows = {"self": mine, "P": P, "self+P": torch.cat([mine, P], 1) if P is not None else None}[kind]
                targets[(m, t)] = (banks[t][pos_rows].clone(), banks[t][neg_ids[t]].clone())  # m x P x d, m x K x d
        scores = {key: (torch.einsum("md,mpd->mp", q[key[0]], pos) / self.tau,
                        torch.einsum("md,mkd->mk", q[key[0]], neg) / self.tau) for key, (pos, neg) in targets.items()}
        if self.loss_type == "nce" and float(self.Z) < 0:  # Z from the first batch, then kept
            with torch.no_grad():
                z = torch.stack([neg.detach().float().exp().mean() for _, neg in scores.values()]).mean()
                z = z.double().reshape(1)
                c.average_([z])
                self.Z.copy_(z[0])
        losses = {"v": video.new_zeros((), dtype=torch.float32), "a": video.new_zeros((), dtype=torch.float32)}
        acc = {}
        for m, t, kind, w in terms:
            pos, neg = scores[(m, t)]
            losses[m] = losses[m] + w * self._loss(pos.float(), neg.float())
            if (m, kind) in (("v", "self"), ("a", "self"), ("v", "self+P"), ("a", "self+P")) and m not in acc:
                acc[m] = (pos[:, 0] > neg.max(1).values).float().mean().detach()  # instance top-1
        with torch.no_grad():  # the banks move after the loss (AVID's update_memory)
            self.update_banks(batch_ids, gathered["v"], gathered["a"])
        return StepOutput(losses["v"] + losses["a"], losses["v"].detach(), losses["a"].detach(), acc["v"], acc["a"],
                          batch_ids, batch_ids, spread(q["v"]), spread(q["a"]), timings=timings,
                          negatives_v=neg_report["a" if self.objective != "self" else "v"],
                          negatives_a=neg_report["v" if self.objective != "self" else "a"], batch_ids=batch_ids)
