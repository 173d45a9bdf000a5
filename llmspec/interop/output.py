"""The folders ``import-hf`` and ``export-hf`` write: everything is rendered before anything is written, and no file
is replaced that the command did not write itself (a user's config.json, a spec.yaml edited since) unless forced.

As ``llmspec build`` does, each command keeps a manifest of what it wrote in the folder (name → fingerprint): a
file whose fingerprint still matches is the command's own and is replaced; any other file of the same name is
refused in one line, before anything is written. A run directory (``llmspec run`` wrote it) is refused whole: its
spec.yaml, tokenizer and checkpoints belong together. A file the previous write listed and this one does not (an
``adapter/`` of an earlier LoRA export, a chat_template.jinja that transformers would prefer to the new tokenizer
config) is removed when unedited, so the folder never mixes two exports.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmspec.compile.build import check_output_dir
from llmspec.errors import LLMSpecError
from llmspec.files import read_manifest, replaced_atomically, write_atomic

# Files larger than this are fingerprinted by size and modification time: hashing gigabytes of weights would cost
# more than the check is worth, and no one edits a safetensors file in place.
_HASHED_BYTES = 64 * 2**20
# What marks a folder as `llmspec run`'s (any one of them).
RUN_MARKERS = ("job.json", "metrics.jsonl", "checkpoints")


@dataclass(frozen=True)
class Tensors:
    """A safetensors file to write: its tensors and header metadata."""

    tensors: dict[str, Any]
    metadata: dict[str, str]


# A file to write: its text, its bytes, a file to copy, or tensors.
Content = str | bytes | Path | Tensors


def manifest_name(command: str) -> str:
    return f".llmspec-{command}.json"


def fingerprint(path: Path) -> str:
    size = path.stat().st_size
    if size > _HASHED_BYTES:
        return f"size:{size}:mtime:{path.stat().st_mtime_ns}"
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(out: Path, command: str) -> dict[str, str]:
    return read_manifest(out / manifest_name(command))


def _same_content(path: Path, content: Content) -> bool:
    """Whether ``path`` already holds exactly ``content`` (then replacing it loses nothing)."""
    if isinstance(content, Tensors):
        return False
    if isinstance(content, Path):
        if path.stat().st_size != content.stat().st_size:
            return False
        content = content.read_bytes()
    data = content.encode() if isinstance(content, str) else content
    return path.stat().st_size == len(data) and path.read_bytes() == data


def check_output(out: Path, names: list[str] | dict[str, Content], command: str, force: bool = False,
                 inputs: tuple[Path, ...] = ()) -> None:
    """Refuse, before anything is written, an output folder that is an input's, a run directory, or holds a file of
    one of ``names`` that ``command`` did not write (or that was edited since); ``force`` lets both through."""
    check_output_dir(out, inputs)
    if force or not out.is_dir():
        return
    marker = next((m for m in RUN_MARKERS if (out / m).exists()), None)
    if marker is not None:
        raise LLMSpecError(f"-o {out}: is a run directory (it holds {marker}); choose another directory, or "
                           "--force writes into it (nothing was written)")
    written = _manifest(out, command)
    for name in names:
        path = out / name
        if not path.exists():
            continue
        if path.is_dir() or path.is_symlink():
            raise LLMSpecError(f"{path}: is in the way (not a file written by llmspec {command}); --force replaces "
                               "it, or choose another directory (nothing was written)")
        if isinstance(names, dict) and _same_content(path, names[name]):
            continue
        if written.get(name) != fingerprint(path):
            how = "edited since llmspec" if name in written else "not written by llmspec"
            raise LLMSpecError(f"{path}: {how} {command}; --force replaces it, or choose another directory "
                               "(nothing was written)")


def write_output(out: Path, files: dict[str, Content], command: str, force: bool = False,
                 inputs: tuple[Path, ...] = ()) -> list[Path]:
    """Write ``files`` (name relative to ``out`` → content) into ``out``, each atomically, after ``check_output``;
    record them in the command's manifest; remove the files the previous write listed and this one does not,
    where unedited. Returns the paths written, in order."""
    check_output(out, files, command, force, inputs)
    written = _manifest(out, command)
    stale = [name for name, mark in written.items() if name not in files and (out / name).is_file()
             and fingerprint(out / name) == mark]
    record = {name: mark for name, mark in written.items() if name not in stale}
    paths = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            path = out / name
            if force and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            _write(path, content)
            record[name] = fingerprint(path)
            paths.append(path)
            # kept current after each file: a write cut short still knows every file it wrote as its own
            write_atomic(out / manifest_name(command), json.dumps(record, indent=1, sort_keys=True) + "\n")
        for name in stale:
            (out / name).unlink()
            if (out / name).parent != out and not any((out / name).parent.iterdir()):
                (out / name).parent.rmdir()
            record.pop(name, None)
        write_atomic(out / manifest_name(command), json.dumps(record, indent=1, sort_keys=True) + "\n")
    except OSError as error:
        raise LLMSpecError(f"{out}: cannot write ({error.strerror or error})") from None
    return paths


def _write(path: Path, content: Content) -> None:
    if isinstance(content, Tensors):
        from safetensors.torch import save_file

        with replaced_atomically(path) as tmp:
            save_file({k: v.contiguous() for k, v in content.tensors.items()}, tmp, metadata=content.metadata)
    elif isinstance(content, Path):
        with replaced_atomically(path) as tmp:
            shutil.copyfile(content, tmp)
    elif isinstance(content, bytes):
        with replaced_atomically(path) as tmp:
            tmp.write_bytes(content)
    else:
        write_atomic(path, content)
