"""What the post-training losses and metrics read from a model: the loss functions of the build it was compiled
from (``objectives.py``: ``token_logprobs``, ``kl_k3`` and each method's loss, what ``measure`` counts) and a value
head's score after each sequence's last response token."""

from __future__ import annotations

from types import ModuleType

import torch

from llmspec.compile.loading import model_module_of, objectives_module
from llmspec.data.instructions import IGNORE


def compiled(model: torch.nn.Module) -> ModuleType | None:
    """The generated ``objectives.py`` beside the ``model.py`` a model was built from: its method's loss functions.
    None when the method trains on model.py's own cross-entropy (pretraining, sft) or ``model`` is not a compiled
    model (DeepSpeed's PipelineModule)."""
    module = model_module_of(model)
    return None if module is None else objectives_module(module)


def last_positions(targets: torch.Tensor) -> torch.Tensor:
    """Each row's last position with a target: where the score after its last response token is read."""
    positions = torch.arange(targets.shape[1], device=targets.device).expand_as(targets)
    return torch.where(targets != IGNORE, positions, -1).amax(dim=1)


def sequence_scores(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A value head's (B, T) scores → one per sequence."""
    return scores.gather(1, last_positions(targets)[:, None]).squeeze(1)
