"""DeepSpeed's CPU all-reduce (its shm comm op) gives every rank a shared-memory buffer,
``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`` (66 MB in DeepSpeed 0.19), and never unlinks it:
each CPU run left its ranks' buffers in RAM until the machine ran out of memory (345 runs filled 23 GB here).
Each rank removes its own when it ends, and ``llmspec run`` removes what a killed rank left, by the job's port.
"""

from __future__ import annotations

import os
from pathlib import Path

SHM = Path("/dev/shm")


def remove_allreduce_buffers(port: str | int, rank: str | int = "*") -> None:
    """Unlink this user's buffers of the job on ``port`` (one rank's, or every rank's). Processes that still map
    them keep their memory until they exit; the names are gone either way."""
    if not SHM.is_dir():
        return
    for path in SHM.glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_{rank}"):
        path.unlink(missing_ok=True)
