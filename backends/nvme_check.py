"""What the ``deepspeed`` engine needs of ``parallelism.nvme_path`` before it offloads to NVMe: a folder given (no
path is ever guessed), there on this node, writable, and with room for what the plan puts on NVMe per node. Read
by the engine's refusals (``deepspeed_limits``), so `run` and `run --dry-run` refuse it before anything starts."""

from __future__ import annotations

import shutil
from pathlib import Path

from llmspec.files import cannot_create_in
from llmspec.planner.training import plan
from llmspec.spec.schema import Spec
from llmspec.spec.units import fmt_bytes
from llmspec.train.limits import Refusal

FIELD = "parallelism.nvme_path"


def offloads_to_nvme(spec: Spec) -> list[str]:
    """The spec's offload fields that name NVMe (empty: nothing goes to NVMe)."""
    par = spec.parallelism
    return [f"parallelism.{name}" for name, where in (("offload_optimizer", par.offload_optimizer),
                                                       ("offload_params", par.offload_params)) if where == "nvme"]


def nvme_refusals(spec: Spec) -> list[Refusal]:
    """Why the engine cannot offload to ``parallelism.nvme_path`` on this node (empty: it can, or the spec does not
    offload to NVMe). Plans the spec (rare: NVMe offload only) for the bytes it puts there."""
    fields = offloads_to_nvme(spec)
    if not fields:
        return []
    path = spec.parallelism.nvme_path
    if not path:
        return [Refusal(FIELD, None, "DeepSpeed swaps what it offloads to a folder on each node's NVMe, and none is "
                        "ever guessed", f"set {FIELD} to one (it must exist, be writable and hold the plan's NVMe "
                        "bytes per node)", said=f"{fields[0]} nvme without {FIELD}", verdict="not run")]
    # the plan's NVMe bytes only once the folder is usable (planning costs a second)
    problem = _unusable(Path(path)) or _too_small(Path(path), plan(spec, alternatives=False).nvme_memory)
    if problem is None:
        return []
    why, instead = problem
    return [Refusal(FIELD, path, why, instead, verdict="not run")]


def _too_small(folder: Path, needed: int) -> tuple[str, str] | None:
    """(why, what to do) when the file system under ``folder`` has less free space than ``needed`` bytes."""
    free = shutil.disk_usage(folder).free
    if free >= needed:
        return None
    return (f"{fmt_bytes(free)} free there on this node, but the plan puts {fmt_bytes(needed)} per node on NVMe",
            "free space there or name a larger NVMe")


def _unusable(folder: Path) -> tuple[str, str] | None:
    """(why, what to do) when ``folder`` cannot take DeepSpeed's swap files, else None."""
    if not folder.exists():
        return "does not exist on this node", "create it (on every node) or name another folder"
    if not folder.is_dir():
        return "is not a folder on this node", "name a folder"
    error = cannot_create_in(folder)
    if error is not None:
        return (f"no file can be created there on this node ({error.strerror or error})",
                "make it writable or name another folder")
    return None
