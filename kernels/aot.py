"""Ahead-of-time compilation of the kernels for real GPUs, on a machine without one.

Triton's interpreter (how the CPU tests run the kernels) accepts code that the real compiler
rejects and says nothing about registers, spills or shared memory. This module compiles every
kernel the host wrappers launch down to a cubin with the ptxas that the triton wheel bundles,
for any target (``GPUTarget("cuda", 90, 32)``), and reads the resources it uses:

1. **The launches come from the wrappers themselves.** :func:`record_launches` runs
   ``cmacc.kernels.select`` (the path ``cmacc.sampling.select(backend="triton")`` takes) on
   CPU tensors of the requested sizes with each ``kernel[grid](...)`` replaced by a recorder, so
   the grid, the meta-parameters and ``num_warps`` are the ones the wrappers choose. Nothing
   runs on a device; the wrappers' own torch ops run on the CPU.
2. **Their specialisation is Triton's own.** :func:`compile_launch` binds each recorded call
   with the JIT's binder for the target's backend (argument types, 16-divisibility of pointers
   and ints, constexprs) and calls ``triton.compile`` as the JIT would at first launch.
3. **Resources** (:func:`resources`): registers and the stack frame from ``cuobjdump
   --dump-resource-usage`` on the cubin, spill stores/loads from ptxas's own ``-v`` log of that
   compile, dynamic shared memory from the compiled metadata, and the occupancy those imply
   (:func:`occupancy`, CUDA's occupancy rules with the per-architecture limits in ``ARCH``).

Run from a process where ``TRITON_INTERPRET`` is unset: the interpreter replaces the JIT
functions that ``triton.compile`` needs. ``cmacc bench kernels --compile`` does that.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import re
import subprocess
import tempfile
from pathlib import Path

import torch

# Per-architecture limits (CUDA C Programming Guide, "Compute capabilities", table 21):
# largest dynamic shared memory a block may opt in to, shared memory per SM, threads and blocks
# per SM. Every listed architecture has 64 K 32-bit registers per SM, at most 255 per thread,
# allocated per warp in units of 256, and reserves 1 KB of shared memory per resident block.
ARCH = {
    75: dict(smem_block=65536, smem_sm=65536, threads_sm=1024, blocks_sm=16),
    80: dict(smem_block=166912, smem_sm=167936, threads_sm=2048, blocks_sm=32),
    86: dict(smem_block=101376, smem_sm=102400, threads_sm=1536, blocks_sm=16),
    89: dict(smem_block=101376, smem_sm=102400, threads_sm=1536, blocks_sm=24),
    90: dict(smem_block=232448, smem_sm=233472, threads_sm=2048, blocks_sm=32),
    100: dict(smem_block=232448, smem_sm=233472, threads_sm=2048, blocks_sm=32),
}
REGS_SM, REG_UNIT, SMEM_RESERVED = 65536, 256, 1024

# Workloads: (name, N pool rows, M queries, d, dtype). The paper's size, the CPU preset's and
# awkward ones (M below tl.dot's 16, d not a power of two, N not a multiple of a block, M
# between powers of two and at the largest batch the pool methods accept here).
WORKLOADS = [
    ("paper", 38400, 128, 128, torch.float32), ("paper", 38400, 128, 128, torch.bfloat16),
    ("paper", 38400, 128, 128, torch.float16), ("cpu preset", 1536, 32, 128, torch.float32),
    ("awkward", 1001, 3, 5, torch.float32), ("awkward", 777, 200, 300, torch.bfloat16),
    ("awkward", 4099, 256, 64, torch.float16), ("awkward", 2050, 512, 128, torch.float32),
]
EMBEDDINGS = ("gradient", "feature", "key_gradient", "ohem")  # "random" launches no kernel
ROUNDS = 18  # rounds recorded per seeding: t = 0 (first), 1 (Triton specialises 1), 2..15, 16


@dataclasses.dataclass
class Launch:
    kernel: object  # the JITFunction
    grid: tuple
    args: tuple
    kwargs: dict
    workload: str = ""

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__


class _Recorder:
    def __init__(self, kernel, sink: list, workload: str):
        self.kernel, self.sink, self.workload = kernel, sink, workload

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.sink.append(Launch(self.kernel, tuple(grid), args, dict(kwargs), self.workload))
        return launch


@contextlib.contextmanager
def _recording(sink: list, workload: str):
    from . import kmeanspp, pseudo_posterior
    saved = [(m, n, getattr(m, n)) for m, n in ((pseudo_posterior, "_pseudo_posterior_kernel"),
                                                 (kmeanspp, "_seed_round_kernel"))]
    for m, n, k in saved:
        if not hasattr(k, "params"):
            raise RuntimeError("kernels.aot needs Triton's JIT: unset TRITON_INTERPRET in this process")
        setattr(m, n, _Recorder(k, sink, workload))
    try:
        yield
    finally:
        for m, n, k in saved:
            setattr(m, n, k)


def record_launches(workloads=WORKLOADS, embeddings=EMBEDDINGS, rounds: int = ROUNDS) -> list[Launch]:
    """Every kernel launch that ``cmacc.kernels.select`` makes for these sizes, dtypes, embeddings
    and both first-centroid rules, with and without an exclusion mask; the kmeanspp wrapper's
    ``prune=False`` variant as well."""
    from . import kmeanspp as km
    from . import select
    out: list[Launch] = []
    for name, n, m, d, dtype in workloads:
        label = f"{name} N={n} M={m} d={d} {str(dtype).removeprefix('torch.')}"
        keys, queries = torch.zeros(n, d, dtype=dtype), torch.zeros(m, d, dtype=dtype)
        noise = torch.ones(rounds, n)
        exclude = torch.zeros(n, dtype=torch.bool)
        with _recording(out, label):
            for emb in embeddings:
                for first in ("random", "norm"):
                    for ex in (None, exclude):
                        select(keys, queries, rounds, embedding=emb, exclude=ex, first=first, temperature=0.7,
                               noise=noise)
            for first in ("random", "norm"):
                km.kmeanspp(rounds, noise, x=keys, first=first, prune=False)
    return out


def _specialise(launch: Launch, backend):
    from triton.runtime.jit import create_function_from_signature
    k = launch.kernel
    binder = create_function_from_signature(k.signature, k.params, backend)
    bound, spec, options = binder(*launch.args, **launch.kwargs)
    return k._pack_args(backend, launch.kwargs, bound, spec, options)


def variant_key(launch: Launch, backend) -> str:
    """What makes two launches one compiled kernel (the JIT's cache key, readable)."""
    options, signature, constexprs, attrs = _specialise(launch, backend)
    cons = ",".join(f"{launch.kernel.arg_names[p[0]]}={v}" for p, v in sorted(constexprs.items()))
    types = ",".join(v for k, v in signature.items() if v != "constexpr")
    div = ",".join(launch.kernel.arg_names[p[0]] for p, a in sorted(attrs.items()) if a)
    return f"{launch.name}[{cons}; num_warps={options.num_warps}, num_stages={options.num_stages}]({types}; div16: {div})"


def compile_launch(launch: Launch, arch: int):
    """triton.compile of this launch for sm_<arch>, exactly as the JIT would specialise it;
    returns (CompiledKernel, ptxas -v log)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    options, signature, constexprs, attrs = _specialise(launch, backend)
    log = io.StringIO()
    with tempfile.TemporaryDirectory() as cache, knobs.cache.scope(), knobs.nvidia.scope():
        knobs.cache.dir = cache  # a fresh cache: ptxas runs, and its log is this compile's
        knobs.nvidia.dump_ptxas_log = True
        with contextlib.redirect_stdout(log):
            ck = triton.compile(ASTSource(launch.kernel, signature, constexprs, attrs), target=target,
                                options=options.__dict__)
    return ck, log.getvalue()


def _tool(name: str) -> str:
    from triton import knobs
    return getattr(knobs.nvidia, name).path


def resources(ck, ptxas_log: str) -> dict:
    """Registers, stack, static shared (cuobjdump), spills (ptxas), dynamic shared (metadata)."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(ck.asm["cubin"])
        dump = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", str(cubin)], check=True,
                              capture_output=True, text=True).stdout
    usage = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", dump.split("Function", 1)[-1]))
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", ptxas_log)
    if not usage or spill is None:
        raise RuntimeError(f"could not read the resource usage:\n{dump}\n{ptxas_log}")
    return {"registers": int(usage["REG"]), "stack": int(usage["STACK"]), "local": int(usage["LOCAL"]),
            "static_shared": int(usage["SHARED"]), "spill_stores": int(spill[1]), "spill_loads": int(spill[2]),
            "shared": int(ck.metadata.shared), "num_warps": int(ck.metadata.num_warps),
            "num_stages": int(ck.metadata.num_stages)}


