"""Audio-Visual Instance Discrimination (AVID; Morgado, Vasconcelos, Misra, 2020), Eqs. 1-3, and
Cross-Modal Agreement (AVID-CMA; Morgado, Misra, Vasconcelos, 2021), in the harness of the MoCo family (cmacc.methods.moco).

Memory banks hold one unit vector per training clip and modality, v̄_i and ā_i, initialised at
random. A step encodes the batch, v_i = f_v(video_i) and a_i = f_a(audio_i), and contrasts each
with bank entries by NCE (Wu et al., 2018), scores s = x.y / tau:

    Self-AVID   L_NCE(v_i; v̄_i, N_i) + L_NCE(a_i; ā_i, N_i)                       Eq. 1
    Cross-AVID  L_NCE(v_i; ā_i, N_i) + L_NCE(a_i; v̄_i, N_i)                       Eq. 2
    Joint-AVID  Self-AVID + Cross-AVID                                             Eq. 3

    L_NCE(x; P, N) = - mean_{p in P} log h(s_p) - sum_{n in N} log (1 - h(s_n)),
    h(s) = e^s / (e^s + K Z)

where N_i are K negatives drawn uniformly from the bank without the clip itself, and Z (the
partition function's estimate, as a mean of e^s) is computed once from the first batch and then
kept (in the state dict: checkpoints and resumes keep it): from the first term's negatives
(``z_from="first"``: v->a for Cross and Joint, v->v for Self, as AVID's code, whose single NCE
criterion fixes Z on its first call) or from every term's (``"all"``). ``loss="infonce"``
replaces NCE by -log e^{s_p} / (e^{s_p} + sum_n e^{s_n}). After the loss, the batch's entries
become normalize(mu entry + (1 - mu) embedding), mu = 0.5.

CMA (``objective="cma"``, started from an AVID run): every clip i has a positive set P_i, the
``pos_k`` clips j != i with the highest agreement of the two banks' similarities, consensus
min(v̄_i.v̄_j, ā_i.ā_j) (or union = max, or one modality's), recomputed every
``resample_every`` epochs. A step uses all of P_i (``num_positives=0``, AVID-CMA's code) or
draws ``num_positives`` of it; negatives are drawn uniformly outside P_i and i. The loss is the
cross-modal instance NCE (v_i against ā, a_i against v̄) whose positive is i alone
(``cross_positives="instance"``, AVID-CMA's xModalInst term) or i and its positives
(``"instance+set"``), plus ``within_weight`` times the within-modal NCE whose positives are
those of P_i (v_i against v̄, a_i against ā) and whose negatives are the first
``within_negatives`` of the clip's K (0: all K; AVID-CMA's code: 64).

Scale: these are the sums Eqs. 1-3 write. AVID's code halves each pair of terms and normalises
the coefficients: Self and Cross here are 2x its loss, Joint 4x, CMA 2 (1 + within_weight)x.

Active negatives (``negatives`` = a cmacc.sampling embedding, e.g. "gradient"): instead of
uniform draws, each bank's K negatives are picked with cmacc.sampling.select -- the bank is the
pool, the gathered queries contrasted against it are the queries, the batch's clips excluded --
and shared by the batch's queries, as D is in CM-ACC.

Across W ranks the banks, Z and the positive sets are replicated: embeddings and ids are gathered
before a bank update, negatives come from the step's generator (the same on every rank), and each
rank takes its rows. A single process is the W = 1 case.
"""
from __future__ import annotations

import time

import torch
from torch import nn
from torch.nn import functional as F

from ... import sampling
from ...models import Encoder
from ...system.dist import Comm
from ..losses import infonce_multi, nce
from ..protocol import StepOutput
from ..registry import AGREEMENTS, AVID_OBJECTIVES, CROSS_POSITIVES, Z_SOURCES
from ..shared import SamplerOptions, WrappableQueries, spread
from .positives import agreement_topk, draw_outside

