"""The engines `llmspec run` can pick and what each refuses: the answers `run`'s pre-flight asks, and the "what plan
plans, run runs" table built from the same answers on probe specs (docs/training.md embeds ``markdown_table()``).
Light: each engine's limits module imports neither torch nor DeepSpeed."""

from __future__ import annotations

from types import ModuleType

from llmspec.backends import deepspeed_limits, torch_limits
from llmspec.errors import LLMSpecError
from llmspec.spec.loading import load_spec
from llmspec.spec.schema import Spec

# engine name (`llmspec run --backend`) → its limits: ``refusals(spec)`` and ``runs_as(spec)``
ENGINES: dict[str, ModuleType] = {"torch": torch_limits, "deepspeed": deepspeed_limits}
BACKENDS = ("auto", *ENGINES)


def pick_engine(spec: Spec, backend: str = "auto") -> str:
    """The engine `llmspec run --backend BACKEND` trains ``spec`` with: ``auto`` is DeepSpeed for more than one
    GPU, else the single-process torch engine."""
    if backend not in BACKENDS:
        raise LLMSpecError(f"--backend {backend}: expected auto, torch or deepspeed")
    return backend if backend != "auto" else ("deepspeed" if spec.cluster.gpus > 1 else "torch")

_TWO_GPUS = ["cluster.gpus_per_node=2", "training.global_batch_size=32"]
_MOE = ["model.moe={n_experts: 4, top_k: 2}", "model.mlp=swiglu"]
# what the table asks about: a feature the plan plans, as --set changes to `tiny`
PROBES: list[tuple[str, list[str]]] = [
    ("parallelism.zero_stage 3", [*_TWO_GPUS, "parallelism.zero_stage=3"]),
    ("parallelism.offload_optimizer cpu", [*_TWO_GPUS, "parallelism.zero_stage=2",
                                           "parallelism.offload_optimizer=cpu"]),
    ("parallelism.tensor 2", [*_TWO_GPUS, "parallelism.tensor=2"]),
    ("parallelism.pipeline 2", [*_TWO_GPUS, "parallelism.pipeline=2"]),
    ("parallelism.expert 2", [*_TWO_GPUS, *_MOE, "parallelism.expert=2"]),
    ("parallelism.tensor 2 with pipeline 2", ["cluster.gpus_per_node=4", "training.global_batch_size=32",
                                               "parallelism.tensor=2", "parallelism.pipeline=2"]),
    ("parallelism.expert 2 with zero_stage 3", [*_TWO_GPUS, *_MOE, "parallelism.expert=2",
                                                "parallelism.zero_stage=3"]),
    ("model.moe.capacity_factor with parallelism.expert 2",
     [*_TWO_GPUS, "model.moe={n_experts: 4, top_k: 2, capacity_factor: 1.25}", "model.mlp=swiglu",
      "parallelism.expert=2"]),
    ("parallelism.sequence_parallel", [*_TWO_GPUS, "parallelism.tensor=2", "parallelism.sequence_parallel=true"]),
    ("parallelism.tp_comm_overlap", [*_TWO_GPUS, "parallelism.tensor=2", "parallelism.tp_comm_overlap=true"]),
    ("parallelism.ep_comm_overlap", [*_TWO_GPUS, *_MOE, "parallelism.expert=2", "parallelism.ep_comm_overlap=true"]),
    ("parallelism.context 2", [*_TWO_GPUS, "parallelism.context=2"]),
    ("parallelism.virtual_stages 2", [*_TWO_GPUS, "parallelism.pipeline=2", "parallelism.virtual_stages=2"]),
    ("cluster.nodes 2 (no hosts named)", ["cluster.nodes=2", "training.global_batch_size=32"]),
    ("training.precision fp8", ["cluster.gpu=H100-SXM", "training.precision=fp8"]),
    ("parallelism.byte_regime pure16", ["cluster.gpu=H100-SXM", "training.precision=bf16",
                                        "parallelism.byte_regime=pure16"]),
]


def answer(engine: str, spec: Spec) -> str:
    """What ``engine`` does with ``spec``: how it runs it, or "refused: why; what to set instead" (its first
    refusal, the one `llmspec run` prints)."""
    found = ENGINES[engine].refusals(spec)
    if not found:
        return ENGINES[engine].runs_as(spec)
    return f"refused: {found[0].why}" + (f"; {found[0].instead}" if found[0].instead else "")


def runnable_rows() -> list[tuple[str, str, dict[str, str]]]:
    """Per probe: the feature, the engine `--backend auto` picks, and each engine's answer."""
    rows = []
    for feature, sets in PROBES:
        spec = load_spec("tiny", sets)
        rows.append((feature, pick_engine(spec), {engine: answer(engine, spec) for engine in ENGINES}))
    return rows


def markdown_table() -> str:
    """The rows as a markdown table: the feature, the engine `auto` picks, one column per engine."""
    lines = ["| the spec sets | `--backend auto` | " + " | ".join(f"`{engine}`" for engine in ENGINES) + " |",
             "|" + "---|" * (len(ENGINES) + 2)]
    for feature, picked, answers in runnable_rows():
        cells = [f"`{feature}`", picked, *(answers[engine].replace("|", "\\|") for engine in ENGINES)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
