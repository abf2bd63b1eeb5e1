"""Collective plumbing for pretraining on several processes (torch.distributed), in one place.

Launchers: ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), SLURM's ``srun`` with
one task per GPU (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR defaults to the first
host of SLURM_JOB_NODELIST and MASTER_PORT to one derived from SLURM_JOB_ID), or none: world
size 1, no process group, and every collective below is the identity -- the single-process run
*is* the world-size-1 case of the same code. ``CMACC_INIT_METHOD`` (e.g. ``file:///shared/x``)
replaces the env:// rendezvous (tests use a file store).

Batch layout. Global mini-batch position p lives on rank ``p % W`` at local position ``p // W``
(rank r holds positions r, r+W, r+2W, ...). Split-BN group j of a single process holds positions
j, j+s, j+2s, ... (cmacc.models.norm), so with s groups over W ranks (s a multiple of W) every
rank's BN groups are exactly single-process groups, and W ranks reproduce one process with
``bn_splits=s``. :meth:`Comm.gather` returns rows in global order, :meth:`Comm.shard` is the
local share of a global tensor, :meth:`Comm.permute` is MoCo's batch shuffle
(``_batch_shuffle_ddp``) done with one all-to-all instead of gathering every input everywhere.

All collectives run without gradient ("all_gather has no gradient", MoCo), on contiguous
tensors (Gloo can return wrong results on non-contiguous ones), under the process group's
timeout, and add their wall time to ``Comm.seconds`` (``time_comm`` in metrics.jsonl). A failing
collective raises :class:`CommError` naming the ranks that stopped or stopped reporting.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import hashlib
import inspect
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..errors import InputError

log = logging.getLogger("cmacc")

INIT_METHOD_ENV = "CMACC_INIT_METHOD"
_BACKEND_WORDS = ("gloo", "Gloo", "NCCL", "nccl", "Connection", "ProcessGroup", "timed out", "Timeout")


class CommError(RuntimeError):
    """A collective failed: a rank died, hung past the timeout, or the ranks disagree."""


class LaunchError(InputError, RuntimeError):
    """The launch environment is inconsistent (e.g. RANK without WORLD_SIZE); names the variable."""


@dataclass(frozen=True)
class Launch:
    """Who this process is, as the launcher says."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    source: str = "single"  # single | torchrun | slurm
    master: str | None = None  # MASTER_ADDR:MASTER_PORT (env:// rendezvous)


