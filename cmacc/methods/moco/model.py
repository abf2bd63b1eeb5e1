"""Cross-Modal Active Contrastive Coding (CM-ACC, Ma et al., ICLR 2021) -- Algorithm 1.

One model holds the method and its MoCo-style relatives (Table 1, Table 5, Fig. 2):

    objective="cross"  q_v vs [k_a+; D_a] and q_a vs [k_v+; D_v]           (XMoCo, CM-ACC)
    objective="self"   q_v vs [k_v+; D_v] and q_a vs [k_a+; D_a]           (SMoCo)
    negatives="queue"  enqueue the mini-batch's keys (MoCo, random negatives)
    negatives=<embedding>  pick M negatives per modality from the pool U \\ D with
                       cmacc.sampling.select (Alg. 1 l.14-30): "gradient" (CM-ACC),
                       "feature", "key_gradient", "ohem", "random"
    fc="cross"         the extra FC layer of §3.3: the FC on top of h_a is momentum-updated
                       from the FC of f_v, and the FC on top of h_v from that of f_a
    fc="self"          FC layers momentum-updated within their modality;  fc="none": no FC

Across W ranks (cmacc.system.dist): M, K, N are global sizes; each rank holds M/W clips of the batch
(global position p on rank p % W). The query encoders are what DistributedDataParallel wraps;
the key encoders, D_v/D_a and the pool are replicated and updated identically on every rank
from gathered tensors, as MoCo does. With one process every collective is the identity.

Shapes: M mini-batch, m = M/W local batch, d embedding size, K dictionary size, N pool size.
"""
from __future__ import annotations

import copy
import time
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ... import sampling
from ...models import Encoder
from ...system.dist import Comm
from ..losses import infonce
from ..protocol import StepOutput
from ..shared import SamplerOptions, WrappableQueries, spread

EncodePicks = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Picks(NamedTuple):
    """One step's active negatives: rows S of the pool U and their clip ids, per modality."""

    S_v: torch.Tensor
    S_a: torch.Tensor
    ids_v: torch.Tensor
    ids_a: torch.Tensor


@torch.no_grad()
def age_gap(q: torch.Tensor, D: torch.Tensor, ptr: torch.Tensor, M: int) -> torch.Tensor:
    """Mean of q . D over the newest M entries of the FIFO dictionary minus over its oldest M
    (slots ptr-M.. and ptr.., ``ptr`` pointing at the next block to overwrite). About 0 when the
    dictionary is consistent; positive when the queries can tell recent keys from old ones by
    the key encoder's drift alone (README, "Dictionary consistency")."""
    K = D.shape[0]
    newest = (ptr - M + torch.arange(M, device=D.device)) % K
    oldest = (ptr + torch.arange(M, device=D.device)) % K
    q = q.float()
    return (q @ D[newest].float().T).mean() - (q @ D[oldest].float().T).mean()


