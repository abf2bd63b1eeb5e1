"""cmacc.system.allocator: glibc keeps freed large blocks, so a repeated large allocation stops page-faulting."""
import resource
import subprocess
import sys

import pytest

from cmacc.system import allocator

PROBE = """
import resource, sys, torch
from cmacc.system.allocator import keep_freed_memory
from cmacc.sampling.posterior import gradient_factors
state = keep_freed_memory(sys.argv[1] == "1")
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
U, Q = torch.randn(80000, 64, generator=g), torch.randn(128, 64, generator=g)
faults = []
for _ in range(8):  # the sampler's pseudo-posterior: 41 MB temporaries, allocated and freed per call
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    gradient_factors(U, Q)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(state, sum(faults[4:]))
"""


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc only")
def test_freed_blocks_are_reused_without_page_faults():
    """Fresh processes, the last 4 of 8 calls. The temporaries (41 MB) lie above glibc's largest
    dynamic mmap threshold (32 MB), so the default allocator maps and faults them in anew on every
    call (10,000 pages each); the kept heap reuses the pages it touched in the first calls. Fails
    if mallopt did nothing."""
    out = {}
    for flag in ("0", "1"):
        r = subprocess.run([sys.executable, "-c", PROBE, flag], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        state, faults = r.stdout.split()
        out[flag] = (state, int(faults))
    assert out["0"][0] == "default" and out["1"][0] == "kept"
    assert out["0"][1] > 4 * 10000, out
    assert out["1"][1] < out["0"][1] / 4, out


def test_disabled_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setattr(allocator, "_state", None)
    assert allocator.keep_freed_memory(False) == "default"
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert allocator.keep_freed_memory(True) == "unavailable: not glibc"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt >= 0
