"""Pretraining loop: data -> CrossModalMoCo -> Adam -> momentum update; pool, checkpoints, probe.

Every random choice is derived from (seed, purpose, step/epoch) rather than from a running
RNG, so a run resumed from a checkpoint reproduces the uninterrupted run's steps exactly
(on CPU): the data order and augmentations, key-batch shuffles and sampler draws all follow
from the step number. The checkpoint holds what cannot be recomputed: encoders, FC layers,
optimizer, queues and their pointer, the pool's clips and keys, the step.
"""
from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from . import checkpoint, probe, provenance
from .config import Config, ConfigError, dump_yaml
from .data import ClipRequest
from .data.build import Data, build_data
from .data.real import Finisher, ManifestAV, collate
from .moco import CrossModalMoCo, SamplerOptions
from .models import build_encoder
from .sampling import resolve_backend

log = logging.getLogger("cmacc")

# purposes for derived generators
_DATA, _POOL, _QUEUE, _STEP = 1, 2, 3, 4


class NonFiniteLoss(RuntimeError):
    pass


def derived_seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


def generator(seed: int, *keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derived_seed(seed, *keys))
    return g


def lr_schedule(cfg: Config) -> np.ndarray:
    """Per-step learning rates: linear warm-up, then constant or cosine to zero (precomputed)."""
    s = np.arange(cfg.steps, dtype=np.float64)
    lr = np.full(cfg.steps, cfg.lr)
    if cfg.lr_schedule == "cosine":
        span = max(1, cfg.steps - cfg.warmup_steps)
        lr = cfg.lr * 0.5 * (1 + np.cos(np.pi * np.clip(s - cfg.warmup_steps, 0, None) / span))
    if cfg.warmup_steps:
        lr = np.where(s < cfg.warmup_steps, cfg.lr * (s + 1) / cfg.warmup_steps, lr)
    return lr


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'run.device': {name!r} requested but CUDA is not available")
    return dev


def build_encoders(cfg: Config, seed: int | None = None):
    """(f_v, f_a) initialised from ``seed`` (default cfg.seed): the same weights every time."""
    torch.manual_seed(cfg.seed if seed is None else seed)
    kw = dict(d=cfg.model.d, with_fc=cfg.fc != "none", bn_splits=cfg.model.bn_splits, head=cfg.model.head)
    f_v = build_encoder("video", cfg.model.video, **kw)
    f_a = build_encoder("audio", cfg.model.audio, mel_bands=cfg.data.mel_bands, **kw)
    return f_v, f_a


def build_model(cfg: Config, backend: str) -> CrossModalMoCo:
    f_v, f_a = build_encoders(cfg)
    return CrossModalMoCo(
        f_v, f_a, K=cfg.K, M=cfg.M, N=cfg.N, m=cfg.m, tau=cfg.tau, objective=cfg.spec.objective,
        negatives=cfg.spec.negatives, fc=cfg.fc, shuffle_bn=cfg.model.shuffle_bn,
        sampler=SamplerOptions(first=cfg.sampler.first, temperature=cfg.sampler.temperature,
                               backend=backend, exclude_batch=cfg.sampler.exclude_batch))


class Feed:
    """Finished batches from a dataset: workers load clips (collate), the main process finishes
    them (DALI decoding, stacking) and records every clip skipped under the bad-input policy."""

    def __init__(self, dataset, device: torch.device, cfg: Config, skip_log=None) -> None:
        self.dataset, self.device, self.num_workers = dataset, device, cfg.data.num_workers
        self.finish = Finisher(dataset if isinstance(dataset, ManifestAV) else None, device,
                               max_batch=cfg.M, num_threads=cfg.data.dali_threads)
        self.skip_log = skip_log  # callable(list of (path, reason)) or None

    def __call__(self, batches):
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                                             collate_fn=collate, prefetch_factor=4 if self.num_workers else None)
        for b in loader:
            yield self._finish(b)

    def one(self, requests: list[ClipRequest]) -> dict:
        """One batch, loaded in this process (picks to re-encode)."""
        return self._finish(collate([self.dataset[r] for r in requests]))

    def _finish(self, batch: dict) -> dict:
        b = self.finish(batch)
        if b["skipped"] and self.skip_log is not None:
            self.skip_log(b["skipped"])
        return b


