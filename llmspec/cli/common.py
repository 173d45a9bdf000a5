"""What every command shares: argument types, the one-line error contract, console and JSON output."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from llmspec.errors import LLMSpecError

SpecArg = Annotated[str, typer.Argument(help="a spec file, or the name of a spec in specs/ (see `llmspec specs`)")]
SetOpt = Annotated[list[str], typer.Option("--set", help="override a field: section.field=value (repeatable)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def user_errors(command):
    """Turn errors a user caused into one line each on stderr and exit code 2 (never a traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LLMSpecError as err:
            for line in str(err).splitlines():
                print(f"error: {line}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper


def new_console():
    from rich.console import Console

    return Console()


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=float))


def check_writable(path: Path) -> None:
    if path.suffix.lower() != ".png":
        raise LLMSpecError(f"--plot {path}: expected a .png file name")
    if not path.parent.exists():
        raise LLMSpecError(f"--plot {path}: folder {path.parent} does not exist")
