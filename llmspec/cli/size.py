"""``llmspec size``: the layout search's Pareto frontier, or compute-optimal sizing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmspec.cli.common import JsonOpt, SetOpt, check_writable, new_console, print_json, write_text
from llmspec.errors import LLMSpecError


def size(spec: Annotated[str | None, typer.Argument(help="a spec file or named spec (omit with --compute)")] = None,
         set_: SetOpt = None, json_: JsonOpt = False,
         gpu: Annotated[str | None, typer.Option(help="GPU types to consider, comma-separated")] = None,
         max_gpus: Annotated[int, typer.Option(min=1, help="largest cluster to consider")] = 4096,
         deadline: Annotated[str | None, typer.Option(help="finish within this long, e.g. 30d, 12h")] = None,
         budget: Annotated[float | None, typer.Option(help="spend at most this many USD")] = None,
         objective: Annotated[str, typer.Option(help="time or cost: which frontier point is best")] = "time",
         write: Annotated[Path | None, typer.Option(help="write the best layout as a spec (YAML)")] = None,
         plot: Annotated[Path | None, typer.Option(help="time vs cost scatter with the frontier (PNG)")] = None,
         explain: Annotated[bool, typer.Option(help="why the best layout beats the runner-up, term by term")]
         = False,
         compute: Annotated[str | None, typer.Option(help="compute-optimal sizing for this many FLOPs, e.g. 5.8e23")]
         = None, days: Annotated[float | None, typer.Option(help="with --budget and one --gpu: the run's length")]
         = None) -> None:
    """Search every GPU type, count and parallel layout; print the time/cost Pareto frontier (or size a model)."""
    from llmspec.spec.loading import dump_spec, load_spec
    from llmspec.spec.units import parse_duration

    if plot is not None:
        check_writable(plot)
    if write is not None:
        check_writable(write, "--write", (".yaml", ".yml"))
    if budget is not None and not budget > 0:
        raise LLMSpecError(f"--budget {budget:g}: must be a positive number of USD")
    if compute is not None or (spec is None and budget is not None):
        from llmspec.planner.compute_optimal import compute_optimal_report

        result = compute_optimal_report(spec, set_ or [], compute, budget, gpu, days)
        if write:
            write_text(write, dump_spec(result.spec), "--write")
        if json_:
            print_json(result.to_json())
        else:
            from llmspec.cli.report import render_compute_optimal

            render_compute_optimal(result, new_console(), write)
        return
    if spec is None:
        raise LLMSpecError("size: give a SPEC to search layouts for, or --compute FLOPS to size a model")
    loaded = load_spec(spec, set_ or [])
    from llmspec.planner.layout_search import search

    gpus = [g.strip() for g in gpu.split(",") if g.strip()] if gpu else None
    try:
        deadline_days = parse_duration(deadline) / 86400 if deadline else None
    except ValueError as error:
        raise LLMSpecError(f"--deadline: {error}") from None
    result = search(loaded, gpus, max_gpus, deadline_days, budget, objective)
    if write:
        if result.best is None:
            raise LLMSpecError(f"--write {write}: no feasible layout to write")
        write_text(write, dump_spec(load_spec(spec, [*(set_ or []), *result.best.sets()])), "--write")
    if plot is not None:
        from llmspec.cli.plots import plot_size

        plot_size(result, plot, loaded.name)
    why = None
    if explain:
        from llmspec.planner.size_explain import explain as explain_best

        why = explain_best(loaded, result)
    if json_:
        print_json({**result.to_json(), **({"explain": why.to_json() if why else None} if explain else {})})
        return
    from llmspec.cli.report import render_size, render_size_explanation

    render_size(result, loaded, new_console(), set_)
    if why is not None:
        render_size_explanation(why, new_console())
