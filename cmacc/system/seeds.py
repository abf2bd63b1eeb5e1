"""Randomness derived from (seed, purpose, step / epoch / round), never from a running RNG, so that
a resumed run repeats the uninterrupted run's draws and every rank draws the same."""
from __future__ import annotations

import numpy as np
import torch

# purposes of derived generators
DATA, POOL, QUEUE, STEP = 1, 2, 3, 4


def derived_seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


def generator(seed: int, *keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derived_seed(seed, *keys))
    return g
