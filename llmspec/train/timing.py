"""``llmspec measure SPEC --steps N``: train N steps of the compiled model here, with the spec's layout, after a
warm-up, and set the measured step time, throughput, MFU and peak memory beside the plan's, term by term where the
plan has terms. On a GPU the measurement is the user's own calibration: ``calibration_for`` turns it into the
kernel rates ``cluster.calibration`` reads."""

from __future__ import annotations

import resource
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmspec.planner.device_inputs import calibration_text, kernel_rates
from llmspec.planner.result import TIME_ROWS
from llmspec.planner.training import Plan, plan
from llmspec.spec.schema import Spec

WARMUP_STEPS = 2  # allocator, kernel selection, DeepSpeed's first-step bookkeeping: not the steady state


@dataclass
class StepTiming:
    """The plan's step against N measured steps of the same spec on this machine."""

    spec: Spec
    planned: Plan
    steps: int
    step_seconds: list[float]  # each measured step, warm-up excluded
    peak_memory: int  # bytes: CUDA's max allocated, or the processes' peak resident set on CPU
    peak_memory_source: str
    backend: str
    mfu: float | None = None
    terms: dict[str, float] = field(default_factory=dict)

    @property
    def measured_step(self) -> float:
        """The median step: one slow step (a page fault, a log flush) does not move it."""
        return statistics.median(self.step_seconds)

    @property
    def ratio(self) -> float:
        """Planned step time over measured (above 1: the plan is pessimistic here)."""
        return self.planned.time["step_seconds"] / self.measured_step

    def to_json(self) -> dict[str, Any]:
        t = self.planned.time
        tokens = self.spec.training.tokens_per_step
        planned = {key: t[key] for key, *_ in TIME_ROWS}
        planned.update(step_seconds=t["step_seconds"], tokens_per_second=t["tokens_per_second"], mfu=t["mfu"],
                       peak_memory=self.planned.memory["peak"])
        measured = {"step_seconds": self.measured_step, "tokens_per_second": tokens / self.measured_step,
                    "mfu": self.mfu, "peak_memory": self.peak_memory, "peak_memory_source": self.peak_memory_source,
                    "steps": self.steps, "each_step_seconds": self.step_seconds, "backend": self.backend}
        return {"spec": self.spec.name, "planned": planned, "measured": measured, "ratio": self.ratio}


def _timed_spec(spec: Spec, steps: int, warmup: int) -> Spec:
    """The spec trained for warm-up + N steps, a step line each, no evaluation or checkpoint in between."""
    total = warmup + steps
    training = spec.training.model_copy(update={"max_steps": total, "log_interval": 1,
                                                 "eval_interval": total + 1, "checkpoint_interval": total + 1})
    return spec.model_copy(update={"training": training})


def _peak_rss() -> int:
    """The largest resident set of this process or any rank it waited for, in bytes (Linux reports KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * scale


def measure_steps(spec: Spec, steps: int, run: Callable[..., Any], backend: str = "auto",
                  warmup: int = WARMUP_STEPS, run_dir: Path | None = None, announce=lambda line: None) -> StepTiming:
    """Train ``warmup`` + ``steps`` steps of ``spec`` with its layout through ``run`` (``llmspec.runner.run``, which
    sits above this layer and is handed down: its engines, one process or DeepSpeed ranks) in ``run_dir`` (a
    temporary folder by default) and time the last ``steps``."""
    from llmspec.train.metrics import read_metrics

    if steps < 1:
        raise ValueError("--steps must be at least 1")
    timed = _timed_spec(spec, steps, warmup)
    planned = plan(spec, alternatives=False)
    with tempfile.TemporaryDirectory(prefix="llmspec-measure-") as scratch:
        where = Path(run_dir) if run_dir is not None else Path(scratch) / "run"
        run(timed, where, backend=backend, announce=announce, planned=plan(timed, alternatives=False),
            force=True)
        records = [r for r in read_metrics(where / "metrics.jsonl") if "tokens_per_second" in r]
        engine = (where / "job.json").read_text(encoding="utf-8") if (where / "job.json").exists() else ""
    timed_records = [r for r in records if r["step"] > warmup and r["tokens_per_second"] > 0]
    tokens = spec.training.tokens_per_step
    seconds = [tokens / r["tokens_per_second"] for r in timed_records]
    cuda = [r["peak_memory"] for r in timed_records if "peak_memory" in r]
    mfus = [r["mfu"] for r in timed_records if "mfu" in r]
    return StepTiming(spec, planned, len(seconds), seconds,
                      peak_memory=max(cuda) if cuda else _peak_rss(),
                      peak_memory_source="CUDA max allocated" if cuda else "peak RSS",
                      backend="deepspeed" if "deepspeed" in engine else backend,
                      mfu=statistics.median(mfus) if mfus else None)


def calibration_for(timing: StepTiming) -> str:
    """A calibration file for the GPU measured: the catalogue's rates with the matmul efficiency that makes the
    planned step the measured one (the matmuls are most of a step; what the plan's other terms miss lands there
    too, which is what a user planning on this GPU wants)."""
    spec, t = timing.spec, timing.planned.time
    rates = kernel_rates(spec)
    other = t["step_seconds"] - t["matmul_seconds"]
    matmuls = max(timing.measured_step - other, 0.05 * timing.measured_step)
    from dataclasses import replace

    measured = replace(rates, matmul=min(1.0, rates.matmul * t["matmul_seconds"] / matmuls))
    gpu = spec.cluster.device.name
    return calibration_text(gpu, measured, {"step_seconds": timing.measured_step,
                                            "planned_step_seconds": t["step_seconds"], "steps": timing.steps,
                                            "spec": spec.name}, source="llmspec measure --steps")
