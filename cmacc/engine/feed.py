"""What each rank loads: its share of every global mini-batch, and clips encoded in global batches.

The global plan is a deterministic function of (seed, step): epoch e visits a permutation drawn
from (seed, e), so the clips a step sees do not depend on the number of ranks W, and no sampler
needs ``set_epoch``. Rank r takes positions r, r+W, ... of each global batch (cmacc.system.dist), loads
them in its own DataLoader workers, and the key encoders' outputs are gathered back into global
order.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor

import torch

from ..config import Config
from ..data import ClipRequest
from ..data.real import Finisher, ManifestAV, collate
from ..methods.protocol import Amp, Encoders
from ..system.dist import Comm
from ..system.seeds import DATA, generator


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
        self.num_workers = cfg.data.num_workers if workers is None else workers  # cmacc.system.cores caps it
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


@torch.no_grad()
def encode_clips(encoders: Encoders, feed: Feed, comm: Comm, ids: torch.Tensor, tag: str, round_: int, M: int,
                 amp: Amp) -> tuple[torch.Tensor, torch.Tensor]:
    """encoders = (video, audio) applied to clips ``ids`` (a multiple of M) on every rank, fp32.

    Encoded in global mini-batches of M with train-mode BN, as keys are; each rank encodes its
    share of every mini-batch, so the BN groups are those of one process with bn_splits groups.
    ``tag`` and ``round_`` choose the clips' rendering (ClipRequest: augmentation per purpose)."""
    e_v, e_a = encoders
    reqs = [ClipRequest(int(i), round_, tag) for i in ids]
    kv, ka = [], []
    for b in feed([comm.shard(reqs[i:i + M]) for i in range(0, len(reqs), M)]):
        with amp(), torch.no_grad():
            kv.append(e_v(b["video"].to(feed.device, non_blocking=True)).float())
            ka.append(e_a(b["audio"].to(feed.device, non_blocking=True)).float())
    return comm.gather(torch.cat(kv)), comm.gather(torch.cat(ka))  # local row j -> global j W + r
