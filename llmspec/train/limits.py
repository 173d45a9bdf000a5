"""What an engine refuses to run: the answer each engine gives for a spec (``refusals(spec)``), read by `run`'s
pre-flight (``llmspec.train.preflight``) and by the "what plan plans, run runs" table
(``llmspec.backends.runnable``). Light: no torch, no DeepSpeed, so both can ask without importing an engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llmspec.spec.schema import Spec


@dataclass(frozen=True)
class Refusal:
    """One thing an engine cannot run: the spec ``field`` and its ``value``, ``why`` the engine cannot, and what to
    set ``instead`` (empty when the why says it). ``said`` is how the message names the setting when more than the
    field and its value matter (``parallelism.tensor 2 with pipeline 2``); ``verdict`` what becomes of it."""

    field: str
    value: object
    why: str
    instead: str = ""
    said: str = ""
    verdict: str = "planned, not run"

    @property
    def setting(self) -> str:
        if self.said:
            return self.said
        return self.field if isinstance(self.value, bool) else f"{self.field} {self.value}"

    def __str__(self) -> str:
        """The one-line refusal `llmspec run` prints (exit 2)."""
        return f"{self.setting}: {self.verdict} ({self.why})" + (f"; {self.instead}" if self.instead else "")


# an engine's answer for a spec: what it refuses, first the one to fix first (none: it runs the spec)
Refusals = Callable[[Spec], list[Refusal]]


def compiled_model_refusals(spec: Spec) -> list[Refusal]:
    """What the compiled model.py cannot compute, whichever engine runs it."""
    if spec.training.precision == "fp8":
        return [Refusal("training.precision", "fp8", "the compiled model's matmuls have no FP8 path; Transformer "
                        "Engine would add one", "set bf16 to run")]
    return []

