"""Read a corpus: text files, JSON Lines with a ``text`` field, directories of either, or the builtin one.

The builtin corpus needs no download: the docstrings of this Python's standard library (about 1.6 MB of English
prose about programming), extracted in a fixed order so every run on the same Python sees the same text.
"""

from __future__ import annotations

import ast
import json
import sysconfig
from pathlib import Path

from llmspec.errors import LLMSpecError

BUILTIN = "builtin"
_SKIPPED_DIRS = {"site-packages", "test", "tests", "idlelib", "turtledemo", "lib2to3"}


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


def read_documents(corpus: str | list[str], base: Path | None = None) -> list[str]:
    """Every document of the corpus, in a deterministic order. Relative paths resolve against ``base``."""
    sources = [corpus] if isinstance(corpus, str) else list(corpus)
    documents: list[str] = []
    for source in sources:
        if source == BUILTIN:
            documents += builtin_documents()
            continue
        path = Path(source).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.exists():
            raise DataError(f"data.corpus: {source} does not exist")
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl"))
        if not files:
            raise DataError(f"data.corpus: {source} holds no .txt or .jsonl files")
        for file in files:
            documents += _read_file(file)
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise DataError(f"data.corpus: no text in {', '.join(map(str, sources))}")
    return documents


def _read_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start})") from None
    if path.suffix != ".jsonl":
        return [text]
    documents = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f'{path}:{number}: expected an object with a "text" string')
        documents.append(record["text"])
    return documents
