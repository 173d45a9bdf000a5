"""Learning rate: linear warmup from 0 to ``optimizer.lr``, then cosine decay to ``schedule.min_lr``."""

from __future__ import annotations

import math

from llmspec.spec.schema import Spec


def lr_at(spec: Spec, step: int) -> float:
    """The learning rate for optimizer step ``step`` (0-based) of ``training.steps``."""
    tr = spec.training
    peak, floor, warmup, total = tr.optimizer.lr, tr.schedule.min_lr, tr.schedule.warmup_steps, tr.steps
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
