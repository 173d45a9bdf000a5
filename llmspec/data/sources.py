"""The sources of a pretraining corpus, read as a stream of documents in a fixed order.

A source (``data.sources[i]``, or ``data.corpus``: one source of weight 1) is a file, a glob, a directory (its files
of the accepted formats, recursively, in path order) or a Hugging Face ``datasets`` directory written by
``save_to_disk``. Formats: .txt (a file is one document), JSON Lines (plain, gzip or zstd; one object a line, its
``text_field`` the document), Parquet and Arrow (the ``text_field`` column). Parquet and Arrow are read with
pyarrow (Hugging Face ``datasets`` for its own directories) a record batch at a time, so memory does not grow with
the corpus. Empty documents (and null values) are skipped.

``check`` makes the cheap checks before any work (every path resolves to files, each opens as its format, its
first records hold the text field); a bad record later in a file is found while it streams. Every fault is one
line naming the source, the file and the record.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from llmspec.data.corpus import BUILTIN, DataError, builtin_documents, head_text, read_head
from llmspec.spec.data import DataSpec

SUFFIXES = {".txt": "txt", ".jsonl": "jsonl", ".jsonl.gz": "jsonl.gz", ".jsonl.zst": "jsonl.zst",
            ".jsonl.zstd": "jsonl.zst", ".parquet": "parquet", ".arrow": "arrow"}
ACCEPTED = ("builtin, .txt files, .jsonl files (or .jsonl.gz, .jsonl.zst), .parquet, .arrow, datasets save_to_disk "
            "directories, or directories of them")
# formats a user may hand a pretraining corpus by mistake, named in the refusal
_KINDS = {".csv": "CSV", ".tsv": "TSV", ".json": "a JSON document", ".gz": "a gzip archive", ".zip": "a zip archive"}
HEAD_RECORDS = 100  # records the cheap check reads of each file
TABLE_BATCH = 1024  # Parquet/Arrow rows read at a time
DATASET = "dataset"

try:
    from zstandard import ZstdError as _ZstdError
except ImportError:  # pragma: no cover - zstandard is a dependency; without it .jsonl.zst fails on opening
    class _ZstdError(Exception):
        pass  # the format of a save_to_disk directory (read with Hugging Face datasets)


@dataclass(frozen=True)
class Source:
    """One source resolved to its files in reading order (the builtin corpus is a file of format ``builtin``)."""
    label: str  # where the spec names it: data.sources[2], data.corpus
    path: str  # as the spec gives it
    weight: float
    text_field: str
    files: tuple[tuple[Path, str], ...]  # (file or dataset directory, format)

    @property
    def builtin(self) -> bool:
        return any(fmt == BUILTIN for _, fmt in self.files)

    def size(self, builtin: Callable[[], list[str]]) -> int:
        """Bytes on disk (what the progress bar counts); the builtin corpus's text."""
        return sum(_builtin_size(builtin) if fmt == BUILTIN else _disk_size(path) for path, fmt in self.files)


def resolve(data: DataSpec, base: Path | None = None) -> list[Source]:
    """The spec's sources with their files: ``data.sources``, else each entry of ``data.corpus`` (weight 1 between
    them all, as one corpus). Relative paths resolve against ``base``. A path that names nothing is refused."""
    if data.sources is None:  # one source, its entries' files end to end (as data.corpus always read)
        corpus = [data.corpus] if isinstance(data.corpus, str) else list(data.corpus)
        files = tuple(f for path in corpus for f in _files("data.corpus", path, None, base))
        return [Source("data.corpus", ", ".join(corpus), 1.0, "text", files)]
    return [Source(f"data.sources[{i}]", s.path, s.weight, s.text_field, tuple(_files(f"data.sources[{i}]", s.path,
                                                                                        s.format, base)))
            for i, s in enumerate(data.sources)]


def format_of(path: Path) -> str | None:
    """The format a file's name says, or None."""
    name = path.name.lower()
    return next((fmt for suffix, fmt in sorted(SUFFIXES.items(), key=lambda kv: -len(kv[0]))
                 if name.endswith(suffix)), None)