class CrossModalMoCo(WrappableQueries, nn.Module):
    """Query encoders f_v, f_a (trained); key encoders h_v, h_a (momentum); dictionaries D_v, D_a.

    f_v, f_a:   query encoders (cmacc.models.Encoder); the key encoders are deep copies.
    K:          dictionary size (queue length), a multiple of M.      paper: 3,840
    M:          mini-batch size = negatives enqueued per step.          paper: 128
    N:          candidate pool size (pool methods only).               paper: 38,400
    m:          key-encoder momentum (Eq. 4).                           paper: 0.999
    tau:        contrastive temperature (Eq. 7).                        paper: 0.7
    objective:  "cross" | "self";  negatives: "queue" | an embedding;  fc: "cross" | "self" | "none"
    shuffle_bn: shuffle the key batch before the key encoders (split-BN makes it matter); across
                ranks the shuffle moves clips between ranks (MoCo's _batch_shuffle_ddp).
    comm:       cmacc.system.dist.Comm of the run (default: one process).
    """

    def __init__(self, f_v: Encoder, f_a: Encoder, *, K: int, M: int, N: int, m: float, tau: float,
                 objective: str = "cross", negatives: str = "gradient", fc: str = "cross",
                 shuffle_bn: bool = True, sampler: SamplerOptions | None = None,
                 comm: Comm | None = None) -> None:
        super().__init__()
        _check(f_v, f_a, K, M, objective, negatives, fc)
        self.K, self.M, self.N, self.m, self.tau = K, M, N, m, tau
        self.objective, self.negatives, self.fc, self.shuffle_bn = objective, negatives, fc, shuffle_bn
        self.sampler = sampler or SamplerOptions()
        self.comm = comm or Comm()

        self.f_v, self.f_a = f_v, f_a  # query encoders
        self._init_queries()  # q_v, q_a = encode_queries(video, audio): QueryEncoders, or DDP around it
        self.h_v, self.h_a = copy.deepcopy(f_v), copy.deepcopy(f_a)  # key encoders
        for p in list(self.h_v.parameters()) + list(self.h_a.parameters()):
            p.requires_grad = False  # updated by momentum only
        with torch.no_grad():
            for p_k, p_q in self._momentum_pairs():
                p_k.copy_(p_q)  # h starts as its momentum source (for h_a.fc: f_v.fc)

        d = f_v.d
        # Dictionaries (Alg. 1 l.3-5 fills them; see init_queues). ids: clip index or -1.
        self.register_buffer("D_v", F.normalize(torch.randn(K, d), dim=1))  # D_v: K x d
        self.register_buffer("D_a", F.normalize(torch.randn(K, d), dim=1))  # D_a: K x d
        self.register_buffer("D_v_ids", torch.full((K,), -1, dtype=torch.long))
        self.register_buffer("D_a_ids", torch.full((K,), -1, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        if self.uses_pool:  # candidate pool U (Alg. 1 l.7-9), keys from h at refresh time
            self.register_buffer("U_v", torch.zeros(N, d))  # U_v: N x d
            self.register_buffer("U_a", torch.zeros(N, d))  # U_a: N x d
            self.register_buffer("U_ids", torch.full((N,), -1, dtype=torch.long))

    @property
    def uses_pool(self) -> bool:
        return self.negatives != "queue"

    # ---- momentum (Eq. 4, Alg. 1 l.38-39) and the cross-modal FC layer (§3.3) ----
    def _momentum_pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """(key parameter, the query parameter it follows)."""
        pairs = []
        for h, f in ((self.h_v, self.f_v), (self.h_a, self.f_a)):
            for mod_k, mod_q in ((h.backbone, f.backbone), (h.proj, f.proj)):
                pairs += list(zip(mod_k.parameters(), mod_q.parameters(), strict=True))
        if self.fc == "cross":  # h_a's FC follows f_v's FC; h_v's FC follows f_a's FC
            pairs += list(zip(self.h_a.fc.parameters(), self.f_v.fc.parameters(), strict=True))
            pairs += list(zip(self.h_v.fc.parameters(), self.f_a.fc.parameters(), strict=True))
        elif self.fc == "self":
            pairs += list(zip(self.h_v.fc.parameters(), self.f_v.fc.parameters(), strict=True))
            pairs += list(zip(self.h_a.fc.parameters(), self.f_a.fc.parameters(), strict=True))
        return pairs

    @torch.no_grad()
    def momentum_update(self, m: float | None = None) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q for every key parameter (buffers are not averaged)."""
        m = self.m if m is None else m
        pairs = self._momentum_pairs()
        keys = [k for k, _ in pairs]
        torch._foreach_mul_(keys, m)
        torch._foreach_add_(keys, [q for _, q in pairs], alpha=1.0 - m)

    # ---- dictionaries and pool ----
    @torch.no_grad()
    def init_queues(self, keys_v: torch.Tensor, keys_a: torch.Tensor, ids: torch.Tensor) -> None:
        """Alg. 1 l.3-5: D_v, D_a <- keys of K random clips encoded by h_v, h_a."""
        if keys_v.shape != self.D_v.shape or keys_a.shape != self.D_a.shape or ids.shape != (self.K,):
            raise ValueError(f"init_queues expects K x d keys and K ids (K={self.K}), got "
                             f"{tuple(keys_v.shape)}, {tuple(keys_a.shape)}, {tuple(ids.shape)}")
        self.D_v.copy_(keys_v)
        self.D_a.copy_(keys_a)
        self.D_v_ids.copy_(ids)
        self.D_a_ids.copy_(ids)
        self.queue_ptr.zero_()

    @torch.no_grad()
    def set_pool(self, ids: torch.Tensor, keys_v: torch.Tensor, keys_a: torch.Tensor) -> None:
        """Alg. 1 l.7-9: the pool U of N clips and their keys h_v(v_n), h_a(a_n)."""
        if not self.uses_pool:
            raise RuntimeError(f"negatives={self.negatives!r} uses no candidate pool")
        if ids.shape != (self.N,) or keys_v.shape != self.U_v.shape or keys_a.shape != self.U_a.shape:
            raise ValueError(f"set_pool expects N={self.N} ids and N x d keys, got "
                             f"{tuple(ids.shape)}, {tuple(keys_v.shape)}, {tuple(keys_a.shape)}")
        self.U_ids.copy_(ids)
        self.U_v.copy_(keys_v)
        self.U_a.copy_(keys_a)

    @torch.no_grad()
    def _enqueue(self, keys_v: torch.Tensor, keys_a: torch.Tensor, ids_v: torch.Tensor, ids_a: torch.Tensor) -> None:
        """D <- ENQUEUE(DEQUEUE(D), keys) for both modalities: overwrite the oldest M entries (FIFO)."""
        ptr = int(self.queue_ptr)
        for D, D_ids, keys, ids in ((self.D_v, self.D_v_ids, keys_v, ids_v), (self.D_a, self.D_a_ids, keys_a, ids_a)):
            D[ptr:ptr + keys.shape[0]] = keys
            D_ids[ptr:ptr + keys.shape[0]] = ids
        self.queue_ptr.copy_((self.queue_ptr + self.M) % self.K)

    # ---- keys (Alg. 1 l.31) ----
    def _shuffle(self, m: int, generator: torch.Generator | None) -> torch.Tensor | None:
        """The key batch's shuffle (MoCo's shuffling BN): one permutation of the M global positions
        from the step's generator, the same on every rank; None without shuffling."""
        if not self.shuffle_bn:
            return None
        return torch.randperm(m * self.comm.world, generator=generator,  # M, on the generator's device
                              device=generator.device if generator is not None else "cpu")

    @torch.no_grad()
    def _keys(self, h: Encoder, x: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
        """Alg. 1 l.31 with shuffling BN: keys of the global batch (M x d, every rank).

        x: this rank's m clips; perm: from :meth:`_shuffle` (MoCo broadcasts one from rank 0).
        Each rank encodes its share of the shuffled batch, and the gathered keys are put back in
        batch order."""
        c = self.comm
        if perm is None:
            return c.gather(h(x).float())
        k = c.gather(h(c.permute(x, perm)).float())  # M x d, in shuffled order
        return k[torch.argsort(perm).to(k.device)]

    # ---- active sampling (Alg. 1 l.14-30) ----
    @torch.no_grad()
    def _pick(self, U: torch.Tensor, D_ids: torch.Tensor, queries: torch.Tensor, batch_ids: torch.Tensor,
              generator: torch.Generator | None) -> tuple[torch.Tensor, float | None]:
        """Alg. 1 l.15-20 (or its ablations): M indices into U, from U \\ D (and not the batch), and
        the fraction of available rows the CPU sampler never read (None: no k-means++ rounds)."""
        exclude = torch.isin(self.U_ids, D_ids)  # U \ D: rows already in the dictionary
        if self.sampler.exclude_batch:
            exclude |= torch.isin(self.U_ids, batch_ids)  # the batch's own clips are positives
        stats = np.zeros((self.M, len(sampling.cpu.STATS)), dtype=np.int64)
        picks = sampling.select(U, queries, self.M, embedding=self.negatives, exclude=exclude,
                                generator=generator, backend=self.sampler.backend, first=self.sampler.first,
                                temperature=self.sampler.temperature, stats=stats)
        available = int(stats[1:, 0].sum() - stats[1:, 1].sum())  # rows seen in D^2 rounds, not excluded
        return picks, (float(stats[1:, 2:5].sum() / available) if available else None)  # rows not read

    def _select(self, q_for_Dv: torch.Tensor, q_for_Da: torch.Tensor, batch_ids: torch.Tensor, generator,
                encode_picks: EncodePicks | None, timings: dict) -> Picks:
        """l.14-20 and l.23-29: D_v's negatives chosen by the queries contrasted against D_v, and
        vice versa. One modality's picks start loading (encode_picks.prefetch) while the other's
        are sampled."""
        c = self.comm
        Q_Dv, Q_Da = c.gather(q_for_Dv.detach().float()), c.gather(q_for_Da.detach().float())  # M x d
        prefetch = getattr(encode_picks, "prefetch", None)
        t0 = time.perf_counter()
        S_v, timings["pruned_v"] = self._pick(self.U_v, self.D_v_ids, Q_Dv, batch_ids, generator)
        ids_v = self.U_ids[S_v]
        if prefetch is not None:
            prefetch("video", c.shard(ids_v))
        S_a, timings["pruned_a"] = self._pick(self.U_a, self.D_a_ids, Q_Da, batch_ids, generator)
        ids_a = self.U_ids[S_a]
        if prefetch is not None:
            prefetch("audio", c.shard(ids_a))
        if Q_Dv.is_cuda:
            torch.cuda.synchronize(Q_Dv.device)
        timings["sampler"] = time.perf_counter() - t0
        return Picks(S_v, S_a, ids_v, ids_a)

    def _pick_keys(self, picks: Picks, encode_picks: EncodePicks | None, timings: dict):
        """The picks' keys (M x d each): re-encoded by the current h (encode_picks, called with this
        rank's share), or the pool's keys from its last refresh (l.9)."""
        if encode_picks is None:
            return self.U_v[picks.S_v], self.U_a[picks.S_a]
        c, t0 = self.comm, time.perf_counter()
        keys_v, keys_a = encode_picks(c.shard(picks.ids_v), c.shard(picks.ids_a))  # h_v(v_n), h_a(a_n) now
        timings["encode_picks"] = time.perf_counter() - t0
        return c.gather(keys_v.float()), c.gather(keys_a.float())

    # ---- one training step (Alg. 1 l.11-37) ----
    def forward(self, video: torch.Tensor, audio: torch.Tensor, ids: torch.Tensor,
                video_k: torch.Tensor | None = None, audio_k: torch.Tensor | None = None,
                generator: torch.Generator | None = None, encode_picks: EncodePicks | None = None) -> StepOutput:
        """video: m x 3 x T x H x W;  audio: m x B x T_a;  ids: m clip indices (for U \\ D).

        video_k / audio_k: the key views (second augmentations) for the unimodal objective;
        the cross-modal objective encodes keys from the same clips (Alg. 1 l.31).
        encode_picks(ids_v, ids_a) -> (keys_v, keys_a): keys of picked pool clips from the
        *current* key encoders (its optional ``prefetch(modality, ids)`` starts loading them);
        without it the pool's keys from its last refresh are enqueued (Alg. 1 as printed), which
        are older than every positive key -- see README, "stale pool keys".
        generator: the step's generator, identical on every rank (shuffles, then sampler draws).
        """
        c, timings = self.comm, {}
        q_v, q_a = self.encode_queries(video, audio)  # q_v: m x d (l.23), q_a: m x d (l.14)
        perm_v, perm_a = self._shuffle(q_v.shape[0], generator), self._shuffle(q_a.shape[0], generator)
        batch_ids = c.gather(ids)  # M
        cross = self.objective == "cross"
        q_for_Dv, q_for_Da = (q_a, q_v) if cross else (q_v, q_a)  # who is contrasted against D_v, D_a
        if self.uses_pool:  # active sampling (l.14-30); the keys are encoded while the picks load
            picks = self._select(q_for_Dv, q_for_Da, batch_ids, generator, encode_picks, timings)
        with torch.no_grad():
            k_v = self._keys(self.h_v, video if video_k is None else video_k, perm_v)  # k_v: M x d (l.31)
            k_a = self._keys(self.h_a, audio if audio_k is None else audio_k, perm_a)  # k_a: M x d
        if self.uses_pool:  # l.21, l.30: enqueued before the loss, as in Alg. 1
            self._enqueue(*self._pick_keys(picks, encode_picks, timings), picks.ids_v, picks.ids_a)
        # Eq. 7 (l.32-34) over this rank's queries; D is cloned: the queue changes in place later.
        D_v, D_a = self.D_v.clone(), self.D_a.clone()
        kv, ka = c.shard(k_v), c.shard(k_a)  # m x d: positives of the local queries
        loss_v, acc_v = infonce(q_v, ka, D_a, self.tau) if cross else infonce(q_v, kv, D_v, self.tau)
        loss_a, acc_a = infonce(q_a, kv, D_v, self.tau) if cross else infonce(q_a, ka, D_a, self.tau)
        out = StepOutput(loss_v + loss_a, loss_v.detach(), loss_a.detach(), acc_v, acc_a,
                         picks.ids_v if self.uses_pool else batch_ids, picks.ids_a if self.uses_pool else batch_ids,
                         spread(q_v), spread(q_a), timings=timings, batch_ids=batch_ids)
        self._measure(out, q_for_Dv, q_for_Da, D_v, D_a)
        if not self.uses_pool:  # MoCo: enqueue the global batch's keys after the loss
            self._enqueue(k_v, k_a, batch_ids, batch_ids)
        return out

    def _measure(self, out: StepOutput, q_for_Dv, q_for_Da, D_v: torch.Tensor, D_a: torch.Tensor) -> None:
        """Diagnostics (no effect on training): the dictionary entries each modality's queries met,
        and how much more they score the newest entries than the oldest (age_gap)."""
        v_met, a_met = (self.D_a_ids, self.D_v_ids) if self.objective == "cross" else (self.D_v_ids, self.D_a_ids)
        out.negatives_v, out.negatives_a = v_met.clone(), a_met.clone()
        out.age_gap_v = age_gap(q_for_Dv, D_v, self.queue_ptr, self.M)  # of D_v, for its queries
        out.age_gap_a = age_gap(q_for_Da, D_a, self.queue_ptr, self.M)


def _check(f_v: Encoder, f_a: Encoder, K: int, M: int, objective: str, negatives: str, fc: str) -> None:
    from ..registry import FC_LAYERS, MOCO_OBJECTIVES
    if objective not in MOCO_OBJECTIVES:
        raise ValueError(f"objective must be one of {MOCO_OBJECTIVES}, got {objective!r}")
    if negatives != "queue" and negatives not in sampling.EMBEDDINGS:
        raise ValueError(f"negatives must be 'queue' or one of {sampling.EMBEDDINGS}, got {negatives!r}")
    if fc not in FC_LAYERS:
        raise ValueError(f"fc must be one of {FC_LAYERS}, got {fc!r}")
    if (f_v.fc is None) != (fc == "none") or (f_a.fc is None) != (fc == "none"):
        raise ValueError(f"fc={fc!r} but the encoders were built {'with' if f_v.fc is not None else 'without'} an FC layer")
    if fc == "cross" and objective == "self":
        raise ValueError("fc='cross' needs the cross-modal objective")
    if K % M:
        raise ValueError(f"K={K} must be a multiple of M={M}")
