"""Timed pretraining steps at a given size, the data's share separated: what one GPU does per step
of a paper-size CM-ACC run (``benchmarks/gpu_check.sh`` runs it at M=128, K=3,840, N=38,400, a
3-D ResNet-18 on 16 x 224^2 clips and a 1-D ResNet-18 on 80 x 64 mel).

The engine's own loop runs the steps (``Pretraining``: the same feed, model, sampler, update and
metrics as ``cmacc pretrain``); only the start-up work that a short run cannot afford is left out
and measured apart:

* the dictionaries start as random unit keys (``queue_init=random``) instead of K encoded clips;
* the candidate pool U is filled with random unit keys over N distinct clip ids instead of its
  first refresh (N clips rendered and encoded: minutes at the paper's size, most of it the built-in
  data's rendering on the CPU); steps then run from step 1 with no refresh due
  (``pool_refresh`` past the run). The picks are still rendered and re-encoded every step
  (``sampler.fresh_keys``), so a step's work is a full step's. Random keys have no cluster
  structure, the worst case for the sampler's exact pruning;
* the refresh is timed separately: ``refresh_clips`` clips through ``encode_clips`` (the refresh's
  own path), giving clips/s and N / (clips/s), the refresh's cost, once per epoch.

Per step (from metrics.jsonl): the wait for the batch (``time_data``; the workers render ahead),
the rest of the step (``time_compute``: forward, sampler, picks, backward, update), the sampler and
the picks' share of it, and the whole step. ``torch.cuda.max_memory_allocated`` over the timed
steps on CUDA.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

TIMED_KEYS = ("time_step", "time_data", "time_compute", "time_sampler", "time_picks")


@dataclass(frozen=True)
class StepPlan:
    """Sizes of a timed-steps run (the paper's by default)."""
    M: int = 128
    K: int = 3840
    N: int = 38400
    video: str = "r18"
    audio: str = "r18"
    frames: int = 16
    size: int = 224
    audio_frames: int = 64
    train_size: int = 240000
    warmup: int = 2  # steps run, not timed (cuDNN autotuning, Triton compiles, workers filling)
    steps: int = 20  # timed steps
    refresh_clips: int = 512  # clips encoded to time the pool refresh
    workers: int = 8

    @classmethod
    def tiny(cls, **kw) -> "StepPlan":
        """CPU-sized, every part the same (tests run this)."""
        base = dict(M=8, K=32, N=64, video="tiny", audio="tiny", frames=4, size=32, audio_frames=16,
                    train_size=256, warmup=1, steps=2, refresh_clips=16, workers=0)
        return cls(**{**base, **kw})

    def overrides(self, method: str, precision: str, device: str) -> list[str]:
        return [
            "preset=paper", f"method={method}", f"M={self.M}", f"K={self.K}", f"N={self.N}",
            f"model.video={self.video}", f"model.audio={self.audio}", f"data.frames={self.frames}",
            f"data.size={self.size}", f"data.audio_frames={self.audio_frames}", "data.name=synthetic",
            f"data.train_size={self.train_size}", f"data.num_workers={self.workers}",
            f"steps={1 + self.warmup + self.steps}", "queue_init=random", f"pool_refresh={10 ** 9}",
            f"run.precision={precision}", f"run.device={device}", "run.progress=false",
            f"run.checkpoint_every={10 ** 9}", "run.keep_checkpoints=0", "probe.enabled=false",
        ]


def _fill_pool(run, plan: StepPlan, seed: int = 0) -> None:
    """U <- N distinct clip ids with random unit keys (in place of the first refresh)."""
    model, dev = run.model, run.device
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(run.n_train, generator=g)[:plan.N]
    d = model.U_v.shape[1]
    kv, ka = (F.normalize(torch.randn(plan.N, d, generator=g), dim=1) for _ in range(2))
    model.set_pool(ids.to(dev), kv.to(dev), ka.to(dev))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _time_refresh(run, plan: StepPlan) -> dict:
    """The pool refresh's path (encode_clips with h_v, h_a) over refresh_clips clips, twice: the
    first pass warms up, the second is timed."""
    n = max(plan.M, plan.refresh_clips // plan.M * plan.M)
    ids = torch.arange(n)
    times = []
    for round_ in (0, 1):
        _sync(run.device)
        t0 = time.perf_counter()
        run.ctx.encode((run.model.h_v, run.model.h_a), ids, "pool", round_)
        _sync(run.device)
        times.append(time.perf_counter() - t0)
    rate = n / times[1]
    return {"clips": n, "seconds": times[1], "clips_per_s": rate, "warmup_s": times[0],
            "estimated_refresh_s": plan.N / rate, "refreshes_per_epoch": 1,
            "amortised_s_per_step": plan.N / rate / max(1, run.spe)}


def _summarise(recs: list[dict]) -> dict:
    out = {}
    for key in TIMED_KEYS:
        vals = [float(r.get(key) or 0.0) for r in recs]
        out[key] = {"mean": statistics.fmean(vals), "median": statistics.median(vals), "min": min(vals),
                    "max": max(vals)}
    out["data_fraction"] = out["time_data"]["mean"] / out["time_step"]["mean"] if out["time_step"]["mean"] else None
    return out


def timed_steps(plan: StepPlan, out: Path, *, precision: str = "fp32", device: str = "cuda",
                method: str = "cmacc", extra: list[str] | tuple[str, ...] = ()) -> dict:
    """Run 1 + warmup + steps steps of ``method`` at ``plan``'s size in run folder ``out``; return the
    timings of the last ``steps`` steps, the refresh's, peak memory and the run's provenance."""
    from ..config import load_config
    from ..engine.train import Pretraining
    from ..system import dist

    cfg = load_config(overrides=[*plan.overrides(method, precision, device), *extra])
    comm = dist.init(cfg.run.device, cfg.run.dist_timeout)
    t_setup = time.perf_counter()
    try:
        run = Pretraining(cfg, Path(out), comm, resume=False)
        start = run.start()  # random dictionaries: queue_init=random
        if run.model.uses_pool:
            _fill_pool(run, plan)
        setup_s = time.perf_counter() - t_setup
        dev = run.device
        if dev.type == "cuda":
            _sync(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        step, signal_name = run.train(start + 1, None)  # step 1 on: no refresh is due
        _sync(dev)
        train_s = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
        refresh = _time_refresh(run, plan) if run.model.uses_pool else None
        info = run._info()
    finally:
        comm.close()
    recs = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = recs[plan.warmup:]
    if signal_name or len(timed) != plan.steps:
        raise RuntimeError(f"expected {plan.steps} timed steps after {plan.warmup} warm-up, the run wrote "
                           f"{len(recs)} (stopped by {signal_name})")
    return {"method": method, "precision": precision, "plan": asdict(plan), "setup_s": setup_s,
            "train_s": train_s, "steps": _summarise(timed), "per_step": [{k: r.get(k) for k in TIMED_KEYS}
                                                                           for r in timed],
            "losses": [r["loss"] for r in recs], "max_memory_allocated": peak,
            "max_memory_allocated_gib": None if peak is None else peak / 2 ** 30, "refresh": refresh,
            "sampler_backend": info["sampler_backend"], "provenance": info["provenance"],
            "cpu": info["cpu"]}
