"""Pre-flight: refuse, before any data is prepared, what `llmspec run` plans but cannot execute (what the method
and the engine refuse), and a spec whose GPUs this machine does not have (one line: what is missing, what was
found)."""

from __future__ import annotations

from llmspec.errors import DoesNotFitError, LLMSpecError
from llmspec.planner.training import plan
from llmspec.spec.schema import CustomGPU, Spec
from llmspec.spec.units import fmt_bytes
from llmspec.train.limits import Refusals
from llmspec.train.methods import method_for


def check_runnable(spec: Spec, refusals: Refusals) -> str | None:
    """Refuse, before anything is prepared, what `llmspec run` plans but cannot execute on this machine: what the
    spec's method refuses, then the first thing the engine that would run it refuses (``refusals``: the engine's
    answer, ``llmspec.backends.runnable``), then GPUs this machine does not have. Returns what the run will do
    other than the spec says, when it will (a GPU spec on a machine without one trains on its CPU), else None."""
    method_for(spec).check_runnable()
    refused = refusals(spec)
    if refused:
        raise LLMSpecError(str(refused[0]))
    if spec.cluster.device.name != "cpu":
        return check_devices(spec, local_gpus())
    return None


def check_devices(spec: Spec, found: list[tuple[str, int]]) -> str | None:
    """Refuse a GPU spec on a machine without the GPUs it names: ``found`` is (name, memory bytes) per local GPU.
    Without any GPU, a spec whose plan fits this machine's CPU runs there: returns the line that says so (a dry run
    prints it; the engine announces it as it starts)."""
    cl = spec.cluster
    if found:
        have = f"{len(found)} × {found[0][0]} ({fmt_bytes(found[0][1])})"
        if len(found) < cl.gpus_per_node:
            raise LLMSpecError(f"cluster.gpus_per_node {cl.gpus_per_node}: this machine has {have}")
        family = None if isinstance(cl.gpu, CustomGPU) else _family(cl.device.name)  # a custom GPU's name is the user's
        if family and family not in found[0][0].upper().replace("-", "").replace(" ", ""):
            raise LLMSpecError(f"cluster.gpu {cl.device.name}: this machine has {have}; set cluster.gpu to its GPU "
                               "so that the plan is this machine's")
        if found[0][1] < 0.95 * cl.device.memory_bytes:
            raise LLMSpecError(f"cluster.gpu {cl.device.name}: planned with {fmt_bytes(cl.device.memory_bytes)} per "
                               f"GPU, but this machine has {have}")
        return None
    on_cpu = spec.model_copy(update={"cluster": cl.model_copy(update={"gpu": "cpu"})})
    cpu = on_cpu.cluster.device
    if spec.training.precision not in cpu.peak_flops:
        raise LLMSpecError(f"cluster.gpu {cl.device.name}: this machine has no GPU, and "
                           f"training.precision {spec.training.precision} needs one")
    planned = plan(on_cpu, alternatives=False)
    if not planned.fits:
        raise DoesNotFitError(
            f"cluster.gpu {cl.device.name}: this machine has no GPU, and on its CPU the plan needs "
            f"{fmt_bytes(planned.memory['peak'])} per rank of {fmt_bytes(planned.usable_memory)}; run on a "
            f"machine with {cl.gpus} × {cl.device.name} (the named specs for a CPU: {', '.join(cpu_specs())})")
    return (f"no GPU on this machine: {spec.name} trains on its CPU instead of {cl.gpus} × {cl.device.name} "
            f"(there the plan needs {fmt_bytes(planned.memory['peak'])} per rank of "
            f"{fmt_bytes(planned.usable_memory)}; the times above are the GPU's)")


def _family(catalogue_name: str) -> str:
    """The part of a catalogue name that a device name contains: H100-SXM → H100, RTX-4090 → 4090."""
    parts = catalogue_name.upper().split("-")
    return parts[1] if parts[0] == "RTX" else parts[0]


def local_gpus() -> list[tuple[str, int]]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [(torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory)
            for i in range(torch.cuda.device_count())]


def cpu_specs() -> list[str]:
    """The named specs that pretrain on this machine class (cluster.gpu: cpu); the post-training chain on them
    starts from a tiny run."""
    from llmspec.spec.loading import load_spec, named_specs

    specs = {name: load_spec(name) for name in sorted(named_specs())}
    return [name for name, spec in specs.items() if spec.cluster.device.name == "cpu" and spec.post_training is None]
