"""Checkpoints: written to a temporary file, synced, then renamed, so a crash or a full disk never leaves a
half-written checkpoint where a good one was. Loaded with ``weights_only=True``."""

from __future__ import annotations

import os
import re
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


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a damaged file is the user's input error
        raise LLMSpecError(f"{path}: cannot read checkpoint ({type(error).__name__}: {error})") from None
