import os
from pathlib import Path

import pytest
import torch

# Triton kernels run on the GPU when there is one, else through Triton's interpreter, which
# must be switched on before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """../shared beside the repository, or $CMACC_SHARED."""
    return Path(os.environ.get("CMACC_SHARED", ROOT.parent / "shared"))


def unit_rows(n: int, d: int, *, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).to(dtype)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def poison(monkeypatch):
    """Kernel outputs start as NaN / -7, so an element a kernel does not write fails the test."""
    from cmacc.kernels import _common
    monkeypatch.setattr(_common, "POISON", True)
