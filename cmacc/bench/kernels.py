"""``cmacc bench kernels --compile``: every kernel variant the wrappers launch, compiled for real
GPU targets without a GPU, with its registers, spills, shared memory and occupancy.

The compile runs in worker processes (one per core, at most ``--jobs``), each recording the
wrappers' launches itself (``cmacc.kernels.aot``) and compiling its share of the variants.
Exit status 1 when any variant fails to compile, spills, or exceeds a target's limits.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from cmacc.system import provenance


def _variants(archs: list[int]):
    """(key, launch) per distinct compiled kernel, in a fixed order; keys from sm_90's backend
    (the specialisation does not depend on the architecture)."""
    from triton.compiler import make_backend

    from cmacc.kernels import aot
    backend = make_backend(aot._target(90))
    out: dict[str, object] = {}
    for launch in aot.record_launches():
        out.setdefault(aot.variant_key(launch, backend), launch)
    return list(out.items())


def _compile_share(archs: list[int], share: int, shares: int) -> list[dict]:
    from cmacc.kernels import aot
    rows = []
    for i, (key, launch) in enumerate(_variants(archs)):
        if i % shares != share:
            continue
        for arch in archs:
            t0 = time.perf_counter()
            row = {"kernel": launch.name, "variant": key, "workload": launch.workload, "arch": arch}
            try:
                ck, log = aot.compile_launch(launch, arch)
                res = aot.resources(ck, log)
                row.update(res, **aot.occupancy(arch, res["registers"], res["shared"], res["num_warps"]))
                row["problems"] = aot.problems(arch, res)
            except Exception as e:  # noqa: BLE001 - a failed compile is a result, reported per variant
                row["problems"] = [f"does not compile: {type(e).__name__}: {str(e).splitlines()[0][:300]}"]
                row["traceback"] = traceback.format_exc(limit=3)
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
    return rows


def compile_all(archs: list[int], jobs: int) -> list[dict]:
    """Compile every variant for every arch; rows sorted by variant then arch."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("TRITON_INTERPRET=1 is set: the interpreter replaces the JIT that compiling needs; "
                           "run without it")
    jobs = max(1, jobs)
    if jobs == 1:
        rows = _compile_share(archs, 0, 1)
    else:
        with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_compile_share, archs, i, jobs) for i in range(jobs)]
            rows = [r for f in futures for r in f.result()]
    return sorted(rows, key=lambda r: (r["kernel"], r["variant"], r["arch"]))


def table(rows: list[dict]) -> str:
    """One line per (variant, arch): the resource table CI prints."""
    head = f"{'kernel':<26}{'arch':>6}{'warps':>6}{'regs':>6}{'spill':>7}{'smem B':>8}{'blocks/SM':>10}{'occ':>6}  variant"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "registers" not in r:
            lines.append(f"{r['kernel']:<26}{'sm_' + str(r['arch']):>6}  FAILED: {r['problems'][0]}  {r['variant']}")
            continue
        spill = r["spill_stores"] + r["spill_loads"]
        flag = "  <-- " + "; ".join(r["problems"]) if r["problems"] else ""
        lines.append(f"{r['kernel']:<26}{'sm_' + str(r['arch']):>6}{r['num_warps']:>6}{r['registers']:>6}{spill:>7}"
                     f"{r['shared'] + r['static_shared']:>8}{r['blocks_per_sm']:>10}{r['occupancy']:>6.2f}  "
                     f"{_short(r['variant'])} [{r['workload']}]{flag}")
    return "\n".join(lines)


def _short(variant: str) -> str:
    name, rest = variant.split("[", 1)
    return "[" + rest.split("](")[0] + "]"


def _versions() -> dict:
    import triton

    from cmacc.kernels import aot
    ptxas = {}
    for tool in ("ptxas", "ptxas_blackwell", "cuobjdump"):
        try:
            out = subprocess.run([aot._tool(tool), "--version"], capture_output=True, text=True).stdout
            ptxas[tool] = out.strip().splitlines()[-1]
        except (OSError, IndexError) as e:
            ptxas[tool] = f"unavailable ({e})"
    return {"triton": triton.__version__, **ptxas}


def main(args) -> int:
    from cmacc.kernels import aot
    known = aot.known_archs()
    archs = [int(a) for a in args.arch.split(",")] if args.arch else list(known)
    missing = [a for a in archs if a not in known]
    if missing:
        print(f"error: --arch {','.join(map(str, missing))}: not known to this Triton (knows {list(known)})",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rows = compile_all(archs, args.jobs)
    print(table(rows))
    bad = [r for r in rows if r["problems"]]
    variants = len({r["variant"] for r in rows})
    print(f"{variants} variants x {len(archs)} targets compiled in {time.perf_counter() - t0:.0f} s; "
          f"{len(bad)} with problems")
    if args.json:
        out = {"archs": archs, "rows": rows, "versions": _versions(), "provenance": provenance.collect("cpu"),
               "limits": {a: aot.ARCH[a] for a in archs}}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        print(f"wrote {args.json}")
    return 1 if bad else 0