Term = tuple[str, str, str, float]  # (query modality, target bank, positives, weight)


class AVID(WrappableQueries, nn.Module):
    """f_v, f_a (trained by gradients) and the memory banks (updated by the rule above).

    n: training clips (bank rows); K: negatives per query; tau: NCE temperature (AVID: 0.07);
    momentum: bank mu (AVID: 0.5); loss: "nce" | "infonce"; negatives: "uniform" or a
    cmacc.sampling embedding; z_from: "first" | "all"; pos_k / num_positives / agreement /
    within_weight / cross_positives / within_negatives: CMA only.
    """

    def __init__(self, f_v: Encoder, f_a: Encoder, n: int, *, objective: str = "cross", K: int = 1024,
                 tau: float = 0.07, momentum: float = 0.5, loss: str = "nce", negatives: str = "uniform",
                 z_from: str = "first", pos_k: int = 32, num_positives: int = 0, agreement: str = "consensus",
                 within_weight: float = 1.0, cross_positives: str = "instance", within_negatives: int = 64,
                 sampler: SamplerOptions | None = None, comm: Comm | None = None, seed: int = 0) -> None:
        super().__init__()
        _check(n, objective, K, loss, negatives, z_from, pos_k, num_positives, agreement, cross_positives,
               within_negatives)
        self.objective, self.K, self.tau, self.mu, self.loss_type = objective, K, tau, momentum, loss
        self.negatives, self.z_from, self.pos_k, self.num_positives = negatives, z_from, pos_k, num_positives
        self.agreement, self.within_weight, self.cross_positives = agreement, within_weight, cross_positives
        self.within_negatives = within_negatives
        self.sampler, self.comm = sampler or SamplerOptions(), comm or Comm()
        self.f_v, self.f_a = f_v, f_a
        self._init_queries()
        g = torch.Generator().manual_seed(seed)
        d = f_v.d
        self.register_buffer("bank_v", F.normalize(torch.randn(n, d, generator=g), dim=1))  # v̄: n x d
        self.register_buffer("bank_a", F.normalize(torch.randn(n, d, generator=g), dim=1))  # ā: n x d
        self.register_buffer("Z", torch.tensor(-1.0, dtype=torch.float64))  # < 0: not estimated yet
        if objective == "cma":
            self.register_buffer("positives", torch.full((n, pos_k), -1, dtype=torch.long))  # P_i, sorted

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

    def terms(self) -> list[Term]:
        """The terms of Eqs. 1-3 and of CMA, in AVID's code's order: (query modality, target bank,
        positives, weight); positives "self" = the clip's own entry, "P" = its positives of P_i."""
        cross = [("v", "a", "self", 1.0), ("a", "v", "self", 1.0)]
        within = [("v", "v", "self", 1.0), ("a", "a", "self", 1.0)]
        if self.objective == "cma":
            x = "self" if self.cross_positives == "instance" else "self+P"
            return [("v", "a", x, 1.0), ("a", "v", x, 1.0),
                    ("v", "v", "P", self.within_weight), ("a", "a", "P", self.within_weight)]
        return {"self": within, "cross": cross, "joint": cross + within}[self.objective]

    def term_negatives(self, kind: str) -> int:
        """Negatives per row of a term with positives ``kind``: CMA's within-modal positive-set term
        takes the first ``within_negatives`` of the K (AVID-CMA's num_negatives_within; all K when
        it is 0 or at least K)."""
        return min(self.within_negatives, self.K) if kind == "P" and self.within_negatives else self.K

    # ---- negatives and positives ----
    def _uniform(self, ids: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(M x K negatives, M x P positives or None) for the global batch: P = pos_k (all of P_i)
        or num_positives drawn from it with replacement."""
        ids = ids.to(self.bank_v.device)
        if self.objective != "cma":
            return draw_outside(self.n, ids[:, None], self.K, generator), None
        P = self.positives[ids]  # M x pos_k, sorted
        if (P < 0).any():
            raise RuntimeError("CMA positive sets were never computed (find_positives)")
        excluded = torch.cat([P, ids[:, None]], 1).sort(dim=1).values  # P_i and i
        if not self.num_positives:
            return draw_outside(self.n, excluded, self.K, generator), P
        dev = generator.device if generator is not None else "cpu"
        pick = torch.randint(self.pos_k, (len(ids), self.num_positives), generator=generator, device=dev)
        return draw_outside(self.n, excluded, self.K, generator), P.gather(1, pick.to(P.device))

    def _active(self, bank: torch.Tensor, queries: torch.Tensor, batch_ids: torch.Tensor, generator) -> torch.Tensor:
        """K ids of ``bank`` picked by cmacc.sampling.select for the gathered ``queries``."""
        exclude = torch.zeros(self.n, dtype=torch.bool, device=bank.device)
        exclude[batch_ids.to(bank.device)] = True
        return sampling.select(bank, queries, self.K, embedding=self.negatives, exclude=exclude, generator=generator,
                               backend=self.sampler.backend, first=self.sampler.first,
                               temperature=self.sampler.temperature)

    def _negatives(self, m: int, batch_ids: torch.Tensor, gathered: dict, generator, timings: dict):
        """Per bank: this rank's m x K negative ids, and the ids to report (global); CMA's drawn
        positives (M x P, global) or None."""
        c = self.comm
        if self.negatives == "uniform":
            neg_all, pos_ids = self._uniform(batch_ids, generator)  # M x K (and M x P): every rank the same
            return {t: c.shard(neg_all) for t in "va"}, {t: neg_all for t in "va"}, pos_ids
        t0, banks = time.perf_counter(), {"v": self.bank_v, "a": self.bank_a}
        neg_ids, report = {}, {}
        for t in "va":  # each bank's negatives, chosen by the queries contrasted against it
            Q = torch.cat([gathered[q] for q, target, _, _ in self.terms() if target == t])
            report[t] = self._active(banks[t], Q, batch_ids, generator)
            neg_ids[t] = report[t].expand(m, -1)
        timings["sampler"] = time.perf_counter() - t0
        return neg_ids, report, None

    # ---- scores and losses ----
    @torch.no_grad()
    def _targets(self, ids: torch.Tensor, neg_ids: dict, P: torch.Tensor | None) -> dict:
        """(positive rows m x P x d, negative rows m x K x d) of every term, from the banks as they
        were before this step's update."""
        banks, mine = {"v": self.bank_v, "a": self.bank_a}, ids.to(self.bank_v.device)[:, None]
        rows = {"self": mine, "P": P, "self+P": torch.cat([mine, P], 1) if P is not None else None}
        return {(q, t): (banks[t][rows[kind]].clone(), banks[t][neg_ids[t][:, :self.term_negatives(kind)]].clone())
                for q, t, kind, _ in self.terms()}

    @torch.no_grad()
    def _estimate_z(self, scores: dict) -> None:
        """NCE's Z from the first batch, then kept: the mean of e^s over the negatives of the first
        term (z_from="first") or the mean of every term's mean (z_from="all"); averaged over ranks."""
        terms = self.terms()[:1] if self.z_from == "first" else self.terms()
        z = torch.stack([scores[(q, t)][1].detach().float().exp().mean() for q, t, _, _ in terms]).mean()
        z = z.double().reshape(1)
        self.comm.average_([z])
        self.Z.copy_(z[0])

    def _loss(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return nce(pos, neg, self.Z) if self.loss_type == "nce" else infonce_multi(pos, neg)

    # ---- one training step ----
    def forward(self, video: torch.Tensor, audio: torch.Tensor, ids: torch.Tensor,
                generator: torch.Generator | None = None) -> StepOutput:
        """video: m x ...; audio: m x ...; ids: this rank's m clip indices (bank rows)."""
        c, timings = self.comm, {}
        q = dict(zip("va", self.encode_queries(video, audio)))  # v_i, a_i: m x d, unit
        batch_ids = c.gather(ids)  # M
        gathered = {t: c.gather(q[t].detach().float()) for t in "va"}  # M x d: sampler queries, bank update
        neg_ids, neg_report, pos_ids = self._negatives(ids.shape[0], batch_ids, gathered, generator, timings)
        targets = self._targets(ids, neg_ids, c.shard(pos_ids) if pos_ids is not None else None)
        scores = {key: (torch.einsum("md,mpd->mp", q[key[0]], pos) / self.tau,
                        torch.einsum("md,mkd->mk", q[key[0]], neg) / self.tau) for key, (pos, neg) in targets.items()}
        if self.loss_type == "nce" and float(self.Z) < 0:  # Z from the first batch, then kept
            self._estimate_z(scores)
        losses = {"v": video.new_zeros((), dtype=torch.float32), "a": video.new_zeros((), dtype=torch.float32)}
        for m, t, _, w in self.terms():  # Eqs. 1-3: each direction's terms, weighted (CMA)
            pos, neg = scores[(m, t)]
            losses[m] = losses[m] + w * self._loss(pos.float(), neg.float())
        with torch.no_grad():  # the banks move after the loss (AVID's update_memory)
            self.update_banks(batch_ids, gathered["v"], gathered["a"])
        met = "a" if self.objective != "self" else "v"  # the bank the video queries met
        return StepOutput(losses["v"] + losses["a"], losses["v"].detach(), losses["a"].detach(),
                          *self._instance_accuracy(scores), batch_ids, batch_ids, spread(q["v"]), spread(q["a"]),
                          timings=timings, negatives_v=neg_report[met], negatives_a=neg_report["v" if met == "a" else "a"],
                          batch_ids=batch_ids)

    @torch.no_grad()
    def _instance_accuracy(self, scores: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per modality, from its first term with the clip's own entry as a positive: the share of
        rows whose instance positive outscores every negative (a diagnostic)."""
        acc = {}
        for m, t, kind, _ in self.terms():
            if kind in ("self", "self+P") and m not in acc:
                pos, neg = scores[(m, t)]
                acc[m] = (pos[:, 0] > neg.max(1).values).float().mean().detach()
        return acc["v"], acc["a"]


def _check(n: int, objective: str, K: int, loss: str, negatives: str, z_from: str, pos_k: int, num_positives: int,
           agreement: str, cross_positives: str, within_negatives: int) -> None:
    if objective not in AVID_OBJECTIVES:
        raise ValueError(f"objective must be one of {AVID_OBJECTIVES}, got {objective!r}")
    if loss not in ("nce", "infonce"):
        raise ValueError(f"loss must be 'nce' or 'infonce', got {loss!r}")
    if negatives != "uniform" and negatives not in sampling.EMBEDDINGS:
        raise ValueError(f"negatives must be 'uniform' or one of {sampling.EMBEDDINGS}, got {negatives!r}")
    for name, value, allowed in (("agreement", agreement, AGREEMENTS), ("z_from", z_from, Z_SOURCES),
                                 ("cross_positives", cross_positives, CROSS_POSITIVES)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    excluded = 1 + (pos_k if objective == "cma" else 0)
    if not 1 <= K <= n - excluded:
        raise ValueError(f"K={K} negatives per clip need 1 <= K <= {n - excluded} (the {n} clips less "
                         f"the clip itself{' and its positive set' if objective == 'cma' else ''})")
    if objective == "cma" and not 0 <= num_positives <= pos_k:
        raise ValueError(f"num_positives={num_positives} must be in 0..pos_k={pos_k} (0: all)")
    if within_negatives < 0:
        raise ValueError(f"within_negatives={within_negatives} must be >= 0 (0: all K)")
