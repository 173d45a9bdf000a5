"""What the ``torch`` engine (``llmspec.backends.torch_backend``) refuses, without importing torch.

The engine runs one process: a layout over several GPUs (tensor, pipeline, expert, context parallelism and what
tunes them) computes the same step there, every replica's micro-batches in turn, whole on one device (the
reference the DeepSpeed runs are tested against). What it cannot run is what changes the step's numbers."""

from __future__ import annotations

from llmspec.spec.schema import Spec
from llmspec.train.limits import Refusal, compiled_model_refusals


def refusals(spec: Spec) -> list[Refusal]:
    found = compiled_model_refusals(spec)
    if spec.parallelism.byte_regime == "pure16":
        found.append(Refusal("parallelism.byte_regime", "pure16", "the engines keep an fp32 master: the torch engine's "
                             "optimizer steps fp32 weights under autocast", "use deepspeed, zero_paper or megatron to "
                             "run"))
    return found


def runs_as(spec: Spec) -> str:
    """How the engine runs a spec it does not refuse."""
    if spec.cluster.gpus > 1:
        return "runs, in one process (the layout's step whole on one device)"
    return "runs"
