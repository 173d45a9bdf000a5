"""Which fields two specs differ in, and which of them a resumed run may change."""

from __future__ import annotations

from typing import Any

from llmspec.spec.schema import Spec

# A resumed run continues the same model on the same data with the same optimizer: only how long it trains, how
# often it logs, evaluates and checkpoints, and the spec's name may change (docs/spec.md says so too).
RESUME_SAFE = ("name", "training.max_steps", "training.tokens", "training.log_interval", "training.eval_interval",
               "training.checkpoint_interval", "cluster.hosts", "data.workers")


def _leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_fields(before: Spec, after: Spec) -> list[str]:
    """Dotted paths of the fields whose values differ (a section present on one side only counts as changed)."""
    a, b = _leaves(before.model_dump()), _leaves(after.model_dump())
    return sorted(key for key in a.keys() | b.keys() if a.get(key, None) != b.get(key, None))


def unsafe_resume_changes(before: Spec, after: Spec) -> list[str]:
    """The changed fields a resumed run may not change."""
    return [key for key in changed_fields(before, after) if key not in RESUME_SAFE]
