"""What the post-training losses and metrics read from a model: its compiled module (``model.py``, whose
``token_logprobs``, ``kl_k3`` and losses are what ``measure`` counts) and a value head's score after each
sequence's last response token."""

from __future__ import annotations

import sys
from types import ModuleType

import torch

from llmspec.data.instructions import IGNORE


def compiled(model: torch.nn.Module) -> ModuleType:
    """The compiled ``model.py`` a model was built from (its loss functions live there)."""
    return sys.modules[type(model).__module__]


def last_positions(targets: torch.Tensor) -> torch.Tensor:
    """Each row's last position with a target: where the score after its last response token is read."""
    positions = torch.arange(targets.shape[1], device=targets.device).expand_as(targets)
    return torch.where(targets != IGNORE, positions, -1).amax(dim=1)


def sequence_scores(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A value head's (B, T) scores → one per sequence."""
    return scores.gather(1, last_positions(targets)[:, None]).squeeze(1)