def _int(env, name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise LaunchError(f"environment variable {name}={env[name]!r} is not an integer") from None


def first_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[03-05,07],cpu1' -> 'gpu03'."""
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise LaunchError(f"cannot read a host from SLURM_JOB_NODELIST={nodelist!r}")
    prefix, ranges = m.group(1), m.group(3)
    return prefix if ranges is None else prefix + ranges.split(",")[0].split("-")[0]


def detect_launch(env: dict | None = None) -> Launch:
    """torchrun's variables, else SLURM's, else a single process. Fills MASTER_ADDR/PORT for SLURM."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env or "RANK" in env:
        for name in ("RANK", "WORLD_SIZE"):
            if name not in env:
                raise LaunchError(f"environment variable {name} is missing (RANK and WORLD_SIZE come together)")
        rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
        local_world = _int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else world
        source = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "env"
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
        local = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        local_world = int(env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0]) if world > 1 else 1
        source = "slurm"
        if world > 1:
            if "MASTER_ADDR" not in env:
                if "SLURM_JOB_NODELIST" not in env:
                    raise LaunchError("SLURM launch: set MASTER_ADDR (SLURM_JOB_NODELIST is absent)")
                env["MASTER_ADDR"] = first_host(env["SLURM_JOB_NODELIST"])
            if "MASTER_PORT" not in env:
                env["MASTER_PORT"] = str(15000 + _int(env, "SLURM_JOB_ID") % 20000 if "SLURM_JOB_ID" in env else 29500)
            env.setdefault("RANK", str(rank))
            env.setdefault("WORLD_SIZE", str(world))
            env.setdefault("LOCAL_RANK", str(local))
    else:
        return Launch()
    if not (0 <= rank < world):
        raise LaunchError(f"rank {rank} is outside world size {world}")
    if not (0 <= local < max(local_world, 1)) and source != "slurm":
        raise LaunchError(f"LOCAL_RANK={local} is outside LOCAL_WORLD_SIZE={local_world}")
    master = f"{env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')}" if "MASTER_ADDR" in env else None
    return Launch(rank, world, local, local_world, source, master)


@dataclass
class Comm:
    """rank, world and the collectives pretraining needs; with world == 1 each is the identity."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # None: no process group (world size 1)
    launch: Launch = field(default_factory=Launch)
    hosts: list[str] = field(default_factory=lambda: [socket.gethostname()])
    seconds: float = 0.0  # wall time spent in collectives since the last take_seconds()
    step: int = 0  # for error messages and the heartbeat
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def describe(self) -> dict:
        return {"world_size": self.world, "backend": self.backend, "launcher": self.launch.source,
                "master": self.launch.master, "hosts": self.hosts,
                "ranks_per_host": {h: self.hosts.count(h) for h in dict.fromkeys(self.hosts)}}

    def take_seconds(self) -> float:
        s, self.seconds = self.seconds, 0.0
        return s

    # ---- the collectives ----
    def _call(self, what: str, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        except Exception as e:
            raise self._failure(f"collective {what!r}", e) from e
        finally:
            self.seconds += time.perf_counter() - t0

    @contextlib.contextmanager
    def guard(self, what: str):
        """Collectives we do not call ourselves (DDP's gradient all-reduce inside backward): a
        backend failure becomes a CommError naming the ranks; other errors pass unchanged."""
        try:
            yield
        except RuntimeError as e:
            if self.distributed and any(w in str(e) for w in _BACKEND_WORDS):
                raise self._failure(what, e) from e
            raise

    def _failure(self, what: str, e: Exception) -> CommError:
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        self.report_exit(f"{what} failed at step {self.step + 1}")  # before reading the others' notes
        return CommError(f"rank {self.rank}: {what} failed during step {self.step + 1} ({first}). {self.diagnose()}")

    @torch.no_grad()
    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' equally sized local rows in global order (position p from rank p % W)."""
        if not self.distributed:
            return x
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.world)]
        self._call("all_gather", dist.all_gather, parts, x)
        return torch.stack(parts, dim=1).reshape(-1, *x.shape[1:])  # (n, W, ...) -> (n W, ...)

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global tensor: rows rank, rank + W, ..."""
        return x if not self.distributed else x[self.rank::self.world]

    @torch.no_grad()
    def permute(self, x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """This rank's share of ``x_global[src]`` from the local shares ``x``: one all-to-all.

        src: a permutation of the global positions, identical on every rank.
        """
        if not self.distributed:
            return x[src.to(x.device)]
        W, r = self.world, self.rank
        src = src.cpu()
        out_owner = torch.arange(src.numel()) % W  # rank that receives global output position p
        in_owner = src % W  # rank that holds the row for position p
        send = [src[(out_owner == t) & (in_owner == r)] // W for t in range(W)]  # my local rows, per target
        mine = out_owner == r
        recv_from = in_owner[mine]  # for each of my output rows (in order), its source rank
        counts = [int((recv_from == s).sum()) for s in range(W)]
        recv = x.new_empty((sum(counts), *x.shape[1:]))
        self._call("all_to_all", dist.all_to_all_single, recv, x[torch.cat(send).to(x.device)].contiguous(),
                   counts, [len(t) for t in send])
        out = torch.empty_like(recv)
        out[torch.argsort(recv_from, stable=True).to(x.device)] = recv  # rows arrive grouped by source
        return out

    @torch.no_grad()
    def broadcast_(self, tensors: list[torch.Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` with rank ``src``'s values (in place)."""
        if not self.distributed:
            return
        for t in tensors:
            if not t.is_contiguous():
                raise ValueError("broadcast_ needs contiguous tensors")
            self._call("broadcast", dist.broadcast, t, src)

    @torch.no_grad()
    def average_(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor by its mean over ranks; one coalesced all-reduce."""
        if not self.distributed or not tensors:
            return
        flat = torch.cat([t.reshape(-1).float() for t in tensors])
        self._call("all_reduce", dist.all_reduce, flat)
        flat /= self.world
        off = 0
        for t in tensors:
            t.copy_(flat[off:off + t.numel()].view_as(t))
            off += t.numel()

    @torch.no_grad()
    def gather_values(self, values: list[float]) -> torch.Tensor:
        """W x len(values) float64 table of every rank's values (losses, flags, timings)."""
        t = torch.tensor(values, dtype=torch.float64)
        if not self.distributed:
            return t[None]
        t = t.to(self.device)
        return self.gather(t[None]).cpu()

    def gather_objects(self, obj) -> list:
        if not self.distributed:
            return [obj]
        out: list = [None] * self.world
        self._call("all_gather_object", dist.all_gather_object, out, obj)
        return out

    def broadcast_object(self, obj, src: int = 0):
        if not self.distributed:
            return obj
        box = [obj]
        self._call("broadcast_object_list", dist.broadcast_object_list, box, src)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            self._call("barrier", dist.barrier)

    def agree(self, error: Exception | None) -> None:
        """Every rank reports its setup error (or None); if any rank has one, every rank raises
        (its own, or one naming the failing rank), so no rank is left waiting in a collective."""
        errors = self.gather_objects(None if error is None else str(error))
        if error is not None:
            raise error
        bad = [(r, e) for r, e in enumerate(errors) if e]
        if bad:
            raise InputError(f"rank {bad[0][0]}: {bad[0][1]}")

    @torch.no_grad()
    def assert_same(self, named: dict[str, torch.Tensor]) -> str:
        """Raise CommError unless every named tensor is bitwise identical on every rank.

        Returns the hex digest of the whole set (the same on every rank)."""
        digests = [tensor_digest(t) for t in named.values()]
        table = self.gather_values([float(d) for d in digests])  # W x len(named)
        differ = [n for k, n in enumerate(named) if not bool((table[:, k] == table[0, k]).all())]
        if differ:
            raise CommError(f"replicated state differs across ranks at step {self.step + 1}: {', '.join(differ)}")
        return hashlib.sha1(b"".join(d.to_bytes(8, "little") for d in digests)).hexdigest()[:16]

    # ---- liveness: which rank stopped? ----
    def _store(self):
        try:
            return dist.distributed_c10d._get_default_store()
        except Exception:  # no default group
            return None

    def heartbeat(self, step: int) -> None:
        """Record the last step this rank completed (read only when something fails)."""
        self.step = step
        store = self._store() if self.distributed else None
        if store is not None:
            try:
                store.set(f"cmacc/step/{self.rank}", str(step))
            except Exception:
                pass

    def report_exit(self, reason: str) -> None:
        """Leave a note for the other ranks' error messages before this rank exits abnormally."""
        store = self._store() if self.distributed else None
        if store is not None:
            try:
                store.set(f"cmacc/exit/{self.rank}", reason[:500])
            except Exception:
                pass

    def diagnose(self, grace: float = 3.0) -> str:
        """Which ranks stopped and why, from their notes in the store; a rank with no note after
        ``grace`` seconds is named as silent (killed, crashed without a word, or hung)."""
        store = self._store()
        if store is None:
            return ""
        others = [r for r in range(self.world) if r != self.rank]
        try:
            deadline = time.time() + grace
            while time.time() < deadline and not all(store.check([f"cmacc/exit/{r}"]) for r in others):
                time.sleep(0.1)
            notes = []
            for r in others:
                if store.check([f"cmacc/exit/{r}"]):
                    notes.append(f"rank {r} stopped: {store.get(f'cmacc/exit/{r}').decode()}")
                else:
                    last = store.get(f"cmacc/step/{r}").decode() if store.check([f"cmacc/step/{r}"]) else "none"
                    notes.append(f"rank {r} is silent (last completed step {last}): killed, crashed without "
                                 f"a word, or hung")
        except Exception:
            return "The rendezvous store is unreachable too: rank 0 (or the launcher hosting it) is gone."
        return "; ".join(notes) + "."

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            gc.collect()  # cycles holding DDP, and through it this group: free them while Python runs
            dist.destroy_process_group()
            self.owns_group = False


def tensor_digest(t: torch.Tensor) -> int:
    """A 52-bit content hash of a tensor (exactly representable as a float64 for gathering)."""
    b = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
    return int.from_bytes(hashlib.sha1(b).digest()[:8], "little") >> 12


def resolve_device(name: str, launch: Launch) -> torch.device:
    """run.device -> this rank's device: cuda:LOCAL_RANK on GPUs, cpu otherwise."""
    from ..config import ConfigError
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"config key 'run.device': {name!r} requested but CUDA is not available here (the "
                              f"paper preset asks for GPUs); --set run.device=cpu runs on the CPU anyway")
        if launch.world > 1:
            if dev.index is not None:
                raise ConfigError(f"config key 'run.device': {name!r} pins one GPU but {launch.world} ranks run; "
                                  f"use run.device=cuda (each rank takes cuda:LOCAL_RANK)")
            if launch.local_rank >= torch.cuda.device_count():
                raise LaunchError(f"LOCAL_RANK={launch.local_rank} but this host has {torch.cuda.device_count()} GPUs")
            dev = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(dev)
    return dev


