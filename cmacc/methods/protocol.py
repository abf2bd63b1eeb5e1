"""The boundary between a family of methods and the training engine (cmacc.engine).

The engine builds, starts, steps, checkpoints and watches a run without knowing which method it
trains; everything that differs between families is asked of the method's :class:`Family`. The
engine gives a family what it may use through a :class:`Context`: the config, the process
group, the feed that loads and encodes clips, derived generators, and where skips are recorded.

A family's model is an ``nn.Module`` whose forward is one training step of this rank's share of
the global mini-batch and returns a :class:`StepOutput`; its ``state_dict`` is everything of the
method that a checkpoint must hold (encoders, FC layers, dictionaries, pool, banks, Z, ...).
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

if TYPE_CHECKING:  # the engine's types, for readers; a family never imports the engine's loop
    from ..config import Config
    from ..system.dist import Comm

Amp = Callable[[], AbstractContextManager]  # run.precision's autocast (cmacc.engine.precision)
Encoders = tuple[nn.Module, nn.Module]  # (video, audio) encoders


@dataclass
class StepOutput:
    """What one step reports to the engine (losses over this rank's queries; ids global)."""

    loss: torch.Tensor  # the loss to back-propagate: L_v + L_a over this rank's m queries, with grad
    loss_v: torch.Tensor  # the video queries' loss, detached
    loss_a: torch.Tensor  # the audio queries' loss, detached
    acc_v: torch.Tensor  # pretext top-1: the instance positive outscores every negative, detached
    acc_a: torch.Tensor
    written_v: torch.Tensor  # clip ids (M,) written into the video dictionary this step (queue / bank rows)
    written_a: torch.Tensor  # ... into the audio dictionary; the same on every rank
    spread_v: torch.Tensor  # sqrt(1 - |mean q_v|^2) over this rank's queries: 0 when they collapse
    spread_a: torch.Tensor
    age_gap_v: torch.Tensor | None = None  # FIFO dictionaries only (cmacc.methods.moco.model.age_gap)
    age_gap_a: torch.Tensor | None = None
    timings: dict[str, float | None] = field(default_factory=dict)  # seconds; pruned_v/a: fractions
    negatives_v: torch.Tensor | None = None  # clip ids the video queries met as negatives ((K,) or (M, K))
    negatives_a: torch.Tensor | None = None
    batch_ids: torch.Tensor | None = None  # the global mini-batch's clip ids (M,)


@dataclass
class Context:
    """What the engine lends a family: read-only settings and the services it may call."""

    cfg: "Config"
    comm: "Comm"
    n_train: int  # usable training clips
    steps_per_epoch: int
    amp: Amp
    feed: Any  # cmacc.engine.feed.Feed: loads and finishes clips (submit / one / device)
    labels: torch.Tensor  # latent labels of the training clips (-1: none), for diagnostics only
    is_main: bool
    encode: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # encode(encoders, ids, tag, round) -> keys
    generator: Callable[..., torch.Generator]  # generator(purpose, *keys): (seed, purpose, keys) derived
    mark: Callable[[str], None]  # mark("pool"): where the next skipped clips are recorded as happening
    average_bn: Callable[[], None]  # average BN running statistics over ranks (after encoding clips)
    start_step: int = 0


class Family:
    """One family of methods. The engine calls, in this order:

    validate (at config load) -> data_needs, key_views -> build -> sync_bn_modules ->
    [fresh start: init_from_buffers, start] -> per step: before_step, step_kwargs, model(...),
    after_update -> replicated (sync checks); chance_loss feeds the collapse watch.
    """

    name: str = ""

    def validate(self, cfg: "Config") -> None:
        """Config checks of this family (ConfigError naming the key); torch-free code lives in checks.py."""

    def describe(self, cfg: "Config") -> str:
        """The sizes that matter, for the CLI's one-line banner."""
        return f"M={cfg.M}"

    def data_needs(self, cfg: "Config") -> list[tuple[str, int, str]]:
        """(config key, distinct training clips needed, what for): checked against the dataset."""
        return [("M", cfg.M, "one mini-batch")]

    def key_views(self, cfg: "Config") -> int:
        """Augmented views per training clip the loader renders (2: a second view for the keys)."""
        return 1

    def build(self, cfg: "Config", encoders: Encoders, comm: "Comm", n_train: int, backend: str) -> nn.Module:
        raise NotImplementedError

    def sync_bn_modules(self, model: nn.Module) -> list[nn.Module]:
        """The encoders whose BatchNorm layers become SyncBatchNorm under model.sync_bn."""
        return [model.f_v, model.f_a]

    def init_from_buffers(self, cfg: "Config") -> list[str]:
        """State-dict entries besides the encoders that ``init_from`` takes from the source run."""
        return []

    def start(self, model: nn.Module, ctx: Context) -> None:
        """A fresh run's state before step 1 (after init_from): dictionaries, banks, positives."""

    def before_step(self, model: nn.Module, ctx: Context, s: int) -> dict:
        """Work due before step s (0-based), e.g. a pool refresh; returns metrics fields."""
        return {}

    def step_kwargs(self, model: nn.Module, ctx: Context, s: int) -> dict:
        """Keyword arguments of the model's forward at step s besides the batch and generator."""
        return {}

    def after_update(self, model: nn.Module) -> None:
        """After the optimizer step, e.g. the momentum update of key encoders."""

    def chance_loss(self, cfg: "Config", model: nn.Module) -> float:
        """Each direction's loss when every score is equal (collapsed embeddings)."""
        raise NotImplementedError

    def replicated(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Tensors besides the model's buffers that must be bitwise equal on every rank."""
        return {f"{name} parameters": torch.cat([p.detach().reshape(-1) for p in getattr(model, name).parameters()])
                for name in ("f_v", "f_a")}


def log_k1(K: int) -> float:
    """InfoNCE with K negatives when every logit is equal: log(K + 1)."""
    return math.log(K + 1)
