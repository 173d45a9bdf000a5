"""The builtin corpus, and what every reader of data files shares (the error type, a file's head, JSON records).

The builtin corpus needs no download: the docstrings of this Python's standard library (about 1.6 MB of English
prose about programming), extracted in a fixed order so every run on the same Python sees the same text. Pretraining
sources are read by ``llmspec.data.sources``, fine-tuning records by ``llmspec.data.instructions``.
"""

from __future__ import annotations

import ast
import codecs
import json
import sysconfig
from pathlib import Path

from llmspec.errors import LLMSpecError

BUILTIN = "builtin"
_SKIPPED_DIRS = {"site-packages", "test", "tests", "idlelib", "turtledemo", "lib2to3"}
HEAD_BYTES = 1 << 16  # what a cheap check reads of a file: enough to see a binary or misnamed file


class DataError(LLMSpecError):
    pass


def builtin_documents() -> list[str]:
    """Docstrings (modules, classes, functions; 40+ characters) of the standard library, in path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    documents = []
    for path in sorted(root.rglob("*.py")):
        if _SKIPPED_DIRS.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node)
                if text and len(text) >= 40:
                    documents.append(text)
    return documents


def read_head(path: Path, size: int = HEAD_BYTES, label: str = "") -> tuple[bytes, bool]:
    """The first ``size`` bytes of a file and whether they are all of it; one line naming the file (after
    ``label``) when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(size)
            return head, not handle.read(1)
    except OSError as error:
        raise DataError(f"{label}{path}: cannot read it ({error.strerror or error})") from None


def head_text(path: Path, head: bytes, whole: bool) -> str:
    """A file's first bytes as text: a character cut off at the end of the head is not an error (only when the
    whole file was read is the decoding final)."""
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(head, final=whole)
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start})") from None


def whole_lines(text: str, whole: bool) -> list[str]:
    """The lines of a file's head, without the last one when the head stops inside it."""
    lines = text.splitlines()
    return lines if whole else lines[:-1]


def json_record(path: Path, number: int, line: str) -> object:
    """One JSON Lines record; a line that is not JSON is named by file and line."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