def occupancy(arch: int, registers: int, shared: int, num_warps: int) -> dict:
    """Resident blocks per SM and the share of the SM's warp slots they fill, with the limiter."""
    lim = ARCH[arch]
    regs_warp = -(-registers * 32 // REG_UNIT) * REG_UNIT
    by = {"registers": (REGS_SM // regs_warp) // num_warps if regs_warp else lim["blocks_sm"],
          "shared": lim["smem_sm"] // (shared + SMEM_RESERVED),
          "threads": lim["threads_sm"] // (num_warps * 32), "blocks": lim["blocks_sm"]}
    blocks = min(by.values())
    return {"blocks_per_sm": blocks, "occupancy": blocks * num_warps * 32 / lim["threads_sm"],
            "limited_by": min(by, key=lambda k: (by[k], k != "blocks"))}


def problems(arch: int, res: dict) -> list[str]:
    """Why this compiled variant must not ship for sm_<arch> (empty: it may)."""
    out = []
    if res["spill_stores"] or res["spill_loads"]:
        out.append(f"spills {res['spill_stores']} B stores / {res['spill_loads']} B loads")
    if res["shared"] + res["static_shared"] > ARCH[arch]["smem_block"]:
        out.append(f"shared memory {res['shared'] + res['static_shared']} B > sm_{arch}'s {ARCH[arch]['smem_block']} B")
    if res["stack"] or res["local"]:
        out.append(f"stack frame {res['stack']} B, local {res['local']} B")
    return out


@functools.lru_cache()
def known_archs() -> tuple[int, ...]:
    """The architectures of ``ARCH`` that the installed Triton compiles for: a one-line kernel is
    compiled for each; an architecture its LLVM or ptxas does not know is left out."""
    import triton
    from triton.compiler import ASTSource
    from ._probe import _store_one
    out = []
    for arch in ARCH:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                triton.compile(ASTSource(_store_one, {"X": "*fp32"}, {}, {}), target=_target(arch), options={})
        except Exception:  # noqa: BLE001 - unknown to this Triton, whichever way it says so
            continue
        out.append(arch)
    return tuple(out)


def _target(arch: int):
    from triton.backends.compiler import GPUTarget
    return GPUTarget("cuda", arch, 32)


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
