#!/usr/bin/env bash
# The device check, from this source tree with nothing installed: one CUDA GPU, the image's own
# python3 (torch, triton, numba, pytest; no PyAV, librosa or DALI needed), at most ~8 minutes.
#
#   bash benchmarks/gpu_check.sh OUT [--dry-run] [--budget S] [--phases ...] [--workers N]
#
# writes OUT/gpu_check.json (every phase's figures, versions, device, git revision) and
# OUT/gpu_check.log (every child's output), plus kernel_tests.xml and sampler.jsonl. Exit 0: every
# phase passed; 1: some phase failed (the JSON says which); 3: no CUDA device; 2: bad arguments.
# Options: python -m cmacc.bench.gpu_check --help. PYTHON picks the interpreter (default python3).
set -euo pipefail
if [[ $# -lt 1 || $1 == -* ]]; then
    echo "usage: bash benchmarks/gpu_check.sh OUT [--dry-run] [options of python -m cmacc.bench.gpu_check]" >&2
    exit 2
fi
out=$(realpath -m "$1"); shift
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rev=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
if [[ $rev != unknown && -n $(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    rev="$rev-dirty"
fi
# The installed layout (kernels/ is the package cmacc.kernels) as a staged copy: PYTHONPATH then
# imports this tree's code, not an installed cmacc, and the tests find their files. A PYTHONPATH
# already set (wheels carried to the machine, e.g. /tmp/site) stays behind it.
stage=$(mktemp -d "${TMPDIR:-/tmp}/cmacc-gpu-check-src.XXXXXX")
trap 'rm -rf "$stage"' EXIT
cp -r "$root/cmacc" "$stage/cmacc"
cp -r "$root/kernels" "$stage/cmacc/kernels"
cp -r "$root/tests" "$stage/tests"
cp "$root/pyproject.toml" "$stage/"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
unset TRITON_INTERPRET
export PYTHONPATH="$stage${PYTHONPATH:+:$PYTHONPATH}" CMACC_GIT_REVISION="$rev" PYTHONUNBUFFERED=1
cd "$stage"
"${PYTHON:-python3}" -m cmacc.bench.gpu_check --out "$out" "$@"
