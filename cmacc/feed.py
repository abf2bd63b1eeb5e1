"""What each rank loads: its share of every global mini-batch, of the pool and of the picks.

The global plan is a deterministic function of (seed, step): epoch e visits a permutation drawn
from (seed, e), so the clips a step sees do not depend on the number of ranks W, and no sampler
needs ``set_epoch``. Rank r takes positions r, r+W, ... of each global batch (cmacc.dist), loads
them in its own DataLoader workers, and the key encoders' outputs are gathered back into global
order.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import AbstractContextManager
from typing import Callable

import numpy as np
import torch

from .config import Config
from .data import ClipRequest
from .data.real import Finisher, ManifestAV, collate
from .dist import Comm

# purposes of derived generators
DATA, POOL, QUEUE, STEP = 1, 2, 3, 4


def derived_seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


def generator(seed: int, *keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derived_seed(seed, *keys))
    return g


_DATASET = None  # the dataset of a pick-loading worker process (set by _pick_worker)


def _pick_worker(dataset) -> None:
    global _DATASET
    _DATASET = dataset
    torch.set_num_threads(1)  # as DataLoader workers


def _load(requests: list[ClipRequest]) -> dict:
    return collate([_DATASET[r] for r in requests])


class Feed:
    """Finished batches from a dataset: workers load clips (collate), the main process finishes
    them (DALI decoding, stacking) and reports every clip skipped under the bad-input policy."""

    def __init__(self, dataset, device: torch.device, cfg: Config, skip_log=None, workers: int | None = None) -> None:
        self.dataset, self.device = dataset, device
        self._pool: ProcessPoolExecutor | None = None  # loads picks while the main process samples
        self.num_workers = cfg.data.num_workers if workers is None else workers  # cmacc.cores caps it
        self.finish = Finisher(dataset if isinstance(dataset, ManifestAV) else None, device,
                               max_batch=cfg.M, num_threads=cfg.data.dali_threads)
        self.skip_log = skip_log  # callable(list of (path, reason)) or None

    def __call__(self, batches):
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                                             collate_fn=collate, prefetch_factor=4 if self.num_workers else None)
        for b in loader:
            yield self._finish(b)

    def one(self, requests: list[ClipRequest], loading: Future | None = None) -> dict:
        """One batch (picks to re-encode): from ``loading`` (see :meth:`submit`), else loaded here."""
        batch = loading.result() if loading is not None else collate([self.dataset[r] for r in requests])
        return self._finish(batch)

    def submit(self, requests: list[ClipRequest]) -> Future | None:
        """Start loading ``requests`` in a worker process (None without workers: :meth:`one` loads
        them then). The workers are forked once, with the dataset, and live until :meth:`close`."""
        if not self.num_workers:
            return None
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.num_workers, mp_context=multiprocessing.get_context("fork"),
                                             initializer=_pick_worker, initargs=(self.dataset,))
        return self._pool.submit(_load, requests)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _finish(self, batch: dict) -> dict:
        b = self.finish(batch)
        if b["skipped"] and self.skip_log is not None:
            self.skip_log(b["skipped"])
        return b


class StepBatches(torch.utils.data.Sampler):
    """This rank's clips of steps start..stop-1, lazily: its share of each global batch of M."""

    def __init__(self, cfg: Config, n: int, start: int, stop: int, comm: Comm | None = None) -> None:
        self.cfg, self.n, self.start, self.stop = cfg, n, start, stop
        self.comm = comm or Comm()
        self.spe = max(1, n // cfg.M)  # steps per epoch

    def __len__(self) -> int:
        return self.stop - self.start

    def global_batch(self, step: int, perm: torch.Tensor) -> list[ClipRequest]:
        e, b = divmod(step, self.spe)
        return [ClipRequest(int(i), e, "train") for i in perm[b * self.cfg.M:(b + 1) * self.cfg.M]]

    def __iter__(self):
        perm, perm_epoch = None, None
        for s in range(self.start, self.stop):
            e = s // self.spe
            if e != perm_epoch:
                perm, perm_epoch = torch.randperm(self.n, generator=generator(self.cfg.seed, DATA, e)), e
            yield self.comm.shard(self.global_batch(s, perm))


Amp = Callable[[], AbstractContextManager]


@torch.no_grad()
def encode_keys(model, feed: Feed, ids: torch.Tensor, tag: str, round_: int, cfg: Config,
                amp: Amp, encoders=None) -> tuple[torch.Tensor, torch.Tensor]:
    """h_v(v_n), h_a(a_n) of clips ``ids`` (a multiple of M) on every rank, fp32.

    Encoded in global mini-batches of M with train-mode BN, as keys are; each rank encodes its
    share of every mini-batch, so the BN groups are those of one process with bn_splits groups.
    encoders: (video, audio) encoders other than the key encoders (AVID's bank_init=encode)."""
    c = model.comm
    e_v, e_a = encoders or (model.h_v, model.h_a)
    reqs = [ClipRequest(int(i), round_, tag) for i in ids]
    kv, ka = [], []
    for b in feed([c.shard(reqs[i:i + cfg.M]) for i in range(0, len(reqs), cfg.M)]):
        with amp(), torch.no_grad():
            kv.append(e_v(b["video"].to(feed.device, non_blocking=True)).float())
            ka.append(e_a(b["audio"].to(feed.device, non_blocking=True)).float())
    return c.gather(torch.cat(kv)), c.gather(torch.cat(ka))  # local row j -> global j W + r


def init_banks(model, feed: Feed, cfg: Config, n_train: int, amp: Amp) -> None:
    """AVID with avid.bank_init=encode: every clip's bank entries <- f_v(v_n), f_a(a_n) of the
    initial encoders (instead of random vectors), in mini-batches of M (the last one padded)."""
    n_pad = -n_train % cfg.M
    ids = torch.cat([torch.arange(n_train), torch.arange(n_pad)])
    kv, ka = encode_keys(model, feed, ids, "bank", 0, cfg, amp, encoders=(model.f_v, model.f_a))
    model.bank_v.copy_(kv[:n_train])
    model.bank_a.copy_(ka[:n_train])


class PickEncoder:
    """encode_picks for CrossModalMoCo: keys of this rank's share of the picked pool clips, from
    the current key encoders.

    The clips are rendered exactly as in pool round ``round_`` (same augmentation), so a fresh
    key is the pool key re-computed with today's h -- only the encoder's age differs. The model
    calls :meth:`prefetch` as soon as one modality's picks are known, so that a worker process
    loads them while the main process samples the other modality; without workers (or for ids
    not prefetched) they are loaded in the main process."""

    def __init__(self, model, feed: Feed, round_: int, amp: Amp) -> None:
        self.model, self.feed, self.round, self.amp = model, feed, round_, amp
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


def refresh_pool(model, feed: Feed, cfg: Config, round_: int, amp: Amp) -> None:
    """Alg. 1 l.7-9: draw N distinct clips (the same on every rank) and encode them with h."""
    ids = torch.randperm(len(feed.dataset), generator=generator(cfg.seed, POOL, round_))[:cfg.N]
    kv, ka = encode_keys(model, feed, ids, "pool", round_, cfg, amp)
    model.set_pool(ids.to(feed.device), kv, ka)


def init_queues(model, feed: Feed, cfg: Config, n_train: int, amp: Amp) -> None:
    """Alg. 1 l.3-5: D_v, D_a <- keys of K random clips (the same on every rank)."""
    ids = torch.randperm(n_train, generator=generator(cfg.seed, QUEUE))[:cfg.K]
    kv, ka = encode_keys(model, feed, ids, "queue", 0, cfg, amp)
    model.init_queues(kv, ka, ids.to(feed.device))