def init(device: str = "auto", timeout_s: float = 1800.0, env: dict | None = None) -> Comm:
    """Join the process group the launcher describes (or none for a single process)."""
    launch = detect_launch(env)
    dev = resolve_device(device, launch)
    if launch.world == 1:
        return Comm(device=dev, launch=launch)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dist.is_initialized():  # the caller set up the group
        if dist.get_world_size() != launch.world or dist.get_rank() != launch.rank:
            raise LaunchError(f"an existing process group (rank {dist.get_rank()} of {dist.get_world_size()}) "
                              f"disagrees with the environment (rank {launch.rank} of {launch.world})")
        owns = False
    else:
        kw = dict(backend=backend, timeout=datetime.timedelta(seconds=timeout_s),
                  rank=launch.rank, world_size=launch.world)
        method = os.environ.get(INIT_METHOD_ENV)
        if method:
            kw["init_method"] = method
        if dev.type == "cuda" and "device_id" in inspect.signature(dist.init_process_group).parameters:
            kw["device_id"] = dev  # NCCL binds to this rank's GPU (torch >= 2.3)
        dist.init_process_group(**kw)
        owns = True
    comm = Comm(launch.rank, launch.world, dev, dist.get_backend(), launch, owns_group=owns)
    comm.hosts = comm.gather_objects(socket.gethostname())
    log.info("rank %d of %d (%s, local rank %d) on %s, backend %s", comm.rank, comm.world, launch.source,
             launch.local_rank, dev, comm.backend)
    return comm
