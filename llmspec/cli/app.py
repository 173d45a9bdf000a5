"""The verb table: every ``llmspec`` command, each a thin shell (one small module per verb) over the Python API.

Heavy imports (rich tables, sympy, matplotlib, torch) happen inside the commands that need them, so that
``llmspec plan SPEC --json`` stays well under half a second.
"""

from __future__ import annotations

import typer

from llmspec.cli import build, catalog, explain, generate, interop, measure, plan, run, size, validate
from llmspec.cli.common import user_errors

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="One YAML spec for an LLM training job: plan it, build it, measure it.")

VERBS = [
    ("plan", plan.plan),
    ("explain", explain.explain),
    ("validate", validate.validate),
    ("build", build.build),
    ("measure", measure.measure),
    ("import-hf", interop.import_hf),
    ("export-hf", interop.export_hf),
    ("run", run.run),
    ("generate", generate.generate),
    ("size", size.size),
    ("schema", catalog.schema),
    ("specs", catalog.specs),
]
for name, command in VERBS:
    app.command(name)(user_errors(command))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