def _is_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _files(label: str, given: str, fmt: str | None, base: Path | None) -> list[tuple[Path, str]]:
    if given == BUILTIN:
        return [(Path(BUILTIN), BUILTIN)]
    path = Path(given).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if glob.has_magic(str(path)):
        matches = [Path(p) for p in sorted(glob.glob(str(path), recursive=True))]
        if not matches:
            raise DataError(f"{label}: {given} matches no files")
    elif not path.exists():
        raise DataError(f"{label}: {given} does not exist")
    elif path.is_dir() and _is_dataset(path):
        return [(path, DATASET)]
    elif path.is_dir():
        matches = sorted(p for p in path.rglob("*") if p.is_file())
        matches = [p for p in matches if (fmt or format_of(p)) and (fmt is None or format_of(p) in (fmt, None))]
        if not matches:
            raise DataError(f"{label}: {given} holds no files of an accepted format ({ACCEPTED})")
    else:
        matches = [path]
    files = []
    for match in matches:
        if match.is_dir():
            if _is_dataset(match):
                files.append((match, DATASET))
            continue
        kind = fmt or format_of(match)
        if kind is None:
            suffix = match.suffix.lower()
            named = _KINDS.get(suffix, f"a {suffix} file" if suffix else "a file without a suffix")
            raise DataError(f"{label}: {match}: {named} is not a pretraining corpus, which is {ACCEPTED} (or set "
                            f"{label}.format)")
        files.append((match, kind))
    if not files:
        raise DataError(f"{label}: {given} matches no files of an accepted format ({ACCEPTED})")
    return files


def _disk_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# ---- reading ------------------------------------------------------------------------------------------------------

Position = Callable[[], int]  # bytes of the file read so far (for the progress bar)


def documents(source: Source, builtin: Callable[[], list[str]] | None = None) -> Iterator[tuple[str, int]]:
    """Every non-empty document of a source in order, each with the source's bytes read so far (on disk).
    ``builtin``: gives the builtin corpus's documents (cached by the caller)."""
    builtin = builtin or builtin_documents
    before = 0
    for path, fmt in source.files:
        for text, position in _read_builtin(builtin) if fmt == BUILTIN else _read(path, fmt, source.text_field):
            if text.strip():
                yield text, before + position
        before += _builtin_size(builtin) if fmt == BUILTIN else _disk_size(path)


def _read_builtin(builtin: Callable[[], list[str]]) -> Iterator[tuple[str, int]]:
    done = 0
    for text in builtin():
        done += len(text.encode())
        yield text, done


def _builtin_size(builtin: Callable[[], list[str]]) -> int:
    return sum(len(text.encode()) for text in builtin())


def _read(path: Path, fmt: str, field: str, limit: int | None = None) -> Iterator[tuple[str, int]]:
    """(text, bytes of the file read) for each record (``limit``: the first records only)."""
    try:
        if fmt == "txt":
            yield _read_text(path), _disk_size(path)
        elif fmt.startswith("jsonl"):
            yield from _read_jsonl(path, fmt, field, limit)
        else:
            yield from _read_table(path, fmt, field, limit)
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({getattr(error, 'strerror', None) or error})") from None


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start})") from None
    _refuse_binary(path, text)
    return text


def _refuse_binary(path: Path, text: str) -> None:
    """Refuse a file that decodes as UTF-8 but holds NUL characters: binary data, whatever its name."""
    at = text.find("\0")
    if at >= 0:
        raise DataError(f"{path}: binary, not text (a NUL character at {at}); a pretraining corpus is {ACCEPTED}")


def _open_jsonl(raw, fmt: str):
    if fmt == "jsonl.gz":
        return gzip.GzipFile(fileobj=raw)
    if fmt == "jsonl.zst":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
    return raw


def _read_jsonl(path: Path, fmt: str, field: str, limit: int | None) -> Iterator[tuple[str, int]]:
    with open(path, "rb") as raw:
        try:
            lines = _open_jsonl(raw, fmt)
            for number, line in enumerate(lines, 1):
                if limit is not None and number > limit:
                    return
                if not line.strip():
                    continue
                yield _json_text(path, number, line, field), raw.tell()
        except (EOFError, gzip.BadGzipFile, zlib.error, _ZstdError) as error:
            raise DataError(f"{path}: not a valid {fmt} file ({error})") from None


