"""Read a corpus: text files, JSON Lines with a ``text`` field, directories of either, or the builtin one.

The builtin corpus needs no download: the docstrings of this Python's standard library (about 1.6 MB of English
prose about programming), extracted in a fixed order so every run on the same Python sees the same text.

``check_corpus`` makes the cheap checks (each source exists, each file is readable UTF-8 text of an accepted kind,
its first records parse, there is some text) without reading the whole corpus: ``run --dry-run`` makes them, and so
does a run before it reads everything.
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
SUFFIXES = (".txt", ".jsonl")
ACCEPTED = 'builtin, .txt files, .jsonl files (one {"text": ...} object a line), or directories of them'
# what the cheap check reads of each file: enough to see a binary or misnamed file and the first records
HEAD_BYTES = 1 << 16
HEAD_RECORDS = 100
# formats a user may hand a pretraining corpus by mistake, named in the refusal
_KINDS = {".parquet": "Parquet", ".arrow": "Arrow", ".csv": "CSV", ".tsv": "TSV", ".json": "a JSON document",
          ".gz": "a gzip archive", ".zip": "a zip archive"}


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


def _sources(corpus: str | list[str]) -> list[str]:
    return [corpus] if isinstance(corpus, str) else list(corpus)


def corpus_files(source: str, base: Path | None = None) -> list[Path]:
    """The files one ``data.corpus`` source names, in a deterministic order: itself (a .txt or .jsonl file), or the
    .txt and .jsonl files under it (a directory). Relative paths resolve against ``base``."""
    path = Path(source).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.exists():
        raise DataError(f"data.corpus: {source} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"data.corpus: {source} holds no .txt or .jsonl files (a pretraining corpus is "
                            f"{ACCEPTED})")
        return files
    if path.suffix not in SUFFIXES:
        kind = _KINDS.get(path.suffix.lower(), f"a {path.suffix} file" if path.suffix else "a file without a suffix")
        hint = " (fine-tuning data, post_training, reads Parquet and Arrow)" if path.suffix in (".parquet",
                                                                                              ".arrow") else ""
        raise DataError(f"data.corpus: {source}: {kind} is not a pretraining corpus, which is {ACCEPTED}{hint}")
    return [path]


def read_documents(corpus: str | list[str], base: Path | None = None) -> list[str]:
    """Every document of the corpus, in a deterministic order. Relative paths resolve against ``base``."""
    sources = _sources(corpus)
    documents: list[str] = []
    for source in sources:
        if source == BUILTIN:
            documents += builtin_documents()
            continue
        for file in corpus_files(source, base):
            documents += _read_file(file)
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise DataError(f"data.corpus: no text in {', '.join(map(str, sources))}")
    return documents


def check_corpus(corpus: str | list[str], base: Path | None = None) -> None:
    """The cheap checks of a corpus, reading at most the first ``HEAD_BYTES`` of each file: every source exists,
    every file is readable UTF-8 text (not binary) of an accepted kind, its first records parse, and some text is
    there. Raises what ``read_documents`` would raise for the same fault."""
    sources = _sources(corpus)
    text = BUILTIN in sources
    for source in sources:
        if source == BUILTIN:
            continue
        for file in corpus_files(source, base):
            text = _check_head(file) or text
    if not text:
        raise DataError(f"data.corpus: no text in {', '.join(map(str, sources))}")


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


def _check_head(path: Path) -> bool:
    """Check the start of one file; whether it may hold text (a file longer than what was read may)."""
    head, whole = read_head(path)
    text = head_text(path, head, whole)
    _refuse_binary(path, text)
    if path.suffix != ".jsonl":
        return bool(text.strip()) or not whole
    documents = _records(path, whole_lines(text, whole)[:HEAD_RECORDS])
    return any(d.strip() for d in documents) or not whole


def _refuse_binary(path: Path, text: str) -> None:
    """Refuse a file that decodes as UTF-8 but holds NUL characters: binary data, whatever its name."""
    at = text.find("\0")
    if at >= 0:
        raise DataError(f"{path}: binary, not text (a NUL character at {at}); a pretraining corpus is {ACCEPTED}")


def _read_file(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({error.strerror or error})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start})") from None
    _refuse_binary(path, text)
    if path.suffix != ".jsonl":
        return [text]
    return _records(path, text.splitlines())


def _records(path: Path, lines: list[str]) -> list[str]:
    """The ``text`` of each JSON Lines record (blank lines skipped); errors name file:line."""
    documents = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = json_record(path, number, line)
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f'{path}:{number}: expected an object with a "text" string')
        documents.append(record["text"])
    return documents
