"""Is the run healthy? A finite update, and embeddings that have not collapsed.

A step is committed only when its loss and the parameters it produced are finite
(:func:`all_finite`: one fused reduction and one host synchronisation per step). A collapse is not
an error -- the loss stays finite -- but it is the end of learning: every query maps to the same
point, every score is equal and each direction's loss sits at its chance level (InfoNCE with K
negatives: log(K + 1); the family says what it is: cmacc.methods.protocol.Family.chance_loss).
:class:`CollapseWatch` reports it after ``window`` consecutive such steps past the warm-up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """True when every element of every tensor is finite (norms of 1e38+ count as overflow)."""
    if not tensors:
        return True
    if hasattr(torch, "_foreach_norm"):  # one fused kernel per device and dtype
        norms = torch._foreach_norm([t.detach() for t in tensors])
    else:
        norms = [t.detach().float().norm() for t in tensors]
    return bool(torch.stack([n.float() for n in norms]).isfinite().all())


def non_finite_names(named) -> list[str]:
    """Names of the tensors holding NaN or Inf (the slow path, for the error message)."""
    return [n for n, t in named if not bool(torch.isfinite(t.detach()).all())]


@dataclass
class CollapseWatch:
    """Counts consecutive steps whose embeddings look collapsed (both signs are cheap scalars).

    - ``spread`` of a modality's unit queries, sqrt(1 - |mean q|^2), below ``spread_floor``:
      all queries within about half a degree of one another;
    - each direction's loss within ``loss_tol`` of ``chance()``: every score equal.

    chance: each direction's loss at collapse, asked of the method's family (NaN: not known yet);
    its first finite value is kept.
    """

    chance: Callable[[], float]
    warmup: int = 0  # steps not watched (a random-init encoder may map everything close together)
    window: int = 50
    spread_floor: float = 0.01  # healthy default runs here stay >= 0.07 (tiny encoders, 360 steps)
    loss_tol: float = 1e-3
    run: int = 0

    _chance: float = math.nan

    @property
    def chance_loss(self) -> float:
        if math.isnan(self._chance):
            self._chance = float(self.chance())
        return self._chance

    def update(self, step: int, losses: tuple[float, float], spreads: tuple[float, float]) -> str | None:
        """Feed step ``step`` (1-based); returns a warning on the step the window fills, else None."""
        flat = all(abs(x - self.chance_loss) < self.loss_tol for x in losses)
        narrow = min(spreads) < self.spread_floor
        self.run = self.run + 1 if step > self.warmup and (flat or narrow) else 0
        if self.run != self.window:
            return None
        why = (f"each direction's loss has sat at its chance level {self.chance_loss:.4f}" if flat else
               f"the queries' spread is {min(spreads):.3g} (< {self.spread_floor})")
        return (f"the embeddings have collapsed: for {self.window} steps up to step {step} {why}; the encoders "
                f"map every clip to the same point and learn nothing (lr too large? tau too small?)")

    @property
    def collapsed(self) -> bool:
        return self.run >= self.window
