"""``llmspec schema`` and ``llmspec specs``: what a spec may hold, and the named specs."""

from __future__ import annotations

from llmspec.cli.common import JsonOpt, new_console, print_json


def schema() -> None:
    """The spec's JSON Schema (for editors' YAML completion)."""
    from llmspec.spec.schema import Spec

    print_json(Spec.model_json_schema())


def specs(json_: JsonOpt = False) -> None:
    """List the named specs in specs/."""
    from llmspec.planner.training import plan as make_plan
    from llmspec.spec.loading import load_spec, named_specs

    rows = []
    for name, path in sorted(named_specs().items()):
        spec = load_spec(path)
        about = _first_sentence(path.read_text())
        rows.append({"name": name, "params": make_plan(spec, alternatives=False).params["total"],
                     "gpus": spec.cluster.gpus, "gpu": spec.cluster.device.name, "about": about})
    if json_:
        print_json(rows)
        return
    from rich.table import Table

    from llmspec.spec.units import fmt_count

    table = Table(show_edge=False)
    for column in ("name", "params", "cluster", "source"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], fmt_count(row["params"]), f"{row['gpus']} × {row['gpu']}", row["about"])
    new_console().print(table)


def _first_sentence(text: str) -> str:
    """The first sentence of a spec's leading comment block (which may run over several lines)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    comment = " ".join(lines)
    end = comment.find(". ")
    return comment if end < 0 else comment[:end + 1]
