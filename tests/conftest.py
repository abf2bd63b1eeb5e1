import os
from pathlib import Path

import pytest
import torch

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
