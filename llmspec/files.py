"""Files written whole or not at all: each writer gets its own temporary file beside the target and renames it
into place, so a crash, a full disk or Ctrl-C leaves the old file or the new one, and two processes filling the
same cache entry at once (DeepSpeed's ranks, parallel test workers, two runs of one corpus) never trip over one
temporary name."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced_atomically(path: Path, mode: int = 0o644) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` to write; when the block ends without error it replaces ``path``
    (with permission bits ``mode``); otherwise it is removed and ``path`` is left as it was."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)  # mkstemp creates 0600; what we write is read like every other file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str, executable: bool = False) -> Path:
    with replaced_atomically(path, 0o755 if executable else 0o644) as tmp:
        tmp.write_text(text)
    return path


def read_manifest(path: Path) -> dict[str, str]:
    """What a command recorded it wrote into a folder (``build``, ``import-hf``, ``export-hf``: file name →
    fingerprint); empty when the manifest is missing or unreadable (then nothing there counts as the command's)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def cannot_create_in(folder: Path) -> OSError | None:
    """Why no file can be created in ``folder``, or None. The only sure test is to create one: permissions,
    read-only mounts, ACLs and virtual file systems (/proc) all refuse it."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".llmspec-probe."):
            return None
    except OSError as error:
        return error
