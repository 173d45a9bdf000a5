"""The verb table: every ``llmspec`` command, each a thin shell (one small module per verb) over the Python API.

Heavy imports (rich tables, sympy, matplotlib, torch) happen inside the commands that need them, so that
``llmspec plan SPEC --json`` stays well under half a second.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from llmspec.cli import build, catalog, explain, generate, interop, measure, plan, prepare, run, size, validate
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
    ("prepare", prepare.prepare),
    ("run", run.run),
    ("generate", generate.generate),
    ("size", size.size),
    ("schema", catalog.schema),
    ("specs", catalog.specs),
]
for name, command in VERBS:
    app.command(name)(user_errors(command))


def main() -> None:
    """The console script: a usage mistake (an unknown option, a value typer refuses) is one line and exit 2, as every
    other bad input is, instead of typer's boxed usage text."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # typer's own click

    try:
        code = app(prog_name="llmspec", standalone_mode=False)
    except NoArgsIsHelpError as err:  # `llmspec` alone: the help, as before
        err.show()
        code = err.exit_code
    except UsageError as err:
        where = f"{err.ctx.command_path}: " if err.ctx is not None else ""
        print(f"error: {where}{err.format_message()}", file=sys.stderr)
        code = 2
    except ClickException as err:
        print(f"error: {err.format_message()}", file=sys.stderr)
        code = err.exit_code
    except typer.Abort:  # end of input at a prompt
        print("aborted", file=sys.stderr)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
