"""``llmspec measure``: the compiled model on meta and fake tensors beside the plan; with ``--steps N``, N timed
training steps here beside the plan's step time (llmspec.train.timing)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmspec.cli.common import JsonOpt, SetOpt, SpecArg, new_console, print_json
from llmspec.errors import LLMSpecError


def measure(spec: SpecArg, set_: SetOpt = None, json_: JsonOpt = False,
            checkpointing: Annotated[list[str] | None, typer.Option(
                help="none, selective or full (repeatable; default all three)")] = None,
            steps: Annotated[int | None, typer.Option(
                help="train N steps here (after a warm-up) with the spec's layout and time them against the plan")]
            = None,
            backend: Annotated[str, typer.Option(help="with --steps: auto, torch or deepspeed (as run)")] = "auto",
            write_calibration: Annotated[Path | None, typer.Option(
                "--write-calibration", help="with --steps: write the measured kernel rates of this GPU to PATH "
                "(cluster.calibration reads it)")] = None) -> None:
    """Measure the compiled model without memory (meta and fake tensors) beside the planner's predictions; with
    --steps, time real training steps of it here against the plan's step time."""
    from llmspec.planner.training import CHECKPOINTING
    from llmspec.spec.loading import load_spec

    if steps is not None:
        _measure_steps(load_spec(spec, set_ or []), steps, backend, json_, write_calibration)
        return
    if write_calibration is not None:
        raise LLMSpecError("--write-calibration needs --steps N (it writes what the timed steps measured)")

    modes = tuple(checkpointing or CHECKPOINTING)
    for mode in modes:
        if mode not in CHECKPOINTING:
            raise LLMSpecError(f"--checkpointing {mode}: expected one of {', '.join(CHECKPOINTING)}")
    loaded = load_spec(spec, set_ or [])
    from llmspec.compile.measure import measure as run_measure  # imports torch

    result = run_measure(loaded, modes)
    if json_:
        print_json(result.to_json())
        return
    from llmspec.cli.report import measurement_table

    new_console().print(measurement_table(result))


def _measure_steps(loaded, steps: int, backend: str, json_: bool, write_calibration: Path | None) -> None:
    """``measure --steps``: the timed steps against the plan, and the calibration file they make."""
    if steps < 1:
        raise LLMSpecError(f"--steps {steps}: expected at least 1")
    if backend not in ("auto", "torch", "deepspeed"):
        raise LLMSpecError(f"--backend {backend}: expected auto, torch or deepspeed")
    from llmspec.files import write_atomic
    from llmspec.train.timing import calibration_for, measure_steps  # imports torch

    console = new_console()
    from llmspec.runner import run

    timing = measure_steps(loaded, steps, run, backend, announce=lambda line: None if json_ else console.print(line))
    if write_calibration is not None:
        write_atomic(write_calibration, calibration_for(timing))
    if json_:
        print_json(timing.to_json())
        return
    from llmspec.cli.report import step_timing_table

    console.print(step_timing_table(timing))
    if write_calibration is not None:
        console.print(f"wrote {write_calibration} (cluster.calibration: {write_calibration})")
