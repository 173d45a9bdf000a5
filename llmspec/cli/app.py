"""The verb table: every ``llmspec`` command, each a thin shell (one small module per verb) over the Python API.

Heavy imports (rich tables, sympy, matplotlib, torch) happen inside the commands that need them, so that
``llmspec plan SPEC --json`` stays well under half a second.
"""

from __future__ import annotations

from typing import Annotated

import typer

from llmspec.cli import build, catalog, explain, generate, interop, measure, plan, run, size, validate
from llmspec.cli.common import user_errors

app = typer.Typer(no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False,
                  help="One YAML spec for an LLM training job: plan it, build it, measure it.")


def _version(value: bool) -> None:
    if value:
        from llmspec import __version__

        print(f"llmspec {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                   help="print the version and exit")] = False) -> None:
    """One YAML spec for an LLM training job: plan it, build it, measure it."""

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
