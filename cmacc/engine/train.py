"""Pretraining loop: data -> the method's model -> Adam -> the family's update; checkpoints, probe.

The loop names no method: what differs between families (the model, its start-up state, work
before a step, keyword arguments of its forward, the update after Adam, its chance-level loss,
its SyncBN modules, the clips it needs) is asked of ``cmacc.methods.family(cfg.method)``
(cmacc.methods.protocol.Family).

One process per GPU (or per CPU job) runs :class:`Pretraining`; W processes started by torchrun
or srun form one run through cmacc.system.dist, and a single process is the W = 1 case of the same
code. M, K and N are global: each rank takes M/W clips of every global batch, the query
encoders are wrapped in DistributedDataParallel, and the rest of the method's state (key
encoders, dictionaries, pools, banks) is replicated and updated identically from gathered
tensors. BatchNorm statistics are per group of the global batch (``model.bn_splits``), and
running statistics are averaged over ranks every step, so a run's trajectory and checkpoints do
not depend on W.

Every random choice is derived from (seed, purpose, step/epoch) rather than from a running
RNG (cmacc.system.seeds), so a run resumed from a checkpoint reproduces the uninterrupted run's steps
exactly on CPU with the same W: the data order and augmentations, key-batch shuffles and
sampler draws all follow from the step number. The checkpoint holds what cannot be recomputed:
the model's state dict (encoders, FC layers, and the family's state: queues, pool, banks, ...),
the optimizer (and fp16 loss scaler), the step. Global rank 0 alone writes the run folder.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import methods
from ..config import RECOVERY, Config, ConfigError, changed_keys, dump_yaml
from ..data import fingerprint
from ..data.build import build_data
from ..methods.protocol import Context
from ..sampling import NonFiniteInput, resolve_backend
from ..system import checkpoint, cores, dist, provenance
from ..system.allocator import keep_freed_memory
from ..system.dist import Comm
from ..system.seeds import STEP, generator
from . import run_folder
from .assembly import build_encoders, build_model, lr_schedule
from .bn import bn_layout, bn_statistics, sync_batchnorm
from .diagnostics import count_categories, false_negative_rate, ids_digest, replicated_state
from .feed import Feed, StepBatches, encode_clips
from .health import CollapseWatch, all_finite, non_finite_names
from .precision import autocast, grad_scaler
from .summary import finish

log = logging.getLogger("cmacc")

# BN running statistics are averaged over ranks after each step (Pretraining.step), not copied
# from rank 0 before each forward; the keyword changed name in recent PyTorch.
NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                  if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                  else {"broadcast_buffers": False})


class Diverged(RuntimeError):
    """A step produced NaN or Inf (loss, parameters or the sampler's inputs); nothing of it was saved."""


NonFiniteLoss = Diverged  # the name before parameters were checked too


@dataclass
class _Stop:
    requested: str | None = None

    def __call__(self, signum, frame):
        self.requested = signal.Signals(signum).name


class Pretraining:
    """One rank's share of a pretraining run: build, start or resume, step, checkpoint, finish."""

    def __init__(self, cfg: Config, out: Path, comm: Comm, resume: bool) -> None:
        self.cfg, self.out, self.comm, self.resume = cfg, out, comm, resume
        self.ckpt_dir = out / "checkpoints"
        self.last = self.ckpt_dir / "last.pt"
        self.metrics_path, self.skips_path = out / "metrics.jsonl", out / "skipped.jsonl"
        self.state, self.resumed_from, self.fallback, self.complete = None, None, None, False
        comm.agree(self._preflight())
        self.budget = cores.plan(cfg.run.threads, cfg.data.num_workers, comm.launch.local_world)
        cores.apply(self.budget, comm.launch.local_world)
        self.allocator = keep_freed_memory(cfg.run.keep_freed_memory)
        torch.use_deterministic_algorithms(cfg.run.deterministic, warn_only=True)
        self.device = comm.device
        self.backend = resolve_backend(cfg.sampler.backend, self.device)
        self.bn_per_rank, self.sync_groups = bn_layout(cfg, comm.world, self.device.type == "cuda")
        self.amp = autocast(cfg, self.device)
        if cfg.run.precision == "bf16" and self.device.type == "cpu":
            log.warning("run.precision=bf16 on CPU: 3-D convolutions stay fp32 (oneDNN's bf16 conv3d gives "
                        "wrong weight gradients here; cmacc.models.resnet3d.Conv3d)")
        self.where, self.pending_skips = {"step": 0, "where": "setup"}, []
        self.prov = provenance.collect(self.device)
        log.info("method=%s device=%s sampler backend=%s world size %d", cfg.method, self.prov["device_name"],
                 self.backend, comm.world)
        self.family = methods.family(cfg.method)
        self._build_data()
        self.data_change = self._check_data() if resume else None
        self.model = build_model(cfg, self.backend, comm, self.bn_per_rank, self.n_train).to(self.device)
        if self.sync_groups:
            sync_batchnorm(self.family.sync_bn_modules(self.model), comm, self.sync_groups)
        self.bn_stats = bn_statistics(self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scaler = grad_scaler(self.device, enabled=cfg.run.precision == "fp16")
        self.lrs = lr_schedule(cfg)
        self.spe = max(1, self.n_train // cfg.M)  # steps per epoch
        self.feed = Feed(self.data.train, self.device, cfg, self._skipped, workers=self.budget.workers)
        self.ctx = self._context()
        self.collapse = CollapseWatch(lambda: self.family.chance_loss(cfg, self.model), warmup=cfg.warmup_steps)
        self.saved_step = None  # the newest checkpoint on disk: the last good state

    def _context(self) -> Context:
        """What the method's family may use: settings, the feed, and the engine's services."""
        cfg, c = self.cfg, self.comm

        def mark(where: str) -> None:
            self.where["where"] = where

        return Context(cfg=cfg, comm=c, n_train=self.n_train, steps_per_epoch=self.spe, amp=self.amp, feed=self.feed,
                       labels=self.labels, is_main=c.is_main, mark=mark,
                       encode=lambda encoders, ids, tag, round_: encode_clips(encoders, self.feed, c, ids, tag, round_,
                                                                              cfg.M, self.amp),
                       generator=lambda *keys: generator(cfg.seed, *keys),
                       average_bn=lambda: c.average_(self.bn_stats))

    def _preflight(self) -> Exception | None:
        if self.last.exists() and not self.resume:
            return FileExistsError(f"{self.out} already holds a run ({self.last}); pass --resume to continue it "
                                   f"or choose another --out")
        if not self.resume:
            return None
        try:  # last.pt, or the newest intact step_*.pt when last.pt is damaged
            self.resumed_from, self.state, self.fallback = checkpoint.newest_intact(self.ckpt_dir)
        except checkpoint.CheckpointError as e:
            return e
        at = int(self.state["step"])
        summary = self.out / "summary.json"
        self.complete = at == self.cfg.steps and summary.exists()
        if summary.exists() and at < self.cfg.steps and self.comm.is_main:  # going on: keep the old one aside
            try:
                done = int(json.loads(summary.read_text())["steps"])
            except (OSError, ValueError, KeyError, TypeError):
                done = at
            summary.replace(self.out / f"summary_step_{done:08d}.json")
        if self.cfg.steps < at:
            return ConfigError(f"config key 'steps': {self.cfg.steps} is below step {at} of {self.resumed_from}; "
                               f"a resumed run goes on from its checkpoint (steps >= {at}) -- start a new --out "
                               f"for a shorter run")
        return None

    def _build_data(self) -> None:
        """Datasets on every rank; a manifest without a scan report is scanned by rank 0 alone."""
        cfg, c = self.cfg, self.comm
        if c.is_main:
            self.out.mkdir(parents=True, exist_ok=True)  # scan.json may be written first
        shared_scan = cfg.data.name == "manifest" and not cfg.data.scan and c.distributed
        views = self.family.key_views(cfg)
        if c.is_main or not shared_scan:
            self.data = build_data(cfg, self.device, self.out if c.is_main else None, views=views)
        if shared_scan:  # rank 0 scanned; the other ranks take its records
            scan = c.broadcast_object(self.data.scan if c.is_main else None)
            if not c.is_main:
                self.data = build_data(cfg, self.device, None, scan=scan, views=views)
        self.labels, self.n_train = self.data.labels, len(self.data.train)
        self.data_fp, self.data_rows = fingerprint.of_run_data(cfg, self.data)
        for key, need, what in self.family.data_needs(cfg):
            if need > self.n_train:
                raise ConfigError(f"config key '{key}': {what} needs {need} distinct clips but the dataset has "
                                  f"{self.n_train} usable ones ({len(self.data.info.get('excluded', []))} left out)")

    def _check_data(self) -> str | None:
        """--resume: the checkpoint's data, or what changed under run.allow_data_change (logged, in run.json)."""
        change = fingerprint.check_resume(self.state.get("data_fingerprint"), self.data_fp, self.out, self.data_rows,
                                          allow=self.cfg.run.allow_data_change, checkpoint=str(self.resumed_from),
                                          step=int(self.state["step"]))
        if change:
            log.warning("resuming on changed data (run.allow_data_change=true): %s", change)
        return change

    def _skipped(self, items) -> None:  # every clip replaced under the bad-input policy, with its reason
        for path, reason in items:
            log.warning("skipped %s: %s", path, reason)
            self.pending_skips.append({**self.where, "rank": self.comm.rank, "path": path, "reason": reason})

    def _flush_skips(self, total: int | None = None) -> None:
        """Rank 0 records every rank's skips (gathered only when some rank has any)."""
        if total is None:
            total = sum(self.comm.gather_objects(len(self.pending_skips)))
        if total:
            lines = [json.dumps(s) + "\n" for part in self.comm.gather_objects(self.pending_skips) for s in part]
            if self.comm.is_main:
                with open(self.skips_path, "a") as f:
                    f.writelines(lines)
        self.pending_skips = []

    def _info(self) -> dict:
        c = self.comm
        return {"provenance": self.prov, "sampler_backend": self.backend, "precision": self.cfg.run.precision,
                "cpu": {**self.budget.to_dict(), "allocator": self.allocator},
                "distributed": {**c.describe(), "batch_per_rank": self.cfg.M // c.world,
                                "bn_groups": self.bn_per_rank * c.world, "bn_groups_per_rank": self.bn_per_rank,
                                "sync_bn": self.sync_groups is not None}}

    # ---- start, resume, save ----
    def start(self) -> int:
        """Fresh run (the family's start-up state) or resume; then rank 0's state is everyone's, and DDP."""
        cfg, c, start = self.cfg, self.comm, 0
        if self.resume:
            start = self._load()
        else:
            if c.is_main:
                self.ckpt_dir.mkdir(parents=True, exist_ok=True)
                self.metrics_path.write_text("")
                self.skips_path.write_text("")
            if cfg.init_from:  # the encoders, and the family's state it asks for (e.g. a source run's banks)
                taken = checkpoint.load_matching(self.model, cfg.init_from, self.family.init_from_buffers(cfg),
                                                 "init_from")
                log.info("init_from %s: %d tensors", cfg.init_from, len(taken))
            self.family.start(self.model, self.ctx)  # e.g. Alg. 1 l.3-5: the dictionaries from K clips
        c.broadcast_(list(self.model.state_dict().values()))  # initial weights and queues from rank 0
        if c.distributed:  # what gets gradients: the query encoders (and their FC layers)
            cuda = self.device.type == "cuda"
            self.model.wrap_queries(lambda q: DistributedDataParallel(
                q, device_ids=[self.device] if cuda else None, **NO_BUFFER_SYNC))
        self._flush_skips()
        if c.is_main:
            checkpoint.write_atomic(self.out / "config.yaml", dump_yaml(cfg))  # a resume's changes included
            if self.data_rows is not None:
                fingerprint.write_rows(self.out, self.data_rows)
            checkpoint.write_atomic(self.out / "run.json", json.dumps(
                {**self._info(), "resumed_from_step": start if self.resume else None,
                 "resumes": self._resumes(start), "data": self.data.info, "data_fingerprint": self.data_fp},
                indent=2))
        if not self.resume:
            self.save(0)  # the state before any update: a run that diverges early can still be resumed
        self.start_step = self.ctx.start_step = start
        return start

    def _resumes(self, start: int) -> list[dict]:
        """run.json's history of resumes: earlier ones (from the previous run.json) and this one."""
        if not self.resume:
            return []
        try:
            history = json.loads((self.out / "run.json").read_text()).get("resumes") or []
        except (OSError, ValueError, AttributeError):
            history = []
        changed = changed_keys(self.saved_config, self.cfg.to_dict())
        return history + [{"step": start, "checkpoint": str(self.resumed_from), "fallback_reason": self.fallback,
                           "world_size": self.comm.world, "changed": {k: list(v) for k, v in changed.items()},
                           "data_changed": self.data_change}]

    def _load(self) -> int:
        state, start = self.state, int(self.state["step"])
        if self.fallback:
            log.warning("%s; resuming from %s (step %d) instead", self.fallback, self.resumed_from, start)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.saved_config = state["config"]
        for key, (was, now) in changed_keys(self.saved_config, self.cfg.to_dict()).items():
            if key in RECOVERY:
                log.warning("resuming with %s=%r (was %r): the run changes its optimisation at step %d "
                            "(recorded in run.json)", key, now, was, start)
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.comm.world:
            log.warning("resuming a run saved by %d rank(s) on %d%s", saved_world, self.comm.world,
                        "; model.bn_splits=0 means one BN group per rank, so the BN groups change"
                        if not self.cfg.model.bn_splits else "")
        if self.comm.is_main:  # drop lines a killed run wrote after its last checkpoint (or tore)
            run_folder.truncate_logs([self.metrics_path, self.skips_path], start)
        self.state, self.saved_step = None, (start, self.resumed_from)
        log.info("resumed from %s at step %d", self.resumed_from, start)
        return start

    def save(self, step: int) -> None:
        """Rank 0 writes last.pt (and step_*.pt) atomically; then every rank waits for it."""
        cfg = self.cfg
        if self.comm.is_main:
            state = {"step": step, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                     "scaler": self.scaler.state_dict(), "config": cfg.to_dict(), "torch_rng": torch.get_rng_state(),
                     "sampler_backend": self.backend, "git": self.prov["git"], "world_size": self.comm.world,
                     "data_fingerprint": self.data_fp}
            checkpoint.save(self.last, state)
            if cfg.run.keep_checkpoints:
                checkpoint.save(self.ckpt_dir / f"step_{step:08d}.pt", state)
                for p in sorted(self.ckpt_dir.glob("step_*.pt"))[:-cfg.run.keep_checkpoints]:
                    p.unlink()
        self.comm.barrier()
        self.saved_step = (step, self.last)

    # ---- one step ----
    def step(self, s: int, stop: _Stop) -> tuple[dict, str | None]:
        """Step s (0-based) on this rank; returns its metrics record and the agreed stop signal."""
        cfg, model, c = self.cfg, self.model, self.comm
        rec: dict = {"step": s + 1, "epoch": s // self.spe}
        t_start = time.perf_counter()
        self.where = {"step": s + 1, "where": "before_step"}
        rec.update(self.family.before_step(model, self.ctx, s))  # e.g. a pool refresh (Alg. 1 l.7-9)
        self.where["where"] = "batch"
        t0 = time.perf_counter()
        b = next(self.batches)
        v, a, ids = (b[k].to(self.device, non_blocking=True) for k in ("video", "audio", "index"))
        views = {k: b[k].to(self.device) for k in ("video_k", "audio_k") if k in b}  # a second augmentation
        t1 = time.perf_counter()
        for g in self.opt.param_groups:
            g["lr"] = float(self.lrs[s])
        self.where["where"] = "step"
        kwargs = self.family.step_kwargs(model, self.ctx, s)
        try:
            with self.amp():
                o = model(v, a, ids, **views, generator=generator(cfg.seed, STEP, s, device=self.device), **kwargs)
        except NonFiniteInput:  # the same gathered inputs on every rank: all ranks stop here
            raise self._diverged(s, "the sampler's inputs (pool keys or queries) hold NaN or Inf") from None
        losses, table, n = self._gather(o, stop)
        self._update(s, o.loss)
        t2 = time.perf_counter()
        skipped = int(table[:, n].sum())
        self._flush_skips(skipped)
        rec.update(self._record(s, o, losses, t1 - t0, t2 - t1, skipped))
        if cfg.run.check_sync_every and (s + 1) % cfg.run.check_sync_every == 0:
            rec["state_digest"] = c.assert_same(replicated_state(model, o.written_v, o.written_a,
                                                                 self.family.replicated(model)))
        rec["time_comm"] = c.take_seconds()
        rec["time_step"] = time.perf_counter() - t_start
        signal_name = "SIGTERM" if table[:, n + 1].any() else "SIGINT" if table[:, n + 2].any() else None
        return rec, signal_name

    def _gather(self, o, stop: _Stop):
        """One gather per step, before the update: every rank's losses, spreads, skips and stop
        requests. Returns (the means over ranks, the table, the column where the flags start);
        raises Diverged on a non-finite loss on any rank."""
        c, s = self.comm, self.where["step"] - 1
        nan = o.loss.new_tensor(math.nan)  # a family without a FIFO dictionary has no age gap
        mine = torch.stack([o.loss.detach(), o.loss_v, o.loss_a, o.acc_v, o.acc_a, o.spread_v, o.spread_a,
                            nan if o.age_gap_v is None else o.age_gap_v, nan if o.age_gap_a is None else o.age_gap_a])
        n = len(mine)  # then the flags: skips, SIGTERM, SIGINT
        table = c.gather_values(mine.float().tolist() + [len(self.pending_skips), stop.requested == "SIGTERM",
                                                         stop.requested == "SIGINT"])
        losses = table[:, :n].mean(0).tolist()  # equal shares: the mean over ranks is the global mean
        if not all(math.isfinite(x) for x in losses[:3]):
            bad = [r for r in range(c.world) if not all(math.isfinite(x) for x in table[r, :3].tolist())]
            raise self._diverged(s, f"non-finite loss on rank(s) {bad}: loss_v={losses[1]} loss_a={losses[2]}")
        return losses, table, n

    def _update(self, s: int, loss: torch.Tensor) -> None:
        """Backward, Adam, momentum update, BN statistics; committed only if everything is finite."""
        model = self.model
        self.opt.zero_grad(set_to_none=True)
        with self.comm.guard("the gradient all-reduce"):
            self.scaler.scale(loss).backward()  # DDP all-reduces (averages) the gradients
        self.scaler.step(self.opt)
        self.scaler.update()
        self.family.after_update(model)  # e.g. the key encoders' momentum update (Alg. 1 l.38-39)
        self.comm.average_(self.bn_stats)
        # Parameters and BN statistics are replicated, so every rank reaches the same verdict.
        if not all_finite([p for p in model.parameters()] + self.bn_stats):
            names = non_finite_names(list(model.named_parameters()) + list(model.named_buffers()))
            raise self._diverged(s, f"the update made {len(names)} tensor(s) non-finite "
                                    f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")

    def _diverged(self, s: int, what: str) -> Diverged:
        at, path = self.saved_step
        return Diverged(f"step {s + 1}: {what} at lr={self.lrs[s]:.3g}; nothing after step {at} was saved. "
                        f"The last good checkpoint is {path} (step {at}); to recover, resume with gentler "
                        f"settings, e.g. `cmacc pretrain --out {self.out} --resume --set lr={self.cfg.lr / 10:g}` "
                        f"({', '.join(RECOVERY)} may change on --resume)")

    def _record(self, s: int, o, losses: list[float], t_data: float, t_compute: float, skipped: int) -> dict:
        cat_v, cat_a = count_categories(self.labels, o.written_v), count_categories(self.labels, o.written_a)
        fn = [false_negative_rate(self.labels, o.batch_ids, D) for D in (o.negatives_v, o.negatives_a)]
        both = None if cat_v is None or cat_a is None else (cat_v + cat_a) / 2
        warning = self.collapse.update(s + 1, (losses[1], losses[2]), (losses[5], losses[6]))
        if warning and self.comm.is_main:
            log.warning(warning)
        return dict(loss=losses[0], loss_v=losses[1], loss_a=losses[2], acc_v=losses[3], acc_a=losses[4],
                    spread_v=losses[5], spread_a=losses[6], collapsed=self.collapse.collapsed,
                    age_gap_v=None if math.isnan(losses[7]) else losses[7],
                    age_gap_a=None if math.isnan(losses[8]) else losses[8],
                    lr=float(self.lrs[s]), skipped=skipped, time_data=t_data, time_compute=t_compute,
                    time_sampler=o.timings.get("sampler", 0.0), time_picks=o.timings.get("encode_picks", 0.0),
                    pruned_v=o.timings.get("pruned_v"), pruned_a=o.timings.get("pruned_a"),
                    neg_categories=both, neg_categories_v=cat_v, neg_categories_a=cat_a,
                    false_neg=None if None in fn else (fn[0] + fn[1]) / 2,
                    picks_digest=ids_digest(o.written_v, o.written_a))

    # ---- the loop ----
    def train(self, start: int, on_step: Callable[[int, dict], None] | None) -> tuple[int, str | None]:
        """Steps start..steps-1; returns (last completed step, the signal that stopped it or None)."""
        cfg, c = self.cfg, self.comm
        stop = _Stop()
        handlers = {sg: signal.signal(sg, stop) for sg in (signal.SIGINT, signal.SIGTERM)} \
            if threading.current_thread() is threading.main_thread() else {}
        bar = tqdm(total=cfg.steps, initial=start, disable=not (cfg.run.progress and c.is_main), file=sys.stderr,
                   desc=cfg.method, dynamic_ncols=True, mininterval=1.0)
        self.batches = iter(self.feed(StepBatches(cfg, self.n_train, start, cfg.steps, c)))
        c.take_seconds()
        step, signal_name = start, None
        try:
            with open(self.metrics_path, "a") if c.is_main else contextlib.nullcontext() as mf:
                for s in range(start, cfg.steps):
                    rec, signal_name = self.step(s, stop)
                    step = s + 1
                    if c.is_main:
                        mf.write(json.dumps(rec) + "\n")
                        mf.flush()
                        bar.update(1)
                        bar.set_postfix(loss=f"{rec['loss']:.3f}", data=f"{1e3 * rec['time_data']:.0f}ms",
                                        compute=f"{1e3 * rec['time_compute']:.0f}ms",
                                        **({"COLLAPSED": "see log"} if rec["collapsed"] else {}))
                    if step % cfg.run.checkpoint_every == 0 or step == cfg.steps or signal_name:
                        self.save(step)
                    c.heartbeat(step)
                    if on_step is not None:
                        on_step(step, rec)
                    if signal_name and step < cfg.steps:
                        log.warning("%s received: checkpointed step %d on every rank; stopping", signal_name, step)
                        break
        finally:
            bar.close()
            self.feed.close()
            for sg, h in handlers.items():
                signal.signal(sg, h)
        return step, signal_name if step < cfg.steps else None

    def finish(self, train_time: float, steps_run: int) -> dict:
        return finish(self.cfg, self.out, self.model, self.data, self.device,
                      lambda: build_encoders(self.cfg), self._info(), train_time, steps_run)


def pretrain(cfg: Config, out: str | Path, *, resume: bool = False,
             on_step: Callable[[int, dict], None] | None = None, comm: Comm | None = None) -> dict:
    """Train per ``cfg``, writing config.yaml, run.json, metrics.jsonl, checkpoints/, summary.json.

    comm: the process group (cmacc.system.dist.init); default: join the one the environment describes
    (torchrun / srun), or run alone. on_step(step, record) is called after each step's metrics
    line is written (tests use it to simulate a crash). Returns the summary dict on rank 0,
    {"stopped_at", "signal"} when a signal stopped the run, {"rank", "steps"} on other ranks.
    """
    own, out, run = comm is None, Path(out), None
    comm = dist.init(cfg.run.device, cfg.run.dist_timeout) if own else comm
    ours = comm.is_main and not resume and not out.exists()  # a failed start removes the folder it made
    started = False
    try:
        with run_folder.terminate_raises():  # a SIGTERM while starting still removes the half-made folder
            run = Pretraining(cfg, out, comm, resume)
            if run.complete:
                log.info("%s already finished its %d steps (summary.json); raise steps to continue", out, cfg.steps)
                return {**json.loads((out / "summary.json").read_text()), "already_complete": True} \
                    if comm.is_main else {"rank": comm.rank, "steps": cfg.steps}
            start = run.start()
        started = True
        t0 = time.perf_counter()
        step, signal_name = run.train(start, on_step)
        if signal_name:
            return {"stopped_at": step, "signal": signal_name}
        if not comm.is_main:
            return {"rank": comm.rank, "steps": step}
        return run.finish(time.perf_counter() - t0, step - start)
    except BaseException as e:
        comm.report_exit(f"{type(e).__name__}: {e}")
        if ours and not started:
            run_folder.remove_failed_start(out)
        # Let the model (and DDP's hold on the process group) go before comm.close(): kept alive by
        # the traceback's frames until interpreter exit, Gloo's threads would free their last work
        # while Python finalizes and abort the process (SIGABRT instead of a clean exit 1).
        run = None  # noqa: F841
        traceback.clear_frames(e.__traceback__)
        raise
    finally:
        if own:
            comm.close()
