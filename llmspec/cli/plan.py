"""``llmspec plan``: the plan of a spec, its alternatives, --max limits and --inference serving."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmspec.cli.common import (
    EXIT_DOES_NOT_FIT,
    JsonOpt,
    SetOpt,
    SpecArg,
    check_writable,
    load,
    new_console,
    print_json,
)


def plan(spec: SpecArg, set_: SetOpt = None, json_: JsonOpt = False,
         plot: Annotated[Path | None, typer.Option(help="write the memory-by-strategy chart (PNG)")] = None,
         alternatives: Annotated[bool, typer.Option(help="also plan every ZeRO × checkpointing × offload")] = True,
         max_: Annotated[str | None, typer.Option("--max", help="largest micro_batch_size, seq_len or n_layers "
                                                  "that still fits")] = None,
         inference: Annotated[bool, typer.Option(help="plan serving instead: weights, KV cache, throughput")] = False,
         context: Annotated[int | None, typer.Option(min=1, help="--inference: tokens per sequence")] = None,
         batch: Annotated[int, typer.Option(min=1, help="--inference: sequences decoded together")] = 1,
         ) -> None:
    """Parameters, FLOPs, per-GPU memory, fit, time and cost, for the spec's strategy and its alternatives."""
    from llmspec.planner.training import plan as make_plan

    if plot is not None:
        check_writable(plot)
    if max_ is not None:
        from llmspec.planner.limits import max_fitting

        limit = max_fitting(spec, set_ or [], max_)
        if json_:
            print_json(limit.__dict__)
        elif limit.value is None:
            print(f"{max_}: even 1 does not fit (usable {limit.usable:,} B)")
        else:
            print(f"{max_}: at most {limit.value} (spec has {limit.current}), bound by {limit.bound}; planned peak "
                  f"{limit.peak:,} B of {limit.usable:,} B usable")
        if limit.value is None:
            raise typer.Exit(EXIT_DOES_NOT_FIT)
        return
    if inference:
        from llmspec.planner.inference import inference_plan

        served = inference_plan(load(spec, set_), context, batch)
        if json_:
            print_json(served)
        else:
            from llmspec.cli.report import render_inference

            render_inference(served, new_console())
        if not served["fits"]:
            raise typer.Exit(EXIT_DOES_NOT_FIT)
        return

    loaded, keys = load(spec, set_), None
    if loaded.data.document_masking:  # the keys each query sees within its document, where the corpus is prepared
        from llmspec.data.attention import attended_keys

        keys = attended_keys(loaded)
    result = make_plan(loaded, alternatives=alternatives or plot is not None, attended_keys=keys)
    if plot is not None:
        from llmspec.cli.plots import plot_memory

        plot_memory(result, plot)
    if json_:
        print_json(result.to_json())
    else:
        from llmspec.cli.report import render_plan

        console = new_console()
        render_plan(result, console)
        if plot is not None:
            console.print(f"wrote {plot}")
    if not result.fits:
        raise typer.Exit(EXIT_DOES_NOT_FIT)
