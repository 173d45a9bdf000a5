"""Errors a user can cause. The CLI prints them as one line each (never a traceback) and exits with code 2."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: where (a field path like ``model.n_heads``), what, and the YAML line."""

    path: str
    message: str
    line: int | None = None
    source: str | None = None  # file name, or "--set" for a command-line override

    def __str__(self) -> str:
        where = self.path or "<spec>"
        if self.source and self.line:
            where = f"{self.source}:{self.line}: {where}"
        elif self.source:
            where = f"{self.source}: {where}"
        return f"{where}: {self.message}"


class LLMSpecError(Exception):
    """Base class for errors caused by user input; ``str(err)`` is the message to show."""

    exit_code = 2


class DoesNotFitError(LLMSpecError):
    """A valid spec whose plan does not fit its device: exit 3, so that scripts can test fit."""

    exit_code = 3


class SpecError(LLMSpecError):
    """A spec failed to load or validate; carries every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ConsistencyError(Exception):
    """Raised from inside pydantic validation for cross-field problems.

    Not a ValueError on purpose: pydantic would wrap a ValueError and lose the field paths we computed.
    """

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))
