"""Checkpoints: written to a temporary file, synced, then renamed, so a crash or a full disk never leaves a
half-written checkpoint where a good one was. Loaded with ``weights_only=True``.

A checkpoint that cannot be read (damaged on disk, cut by a copy) is named on one line, with the previous one
when that is intact; ``--resume`` continues from the newest readable one (``resumable_checkpoint``)."""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from llmspec.errors import LLMSpecError
from llmspec.files import replaced_atomically

_NAME = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:08d}.pt"


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; keep the newest ``keep`` checkpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, step)
    try:
        with replaced_atomically(path) as tmp, open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise LLMSpecError(f"{path}: checkpoint not written ({error.strerror or error}); the previous checkpoint "
                           "is intact") from None
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def latest_checkpoint(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def _load(path: Path, mmap: bool = False) -> dict[str, Any]:
    """torch.load, safely (``weights_only``), without torch's warnings about pickle protocols; ``mmap``: the
    tensors are mapped, not read (a cheap check that the file is whole)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def unreadable(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be read, in a few words; None when it can (its structure is read and
    its tensors mapped, not loaded: cheap even for a large one)."""
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut or foreign file is none
        return "truncated, or not a checkpoint"
    try:
        state = _load(path, mmap=True)
    except Exception as error:  # noqa: BLE001 - whatever torch raises, the file is damaged
        return f"damaged: {type(error).__name__}"
    return None if isinstance(state, dict) else "not a checkpoint: holds no state"


def resumable_checkpoint(directory: Path) -> tuple[Path, list[tuple[Path, str]]]:
    """The newest checkpoint in ``directory`` that can be read, and the newer ones that cannot (each with why).
    Refuses (one line) when none can be read."""
    skipped: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(directory)):
        why = unreadable(path)
        if why is None:
            return path, skipped
        skipped.append((path, why))
    if not skipped:
        raise LLMSpecError(f"{directory}: no checkpoint to resume from")
    path, why = skipped[0]
    raise LLMSpecError(f"{path}: unreadable ({why}), and no earlier checkpoint is intact; there is nothing to "
                       "resume from (--out another directory trains anew)")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``; one line when it cannot be read, naming the previous one when that is intact."""
    try:
        state = _load(path)
    except Exception as error:  # noqa: BLE001 - a damaged file is the user's input error
        why = unreadable(path) or f"damaged: {type(error).__name__}"
        raise LLMSpecError(f"{path}: unreadable ({why}); {_previous(path)}") from None
    if not isinstance(state, dict):
        raise LLMSpecError(f"{path}: unreadable (not a checkpoint: holds no state); {_previous(path)}")
    return state


def _previous(path: Path) -> str:
    """What a message about an unreadable checkpoint says of the one before it."""
    earlier = [p for p in list_checkpoints(path.parent) if p.name < path.name]
    if earlier and unreadable(earlier[-1]) is None:
        return f"the previous checkpoint, {earlier[-1].name}, is intact (`llmspec run --resume` continues from it)"
    return "no earlier checkpoint is intact"