def _json_text(path: Path, number: int, line: bytes, field: str) -> str:
    try:
        record = json.loads(line)
    except UnicodeDecodeError as error:
        raise DataError(f"{path}:{number}: not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    value = record.get(field, ...) if isinstance(record, dict) else ...
    if value is None:  # a null text: an empty document, skipped as Parquet's nulls are
        return ""
    if not isinstance(value, str):
        raise DataError(f'{path}:{number}: expected an object with a "{field}" string')
    return value


def _read_table(path: Path, fmt: str, field: str, limit: int | None) -> Iterator[tuple[str, int]]:
    batches, rows = _table_batches(path, fmt, field)
    size, done = _disk_size(path), 0
    for batch in batches:
        for text in batch:
            done += 1
            if limit is not None and done > limit:
                return
            if text is not None:
                yield text, size * done // max(rows, 1)


def _table_batches(path: Path, fmt: str, field: str) -> tuple[Iterator[list], int]:
    """The text column's values, a batch at a time, and the number of rows."""
    import pyarrow as pa

    try:
        if fmt == DATASET:
            return _dataset_batches(path, field)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.ParquetFile(path)
            _check_column(path, table.schema_arrow, field)
            return (b.column(0).to_pylist() for b in table.iter_batches(TABLE_BATCH, columns=[field])), \
                table.metadata.num_rows
        reader = _arrow_reader(pa.memory_map(str(path)))
        _check_column(path, reader.schema, field)
        return _arrow_texts(reader, field), _arrow_rows(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as error:
        kind = "a Parquet file" if fmt == "parquet" else "an Arrow file" if fmt == "arrow" else "a datasets directory"
        raise DataError(f"{path}: not {kind} ({str(error).splitlines()[0][:200]})") from None


def _arrow_reader(source):
    import pyarrow as pa

    try:
        return pa.ipc.open_file(source)
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_stream(source)  # what datasets writes


def _arrow_texts(reader, field: str) -> Iterator[list]:
    batches = (reader.get_batch(i) for i in range(reader.num_record_batches)) if hasattr(reader, "get_batch") \
        else reader
    for batch in batches:
        yield batch.column(field).to_pylist()


def _arrow_rows(path: Path) -> int:
    import pyarrow as pa

    reader = _arrow_reader(pa.memory_map(str(path)))
    if hasattr(reader, "get_batch"):
        return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    return sum(batch.num_rows for batch in reader)


def _dataset_batches(path: Path, field: str) -> tuple[Iterator[list], int]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"{path}: a DatasetDict without a train split (splits: {', '.join(loaded)}); name the "
                            "split's directory")
        loaded = loaded["train"]
    _check_column(path, loaded.features.arrow_schema, field)
    column = loaded.select_columns([field]).with_format("arrow")
    return (column[i:i + TABLE_BATCH].column(0).to_pylist() for i in range(0, len(column), TABLE_BATCH)), len(column)


def _check_column(path: Path, schema, field: str) -> None:
    import pyarrow as pa

    if field not in schema.names:
        raise DataError(f'{path}: no column "{field}" (columns: {", ".join(schema.names)}); set text_field')
    kind = schema.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise DataError(f'{path}: column "{field}" holds {kind}, not text')


def check(sources: list[Source]) -> None:
    """The cheap checks: each file opens as its format and its first ``HEAD_RECORDS`` records hold text in the
    source's text field (Parquet and Arrow: the column is there and holds strings)."""
    for source in sources:
        text = source.builtin  # whether the source may hold text: some read, or more than was read
        for path, fmt in source.files:
            if fmt == BUILTIN:
                continue
            if not os.access(path, os.R_OK):
                raise DataError(f"{source.label}: {path}: cannot read it (permission denied)")
            if fmt == "txt":
                head, whole = read_head(path)
                _refuse_binary(path, head_text(path, head, whole))
                text = text or bool(head.strip()) or not whole
                continue
            records = list(_read(path, fmt, source.text_field, HEAD_RECORDS))
            text = text or any(t.strip() for t, _ in records) or len(records) == HEAD_RECORDS
        if not text:
            raise DataError(f"{source.label}: no text in {source.path}")


def fingerprint(source: Source, builtin_digest: Callable[[], str]) -> str:
    """What identifies a source's content without reading it all: each file's path, size, modification time and
    the digest of its first and last MiB (a corpus of terabytes is not hashed on every run); the builtin corpus's
    documents' digest."""
    digest = hashlib.sha256(json.dumps([source.path, source.text_field]).encode())
    for path, fmt in source.files:
        if fmt == BUILTIN:
            digest.update(builtin_digest().encode())
            continue
        for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
            stat = file.stat()
            digest.update(json.dumps([str(file.resolve()), fmt, stat.st_size, stat.st_mtime_ns]).encode())
            with open(file, "rb") as handle:
                digest.update(handle.read(1 << 20))
                handle.seek(max(0, stat.st_size - (1 << 20)))
                digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:20]
