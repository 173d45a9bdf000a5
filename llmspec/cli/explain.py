"""``llmspec explain``: each planner formula beside its value for a spec."""

from __future__ import annotations

from typing import Annotated

import typer

from llmspec.cli.common import JsonOpt, SetOpt, SpecArg, load, new_console, print_json


def explain(spec: SpecArg, quantity: Annotated[str | None, typer.Argument(help="e.g. memory_activations")] = None,
            set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Each planner formula (sympy, pretty-printed) beside its value for SPEC."""
    from llmspec.planner.explain import explain as make_explanations
    from llmspec.planner.training import plan as make_plan

    items = make_explanations(make_plan(load(spec, set_), alternatives=False), quantity)
    if json_:
        print_json([item.__dict__ for item in items])
        return
    console = new_console()
    for item in items:
        console.print(f"[bold cyan]{item.name}[/] [dim]({item.group})[/] — {item.doc}")
        console.print(item.formula, highlight=False)
        if item.expanded and item.expansion_readable:
            console.print("[dim]expanded to inputs:[/]")
            console.print(item.expanded, highlight=False)
        elif item.expanded:
            console.print(f"[dim]expanded to inputs:[/] {len(item.expanded):,} characters, too long to read here "
                          f"(--json holds it); explain its parts: {', '.join(item.parts)}", highlight=False)
        if item.expanded:
            console.print("[dim]inputs:[/] " + ", ".join(f"{k} = {v:g}" for k, v in item.inputs.items()))
        value = f"{int(item.value):,}" if item.value.is_integer() and abs(item.value) < 1e18 else f"{item.value:,.6g}"
        console.print(f"[bold]= {value}[/] {item.unit}\n")
