"""The contract between the one training loop (``llmspec.train.loop.fit``) and an engine that executes it.

The loop owns everything that is the same for every engine: the learning rate of each step, which batches a step
sees, the finite check, logging, evaluation and checkpoint cadence, the non-finite-weights refusal and resume.
An engine (plain torch; DeepSpeed; a DeepSpeed pipeline) owns only how a step is computed, and how its state is
saved and restored; what a step computes is the training method's (``llmspec.train.methods``: the loss, the models
it trains, its batches). What an engine cannot run it says up front: ``refusals(spec)``, answered by a light module
beside it (``llmspec.train.limits``).

Losses cross the interface as 0-dim tensors on the engine's device: the loop reads them on the host only when it
logs, so a GPU step never waits for the host.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from llmspec.train.limits import Refusals

if TYPE_CHECKING:
    from llmspec.train.losses import Loss
    from llmspec.train.methods import Method

# (inputs, targets[, the method's tensors: pretraining's document segments, advantages]), on the CPU; the engine
# moves them and hands them to the method's loss as they are
Batch = tuple[torch.Tensor, ...]


class Engine(ABC):
    #: where the model lives: "cpu", "cuda" or "cuda:N" (for MFU, and the metrics' device)
    device: str
    #: the process that writes metrics.jsonl and the consolidated checkpoint (rank 0)
    is_main: bool = True
    #: the model as a plain module: post-training's held-out metrics run it (every rank, as ZeRO-3 needs)
    model: torch.nn.Module
    #: the training method whose step the engine computes (its objective gives the loop its batches)
    method: Method
    #: what the engine refuses to run for a spec, and why (its limits module's answer: `run`'s pre-flight asks
    #: it before any engine is built)
    refusals: ClassVar[Refusals]
    #: the method's loss for ``model`` (its ``reference``, where it has one, is the one the metrics read)
    loss: Loss

    @abstractmethod
    def batch_slots(self) -> list[tuple[int, int]]:
        """The (micro-batch, data-parallel replica) pairs this process computes in one optimizer step. The loop
        draws those batches, so every engine and layout sees the same data for the same step."""

    @abstractmethod
    def set_lr(self, lr: float) -> None:
        """The learning rate of the coming optimizer step."""

    @abstractmethod
    def train_step(self, batches: list[Batch]) -> torch.Tensor:
        """Forward, backward and one optimizer step over ``batches`` (those of ``batch_slots``); returns this
        process's mean loss as a 0-dim tensor on the device, without synchronising with the host."""

    def global_mean(self, losses: torch.Tensor) -> torch.Tensor:
        """Per-step losses of this process → the mean over every data-parallel replica (identity for one)."""
        return losses

    @abstractmethod
    def eval_loss(self, batch: Batch) -> float:
        """The loss of one validation batch, no gradients (every rank takes part where the engine needs it)."""

    @abstractmethod
    def weights_finite(self) -> bool:
        """Whether every weight is finite; the same answer on every rank."""

    @abstractmethod
    def save(self, checkpoints: Path, step: int, spec_yaml: str) -> None:
        """Write the checkpoint of ``step`` under ``checkpoints`` (atomically: a crash keeps the previous one)."""

    @abstractmethod
    def load(self, checkpoints: Path) -> tuple[int, str]:
        """Restore the latest checkpoint; returns its step and where it was read from."""

    @abstractmethod
    def train_mode(self, training: bool) -> None:
        """Switch dropout and the like on (training) or off (evaluation)."""

    def frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """A frozen model the step runs beside the trained one (DPO/GRPO/PPO's reference copy, a reward model),
        held as the engine holds such models: here whole; DeepSpeed partitions it under ZeRO-3. Every rank then
        calls its forward together."""
        return model
