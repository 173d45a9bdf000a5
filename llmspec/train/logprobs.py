"""Per-token and per-sequence quantities the post-training losses and metrics share: log-probabilities of the
targets, a value head's score after the last response token, and the k3 KL estimator."""

from __future__ import annotations

import torch

from llmspec.data.instructions import IGNORE


def last_positions(targets: torch.Tensor) -> torch.Tensor:
    """Each row's last position with a target: where the score after its last response token is read."""
    positions = torch.arange(targets.shape[1], device=targets.device).expand_as(targets)
    return torch.where(targets != IGNORE, positions, -1).amax(dim=1)


def sequence_scores(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A value head's (B, T) scores → one per sequence."""
    return scores.gather(1, last_positions(targets)[:, None]).squeeze(1)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at every position (0 where the target is masked)."""
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return logps * (targets != IGNORE)


def kl_k3(policy: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π ‖ π_ref) estimated as e^(ref − π) − (ref − π) − 1 (Schulman's k3: unbiased, ≥ 0)."""
    delta = reference - policy
    return torch.exp(delta) - delta - 1
