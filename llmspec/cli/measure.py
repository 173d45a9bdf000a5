"""``llmspec measure``: the compiled model on meta and fake tensors beside the plan."""

from __future__ import annotations

from typing import Annotated

import typer

from llmspec.cli.common import JsonOpt, SetOpt, SpecArg, new_console, print_json
from llmspec.errors import LLMSpecError


def measure(spec: SpecArg, set_: SetOpt = None, json_: JsonOpt = False,
            checkpointing: Annotated[list[str] | None, typer.Option(
                help="none, selective or full (repeatable; default all three)")] = None) -> None:
    """Measure the compiled model without memory (meta and fake tensors) beside the planner's predictions."""
    from llmspec.planner.training import CHECKPOINTING
    from llmspec.spec.loading import load_spec

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
