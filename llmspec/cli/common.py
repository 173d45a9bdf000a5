"""What every command shares: argument types, the one-line error contract, console and JSON output."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from llmspec.errors import DoesNotFitError, LLMSpecError

SpecArg = Annotated[str, typer.Argument(help="a spec file, or the name of a spec in specs/ (see `llmspec specs`)")]
SetOpt = Annotated[list[str], typer.Option("--set", help="override a field: section.field=value (repeatable)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
HostfileOpt = Annotated[Path | None, typer.Option("--hostfile", help="DeepSpeed hostfile naming the nodes "
                                                  "(HOST slots=N per line): sets cluster.hosts")]


def load(spec: str, sets: list[str] | None):
    """The spec with its --set overrides; what the loader chose for the user (a shared GPU name's board) said on
    stderr, one ``note:`` line each, so that --json output stays clean."""
    from llmspec.spec.catalogue import choice_notice
    from llmspec.spec.loading import load_spec

    loaded = load_spec(spec, sets or [])
    gpu = loaded.cluster.gpu
    notice = choice_notice(gpu) if isinstance(gpu, str) else None
    if notice:
        print(f"note: {notice}", file=sys.stderr)
    return loaded


def load_with_hosts(spec: str, sets: list[str] | None, hostfile: Path | None):
    """The spec with its --set overrides, and a hostfile's hosts as cluster.hosts (slots checked)."""
    from llmspec.spec.hostfile import hosts_override
    from llmspec.spec.loading import load_spec

    loaded = load(spec, sets)
    if hostfile is None:
        return loaded
    hosts = hosts_override(hostfile, loaded.cluster.nodes, loaded.cluster.gpus_per_node)
    return load_spec(spec, [*(sets or []), hosts])


def user_errors(command):
    """Turn errors a user caused into one line each on stderr and exit code 2 (never a traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LLMSpecError as err:
            for line in str(err).splitlines():
                print(f"error: {line}", file=sys.stderr)
            raise typer.Exit(err.exit_code) from None

    return wrapper


def new_console():
    from rich.console import Console

    return Console()


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=float))


# Exit code for a valid spec that does not fit its device (plan, validate, run): scripts can test fit.
EXIT_DOES_NOT_FIT = DoesNotFitError.exit_code


def check_writable(path: Path, flag: str = "--plot", suffixes: tuple[str, ...] = (".png",)) -> None:
    """Refuse an output file the command could not write, before any work is done."""
    if suffixes and path.suffix.lower() not in suffixes:
        raise LLMSpecError(f"{flag} {path}: expected a {' or '.join(suffixes)} file name")
    if not path.parent.is_dir():
        raise LLMSpecError(f"{flag} {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise LLMSpecError(f"{flag} {path}: is a directory")
    from llmspec.compile.build import check_can_create_in

    check_can_create_in(path.parent, f"{flag} {path}")


def write_text(path: Path, text: str, flag: str) -> None:
    try:
        path.write_text(text)
    except OSError as error:
        raise LLMSpecError(f"{flag} {path}: not written ({error.strerror or error})") from None