class StepBatches(torch.utils.data.Sampler):
    """The clips of steps start..stop-1, lazily: epoch e visits a permutation drawn from (seed, e)."""

    def __init__(self, cfg: Config, n: int, start: int, stop: int) -> None:
        self.cfg, self.n, self.start, self.stop = cfg, n, start, stop
        self.spe = max(1, n // cfg.M)  # steps per epoch

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        cfg, M = self.cfg, self.cfg.M
        perm, perm_epoch = None, None
        for s in range(self.start, self.stop):
            e, b = divmod(s, self.spe)
            if e != perm_epoch:
                perm, perm_epoch = torch.randperm(self.n, generator=generator(cfg.seed, _DATA, e)), e
            yield [ClipRequest(int(i), e, "train") for i in perm[b * M:(b + 1) * M]]


@torch.no_grad()
def encode_keys(model: CrossModalMoCo, feed: Feed, ids: torch.Tensor, tag: str, round_: int, cfg: Config,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """h_v(v_n), h_a(a_n) for clips ``ids``, in mini-batches of M (train-mode BN, as for keys)."""
    reqs = [ClipRequest(int(i), round_, tag) for i in ids]
    kv, ka = [], []
    for b in feed([reqs[i:i + cfg.M] for i in range(0, len(reqs), cfg.M)]):
        kv.append(model.h_v(b["video"].to(device, non_blocking=True)))
        ka.append(model.h_a(b["audio"].to(device, non_blocking=True)))
    return torch.cat(kv), torch.cat(ka)


def pick_encoder(model: CrossModalMoCo, feed: Feed, round_: int, device: torch.device):
    """encode_picks for CrossModalMoCo: keys of picked pool clips from the current key encoders.

    The clips are rendered exactly as in pool round ``round_`` (same augmentation), so a fresh
    key is the pool key re-computed with today's h -- only the encoder's age differs.
    """
    @torch.no_grad()
    def encode(ids_v: torch.Tensor, ids_a: torch.Tensor):
        v = feed.one([ClipRequest(int(i), round_, "pool", "video") for i in ids_v.tolist()])["video"]
        a = feed.one([ClipRequest(int(i), round_, "pool", "audio") for i in ids_a.tolist()])["audio"]
        return model.h_v(v.to(device, non_blocking=True)), model.h_a(a.to(device, non_blocking=True))
    return encode


def refresh_pool(model: CrossModalMoCo, feed: Feed, cfg: Config, round_: int, device: torch.device) -> None:
    """Alg. 1 l.7-9: draw N distinct clips and encode them with the key encoders."""
    ids = torch.randperm(len(feed.dataset), generator=generator(cfg.seed, _POOL, round_))[:cfg.N]
    kv, ka = encode_keys(model, feed, ids, "pool", round_, cfg, device)
    model.set_pool(ids.to(device), kv, ka)


@dataclass
class _Stop:
    requested: str | None = None

    def __call__(self, signum, frame):
        self.requested = signal.Signals(signum).name


@torch.no_grad()
def class_separation(keys: torch.Tensor, labels: torch.Tensor) -> float:
    """Nearest-class-centroid accuracy (%) of unit keys: how class-clustered the sampler's
    candidates are (diagnostic only; uses labels). Active sampling can only cover more classes
    than random draws when this is high."""
    labels = labels.to(keys.device)
    keys, labels = keys[labels >= 0], labels[labels >= 0]
    C = int(labels.max()) + 1
    cen = torch.zeros(C, keys.shape[1], device=keys.device, dtype=keys.dtype).index_add_(0, labels, keys)
    pred = (keys @ torch.nn.functional.normalize(cen, dim=1).T).argmax(1)
    return float(100.0 * (pred == labels).float().mean())


def _count_categories(labels: torch.Tensor, ids: torch.Tensor) -> int | None:
    ids = ids[ids >= 0].cpu()
    lab = labels[ids]
    lab = lab[lab >= 0]
    return int(lab.unique().numel()) if len(lab) else None


def pretrain(cfg: Config, out: str | Path, *, resume: bool = False,
             on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Train per ``cfg``, writing config.yaml, run.json, metrics.jsonl, checkpoints/, summary.json.

    on_step(step, record) is called after each step's metrics line is written (tests use it to
    simulate a crash). Returns the summary dict.
    """
    out = Path(out)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.pt"
    if last.exists() and not resume:
        raise FileExistsError(f"{out} already holds a run ({last}); pass --resume to continue it "
                              f"or choose another --out")
    if resume and not last.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {last}")
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.use_deterministic_algorithms(cfg.run.deterministic, warn_only=True)
    device = resolve_device(cfg.run.device)
    backend = resolve_backend(cfg.sampler.backend, device)
    prov = provenance.collect(device)
    log.info("method=%s device=%s sampler backend=%s", cfg.method, prov["device_name"], backend)

    data = build_data(cfg, device, out)
    train_set, labels = data.train, data.labels
    n_train = len(train_set)
    for key, need, what in (("M", cfg.M, "one mini-batch"), ("N", cfg.N if cfg.uses_pool else 0, "the pool"),
                            ("K", cfg.K if cfg.queue_init == "clips" else 0, "the initial dictionary")):
        if need > n_train:
            raise ConfigError(f"config key '{key}': {what} needs {need} distinct clips but the dataset has {n_train} "
                              f"usable ones ({len(data.info.get('excluded', []))} left out)")
    model = build_model(cfg, backend).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lrs = lr_schedule(cfg)
    steps_per_epoch = max(1, n_train // cfg.M)
    refresh_every = cfg.pool_refresh or steps_per_epoch

    metrics_path, skips_path = out / "metrics.jsonl", out / "skipped.jsonl"
    current = {"step": 0, "where": "setup"}

    def log_skips(items) -> None:  # every clip replaced under the bad-input policy, with its reason
        with open(skips_path, "a") as f:
            for path, reason in items:
                log.warning("skipped %s: %s", path, reason)
                f.write(json.dumps({"step": current["step"], "where": current["where"], "path": path,
                                    "reason": reason}) + "\n")
    feed = Feed(train_set, device, cfg, log_skips)
    start = 0
    if resume:
        state = checkpoint.load(last, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
        for path in (metrics_path, skips_path):  # drop lines a killed run wrote after its last checkpoint
            kept = [ln for ln in path.read_text().splitlines()
                    if ln.strip() and json.loads(ln)["step"] <= start] if path.exists() else []
            checkpoint.write_atomic(path, "".join(ln + "\n" for ln in kept))
        log.info("resumed from %s at step %d", last, start)
    else:
        checkpoint.write_atomic(out / "config.yaml", dump_yaml(cfg))
        metrics_path.write_text("")
        skips_path.write_text("")
        if cfg.queue_init == "clips":  # Alg. 1 l.3-5
            current["where"] = "queue_init"
            ids = torch.randperm(n_train, generator=generator(cfg.seed, _QUEUE))[:cfg.K]
            kv, ka = encode_keys(model, feed, ids, "queue", 0, cfg, device)
            model.init_queues(kv, ka, ids.to(device))
    checkpoint.write_atomic(out / "run.json", json.dumps(
        {"provenance": prov, "sampler_backend": backend, "resumed_from_step": start if resume else None,
         "data": data.info}, indent=2))

    def save(step: int) -> None:
        state = {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                 "config": cfg.to_dict(), "torch_rng": torch.get_rng_state(), "sampler_backend": backend,
                 "git": prov["git"]}
        checkpoint.save(last, state)
        if cfg.run.keep_checkpoints:
            checkpoint.save(ckpt_dir / f"step_{step:08d}.pt", state)
            old = sorted(ckpt_dir.glob("step_*.pt"))[:-cfg.run.keep_checkpoints]
            for p in old:
                p.unlink()

    stop = _Stop()
    handlers = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)} \
        if threading_main() else {}
    model.train()
    bar = tqdm(total=cfg.steps, initial=start, disable=not cfg.run.progress, file=sys.stderr,
               desc=cfg.method, dynamic_ncols=True, mininterval=1.0)
    wall0 = time.perf_counter()
    step = start
    try:
        with open(metrics_path, "a") as mf:
            batches = feed(StepBatches(cfg, n_train, start, cfg.steps))
            for step in range(start, cfg.steps):
                if stop.requested:
                    log.warning("%s received: checkpoint at step %d and stop", stop.requested, step)
                    break
                rec: dict = {"step": step + 1, "epoch": step // steps_per_epoch}
                current.update(step=step + 1, where="pool")
                if model.uses_pool and (step % refresh_every == 0 or step == start and int(model.U_ids[0]) < 0):
                    t0 = time.perf_counter()
                    refresh_pool(model, feed, cfg, step // refresh_every, device)
                    rec["time_pool"] = time.perf_counter() - t0
                    pool_labels = labels[model.U_ids.cpu()]
                    if (pool_labels >= 0).any():
                        rec["pool_class_sep_v"] = class_separation(model.U_v, pool_labels)
                        rec["pool_class_sep_a"] = class_separation(model.U_a, pool_labels)
                current["where"] = "batch"
                t0 = time.perf_counter()
                batch = next(batches)
                rec["skipped"] = len(batch["skipped"])
                v, a = batch["video"].to(device, non_blocking=True), batch["audio"].to(device, non_blocking=True)
                ids = batch["index"].to(device)
                vk = batch["video_k"].to(device) if "video_k" in batch else None
                ak = batch["audio_k"].to(device) if "audio_k" in batch else None
                t1 = time.perf_counter()
                for g in opt.param_groups:
                    g["lr"] = float(lrs[step])
                current["where"] = "picks"
                enc = (pick_encoder(model, feed, step // refresh_every, device)
                       if model.uses_pool and cfg.sampler.fresh_keys else None)
                o = model(v, a, ids, vk, ak, generator=generator(cfg.seed, _STEP, step, device=device), encode_picks=enc)
                opt.zero_grad(set_to_none=True)
                o.loss.backward()
                opt.step()
                model.momentum_update()  # Alg. 1 l.38-39
                losses = torch.stack([o.loss.detach(), o.loss_v, o.loss_a, o.acc_v, o.acc_a]).tolist()
                t2 = time.perf_counter()
                if not all(math.isfinite(x) for x in losses[:3]):
                    raise NonFiniteLoss(f"non-finite loss at step {step + 1}: loss_v={losses[1]} "
                                        f"loss_a={losses[2]} (lr={lrs[step]:.3g}); last checkpoint in {last}")
                cat_v, cat_a = _count_categories(labels, o.enqueued_v), _count_categories(labels, o.enqueued_a)
                both = None if cat_v is None or cat_a is None else (cat_v + cat_a) / 2
                rec.update(loss=losses[0], loss_v=losses[1], loss_a=losses[2], acc_v=losses[3],
                           acc_a=losses[4], lr=float(lrs[step]), time_data=t1 - t0, time_compute=t2 - t1,
                           time_sampler=o.timings.get("sampler", 0.0), time_picks=o.timings.get("encode_picks", 0.0),
                           neg_categories=both, neg_categories_v=cat_v, neg_categories_a=cat_a)
                mf.write(json.dumps(rec) + "\n")
                mf.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{losses[0]:.3f}", data=f"{1e3 * (t1 - t0):.0f}ms",
                                compute=f"{1e3 * (t2 - t1):.0f}ms",
                                **({} if both is None else {"neg_cat": f"{both:.1f}"}))
                if (step + 1) % cfg.run.checkpoint_every == 0 or step + 1 == cfg.steps:
                    save(step + 1)
                if on_step is not None:
                    on_step(step + 1, rec)
            else:
                step = cfg.steps
    finally:
        bar.close()
        for s, h in handlers.items():
            signal.signal(s, h)
    if step < cfg.steps:  # stopped by a signal: save where we are, no summary
        save(step)
        return {"stopped_at": step, "signal": stop.requested}

    train_time = time.perf_counter() - wall0
    return finish(cfg, out, model, data, device, backend, prov, train_time)


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def finish(cfg: Config, out: Path, model: CrossModalMoCo, data: Data, device, backend, prov, train_time) -> dict:
    """Linear probes (pretrained vs random init) and summary.json."""
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    skips = [json.loads(ln) for ln in (out / "skipped.jsonl").read_text().splitlines() if ln.strip()]
    summary: dict = {"method": cfg.method, "steps": cfg.steps, "final_loss": recs[-1]["loss"],
                     "final_loss_mean10": float(np.mean([r["loss"] for r in recs[-10:]]))}
    labelled = [r for r in recs if r["neg_categories"] is not None]
    if labelled:
        C, M = int(data.labels.max()) + 1, cfg.M
        summary["negatives"] = {
            "mean_categories": float(np.mean([r["neg_categories"] for r in labelled])),
            "mean_categories_v": float(np.mean([r["neg_categories_v"] for r in labelled])),
            "mean_categories_a": float(np.mean([r["neg_categories_a"] for r in labelled])),
            "mean_categories_last_quarter": float(np.mean([r["neg_categories"]
                                                           for r in labelled[-max(1, len(labelled) // 4):]])),
            "per_step": M, "num_classes": C,
            "uniform_expectation": C * (1 - (1 - 1 / C) ** M),  # E[#classes] of M uniform draws, balanced classes
        }
    else:
        summary["negatives"] = {"mean_categories": None, "note": "the training clips carry no labels"}
    if not cfg.probe.enabled:
        summary["probe"] = {"skipped": "probe.enabled=false"}
    elif data.probe_train is None or data.probe_test is None:
        summary["probe"] = {"skipped": "no labelled probe_train / probe_test splits in the manifest"}
    else:
        t0 = time.perf_counter()
        res = {}
        pre = probe.linear_probe(model.f_v, model.f_a, data.probe_train, data.probe_test, device,
                                 cfg.probe.C, cfg.seed, cfg.data.num_workers)
        f_v0, f_a0 = build_encoders(cfg)
        rnd = probe.linear_probe(f_v0.to(device), f_a0.to(device), data.probe_train, data.probe_test,
                                 device, cfg.probe.C, cfg.seed, cfg.data.num_workers)
        for mod in ("video", "audio"):
            res[mod] = {"pretrained": pre[mod], "random_init": rnd[mod]}
        n_cls = int(torch.cat([data.probe_train.labels, data.probe_test.labels]).max()) + 1
        res.update(features="pooled backbone of the query encoder", classifier="logistic regression",
                   train_clips=len(data.probe_train), test_clips=len(data.probe_test),
                   chance=100.0 / n_cls, seconds=time.perf_counter() - t0)
        summary["probe"] = res
    summary["data"] = {**{k: v for k, v in data.info.items() if k != "excluded"},
                       "left_out": data.info.get("excluded", []),
                       "skipped_while_training": len(skips),
                       "skip_reasons": dict(Counter(s["reason"].split(":")[0] for s in skips))}
    summary["time"] = {
        "train_seconds": train_time,
        "data_per_step": float(np.mean([r["time_data"] for r in recs])),
        "compute_per_step": float(np.mean([r["time_compute"] for r in recs])),
        "sampler_per_step": float(np.mean([r["time_sampler"] for r in recs])),
    }
    summary["sampler_backend"] = backend
    summary["provenance"] = prov
    summary["config"] = cfg.to_dict()
    checkpoint.write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
