"""``llmspec size``: every parallel layout of a spec on every GPU type, scored at once, and the Pareto frontier.

The search evaluates the same generated formulas the planner uses, on numpy arrays: one column per
configuration (GPU count × tensor × context × pipeline × interleaved chunks × expert × ZeRO stage × micro-batch ×
checkpointing × CPU or NVMe offload, per GPU type). NVMe offload holds on the GPU what CPU offload holds, more
slowly: it can reach the frontier only where the spec sizes the nodes' memory (cluster.host_memory_gib, nvme_gib)
and CPU offload overflows it, so only then is it searched. Divisibility rules are applied as masks before
scoring; what does not fit (GPU, and the nodes' memory where sized), misses the deadline or exceeds the budget is
dropped after. The frontier is the set of feasible layouts no other layout beats
on both time and cost. Every frontier item carries the ``--set`` overrides that make ``llmspec plan`` reproduce it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmspec.errors import LLMSpecError
from llmspec.planner import numeric
from llmspec.planner.device_inputs import device_inputs, usable_memory
from llmspec.planner.inputs import (
    CHECKPOINTING,
    OFFLOAD_MODES,
    PARAMETER_FORMULAS,
    architecture_inputs,
    evaluate_stage,
    formulas_for,
    host_fits,
    layout_inputs,
    offloaded_bytes_per_node,
    strategy_inputs,
)
from llmspec.spec import catalogue
from llmspec.spec.loading import apply_sets
from llmspec.spec.rules import OFFLOADABLE_OPTIMIZERS
from llmspec.spec.schema import Spec

# (optimizer, parameter) offload of each searched code: none; the optimizer, or both, to the CPU; or to NVMe
OFFLOADS = (("none", "none"), ("cpu", "none"), ("cpu", "cpu"), ("nvme", "none"), ("nvme", "nvme"))
# Without a size for the nodes' memory, NVMe offload is dominated (CPU offload holds the same on the GPU, faster):
# only the first three codes are searched
CPU_OFFLOADS = 3
_OPTIMIZER_CODES = np.array([OFFLOAD_MODES.index(optimizer) for optimizer, _ in OFFLOADS])
_PARAMS_CODES = np.array([OFFLOAD_MODES.index(params) for _, params in OFFLOADS])
MICRO_BATCHES = (1, 2, 4, 8, 16, 32)
VIRTUAL_STAGES = (1, 2, 4, 8)  # interleaved 1F1B chunks per pipeline stage
# Context-parallel degrees, each leaving every GPU at least CONTEXT_CHUNK positions of a sequence: shorter chunks
# are not where ring attention pays (Llama 3 ran CP 16 at 131,072 tokens, 8,192 per GPU).
CONTEXTS = (1, 2, 4, 8, 16)
CONTEXT_CHUNK = 4096
DEFAULT_GPUS = ("H100-SXM", "A100-80GB", "H200")
# a fine-tune asks "which GPU do I need": consumer and inference cards too
FINE_TUNE_GPUS = ("RTX-4090", "L4", "A100-40GB", "A100-80GB", "H100-SXM", "H200")
NODE = 8  # GPUs per node in searched clusters; tensor parallelism stays within a node
# what a layout is scored by, and what its nodes' offloaded bytes are computed from (offloaded_bytes_per_node)
SCORES = ("memory_peak", "time_step", "time_total", "gpu_hours", "cost")
SCORED_FORMULAS = formulas_for((*SCORES, "host_zero2", "host_zero2_offload", "host_zero3", "host_zero3_offload",
                                "host_zero3_offload_all"))


@dataclass
class Layout:
    gpu: str
    gpus: int
    tensor: int
    pipeline: int
    virtual_stages: int
    context: int
    expert: int
    zero_stage: int
    micro_batch_size: int
    activation_checkpointing: str
    offload_optimizer: str
    offload_params: str
    base_precision: str | None  # post-training: how the frozen base is stored (None: pretraining)
    sequence_parallel: bool  # the spec's, where tensor parallelism leaves anything to split
    peak_memory: float
    seconds: float
    gpu_hours: float
    cost: float

    @property
    def nodes(self) -> int:
        return max(1, self.gpus // NODE)

    @property
    def gpus_per_node(self) -> int:
        return self.gpus // self.nodes

    @property
    def data_parallel(self) -> int:
        return self.gpus // (self.tensor * self.pipeline * self.context)

    def sets(self) -> list[str]:
        return [f"cluster.gpu={self.gpu}", f"cluster.gpus_per_node={self.gpus_per_node}",
                f"cluster.nodes={self.nodes}", f"parallelism.tensor={self.tensor}",
                f"parallelism.pipeline={self.pipeline}", f"parallelism.virtual_stages={self.virtual_stages}",
                f"parallelism.sequence_parallel={str(self.sequence_parallel).lower()}",
                f"parallelism.context={self.context}", f"parallelism.expert={self.expert}",
                f"parallelism.zero_stage={self.zero_stage}",
                f"parallelism.activation_checkpointing={self.activation_checkpointing}",
                f"parallelism.offload_optimizer={self.offload_optimizer}",
                f"parallelism.offload_params={self.offload_params}",
                f"training.micro_batch_size={self.micro_batch_size}"] + (
            [f"post_training.base_precision={self.base_precision}"] if self.base_precision else [])

    def to_json(self) -> dict[str, Any]:
        return {"sets": self.sets(), "gpu": self.gpu, "gpus": self.gpus, "tensor": self.tensor,
                "pipeline": self.pipeline, "virtual_stages": self.virtual_stages, "context": self.context,
                "expert": self.expert, "data_parallel": self.data_parallel,
                "zero_stage": self.zero_stage, "micro_batch_size": self.micro_batch_size,
                "activation_checkpointing": self.activation_checkpointing,
                "offload_optimizer": self.offload_optimizer, "offload_params": self.offload_params,
                "base_precision": self.base_precision, "days": self.seconds / 86400, "gpu_hours": self.gpu_hours,
                "cost": self.cost,
                "peak_memory": self.peak_memory}


@dataclass
class SizeResult:
    evaluated: int
    feasible: int
    frontier: list[Layout]
    best: Layout | None
    objective: str
    points: dict[str, np.ndarray] = field(default_factory=dict)  # feasible (days, cost) for plotting

    def to_json(self) -> dict[str, Any]:
        return {"evaluated": self.evaluated, "feasible": self.feasible, "objective": self.objective,
                "best": self.best.to_json() if self.best else None,
                "frontier": [item.to_json() for item in self.frontier]}


def gpu_counts(max_gpus: int) -> list[int]:
    """1, 2, 4, … within a node, then whole nodes in powers of two."""
    counts, n = [], 1
    while n <= max_gpus:
        counts.append(n)
        n *= 2
    return [c for c in counts if c <= NODE or c % NODE == 0]


def _nodes_sized(spec: Spec) -> bool:
    return spec.cluster.host_memory_gib is not None or spec.cluster.nvme_gib is not None


def _grid(spec: Spec, max_gpus: int) -> dict[str, np.ndarray]:
    """Every combination that passes the divisibility rules of llmspec/spec/rules.py, as columns (numpy masks)."""
    mo, tr = spec.model, spec.training
    # post-training is planned over data parallelism only (llmspec/spec/rules.py)
    fine_tune = spec.post_training is not None
    pipelines = [1] if fine_tune else [p for p in (1, 2, 4, 8, 16, 32, 64) if p <= mo.n_layers]
    tensors = (1,) if fine_tune else (1, 2, 4, 8)
    contexts = [1] if fine_tune else [c for c in CONTEXTS if tr.seq_len % (2 * c) == 0
                                      and tr.seq_len // c >= min(CONTEXT_CHUNK, tr.seq_len)]
    experts = [1] if fine_tune or mo.moe is None else [e for e in (1, 2, 4, 8, 16, 32, 64)
                                                       if mo.moe.n_experts % e == 0]
    axes = (gpu_counts(max_gpus), tensors, contexts, pipelines, VIRTUAL_STAGES, experts, range(4), MICRO_BATCHES,
            range(len(CHECKPOINTING)), range(len(OFFLOADS) if _nodes_sized(spec) else CPU_OFFLOADS))
    n, t, c, p, v, ep, z, mb, ck, off = (a.ravel() for a in np.meshgrid(*[np.asarray(a) for a in axes],
                                                                         indexing="ij"))
    ok = (n % (t * p * c) == 0) & (mo.n_heads % t == 0) & (mo.n_kv_heads % t == 0) & (t <= np.minimum(n, NODE))
    ok &= (v == 1) | ((p > 1) & (v <= mo.n_layers // p))  # at least one block per chunk
    dp = np.maximum(n // (t * p * c), 1)
    ok &= dp % ep == 0  # expert groups are carved from the data-parallel ranks
    ok &= (tr.global_batch_size % (mb * dp) == 0) & ~((p > 1) & (z > 1))  # DeepSpeed pipelines: ZeRO ≤ 1
    # offload needs ZeRO ≥ 1; parameters need ZeRO-3
    ok &= ~((_OPTIMIZER_CODES[off] > 0) & (z == 0)) & ~((_PARAMS_CODES[off] > 0) & (z != 3))
    if tr.optimizer.name not in OFFLOADABLE_OPTIMIZERS:
        ok &= off == 0
    if not ok.any():
        raise LLMSpecError(f"{spec.name}: no layout up to {max_gpus} GPUs divides the global batch "
                           f"{tr.global_batch_size} and the heads")
    return {"n": n[ok], "t": t[ok], "c": c[ok], "p": p[ok], "v": v[ok], "ep": ep[ok], "z": z[ok], "mb": mb[ok],
            "ck": ck[ok], "off": off[ok]}


def evaluate_layouts(spec: Spec, gpu: catalogue.GPU,
                     grid: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Peak memory, step and run time, GPU-hours and cost of every layout in ``grid`` on ``gpu``, and whether its
    nodes hold what offload keeps on them (all true where the spec does not size them)."""
    arch = architecture_inputs(spec)
    base = numeric.evaluate(arch, PARAMETER_FORMULAS)
    n, t, c, p, v, ep, z, mb, ck, off = (grid[k] for k in ("n", "t", "c", "p", "v", "ep", "z", "mb", "ck", "off"))
    nodes = np.maximum(1, n // NODE)
    per_node = n // nodes
    layouts = layout_inputs(spec, n, per_node, t, c, p, v, ep, mb)
    codes = (z, ck, _OPTIMIZER_CODES[off], _PARAMS_CODES[off])
    common = {**base, **device_inputs(spec, gpu, nodes, per_node, t, p, c, ep), **layouts,
              **strategy_inputs(spec, *codes, layouts["dp"])}
    # every stage holds the even split's most blocks (DeepSpeed's balanced partition: ceil(L/p))
    layers, single = layouts["L_last"], (p == 1) * 1

    def node_holds(env: dict[str, np.ndarray]) -> np.ndarray:
        host, nvme, _ = offloaded_bytes_per_node(spec, env, z, codes[2], codes[3], layouts["dp"], per_node)
        return np.broadcast_to(host_fits(spec, host, nvme), n.shape)

    head = evaluate_stage(spec, common, codes, np.ones_like(p), single, np.zeros_like(p), layers, SCORED_FORMULAS)
    tail = evaluate_stage(spec, common, codes, single, np.ones_like(p), p - 1, layers, SCORED_FORMULAS)
    use_head = head["memory_peak"] >= tail["memory_peak"]
    scores = {key: np.where(use_head, head[key], tail[key]) for key in SCORES}
    return scores, np.where(use_head, node_holds(head), node_holds(tail)) if _nodes_sized(spec) else \
        np.ones(n.shape, dtype=bool)


def with_layout(spec: Spec, layout: Layout) -> Spec:
    """The spec with a searched layout's overrides applied, validated as a user's --set would be."""
    data = spec.model_dump(exclude={"training": {"gradient_accumulation_steps"}, "parallelism": {"data_parallel"}})
    apply_sets(data, layout.sets())
    return Spec.model_validate(data)


def search(spec: Spec, gpus: list[str] | None = None, max_gpus: int = 4096, deadline_days: float | None = None,
           budget: float | None = None, objective: str = "time") -> SizeResult:
    if objective not in ("time", "cost"):
        raise LLMSpecError(f"--objective {objective}: expected time or cost")
    post = spec.post_training
    if post is not None and post.generates:
        raise LLMSpecError(f"{spec.name}: {post.method} specs are not searched yet (a step has three phases); "
                           "`llmspec plan` plans them and lists each ZeRO/checkpointing/offload alternative")
    names = gpus or list(FINE_TUNE_GPUS if post is not None else DEFAULT_GPUS)
    devices = []
    for name in names:
        gpu = catalogue.lookup(name)
        if gpu is None:
            raise LLMSpecError(f"--gpu {name}: unknown GPU (known: {', '.join(catalogue.names())})")
        if spec.training.precision in gpu.peak_flops:
            devices.append(gpu)
    if not devices:
        raise LLMSpecError(f"--gpu: none of {', '.join(names)} supports {spec.training.precision}")
    grid = _grid(spec, max_gpus)
    evaluated, tables = 0, []
    for variant, storage in _storages(spec):
        for gpu in devices:
            scores, nodes_hold = evaluate_layouts(variant, gpu, grid)
            usable = usable_memory(gpu, spec)
            ok = (scores["memory_peak"] <= usable) & nodes_hold
            if deadline_days is not None:
                ok &= scores["time_total"] <= deadline_days * 86400
            if budget is not None:
                ok &= scores["cost"] <= budget
            evaluated += len(ok)
            tables.append((gpu, storage, {k: v[ok] for k, v in grid.items()}, {k: v[ok] for k, v in scores.items()}))
    layouts = [_layout(spec, gpu, storage, g, s, i) for gpu, storage, g, s in tables
               for i in _pareto(s["time_total"], s["cost"])]
    frontier = [layouts[i] for i in _pareto(np.array([x.seconds for x in layouts]),
                                            np.array([x.cost for x in layouts]))] if layouts else []
    frontier.sort(key=objective_key("time"))
    points = {"days": np.concatenate([s["time_total"] / 86400 for *_, s in tables]),
              "cost": np.concatenate([s["cost"] for *_, s in tables])}
    return SizeResult(evaluated, int(sum(len(s["cost"]) for *_, s in tables)), frontier,
                      min(frontier, key=objective_key(objective)) if frontier else None, objective, points)


def objective_key(objective: str):
    """How layouts rank under ``objective``: time first (cost breaks ties), or cost first."""
    return (lambda x: (x.seconds, x.cost)) if objective == "time" else (lambda x: (x.cost, x.seconds))


def _storages(spec: Spec) -> list[tuple[Spec, str | None]]:
    """The spec, and for a fine-tune under an adapter each smaller storage of its frozen base (int8, nf4): the
    search shows which storage a GPU needs. The spec's own comes first, so it wins ties. The adapter's rank is the
    user's modelling choice (it changes quality, barely memory) and is not searched."""
    post = spec.post_training
    if post is None:
        return [(spec, None)]
    order = [spec.training.precision, "int8", "nf4"]
    storages = order[order.index(post.base_precision):] if post.trains_adapter else [post.base_precision]
    return [(spec.model_copy(update={"post_training": post.model_copy(update={"base_precision": storage})}),
             storage) for storage in storages]


def _pareto(seconds: np.ndarray, cost: np.ndarray) -> list[int]:
    """Indices of the points no other point beats on both time and cost (the first of exact ties)."""
    order = np.lexsort((cost, seconds))
    keep, cheapest = [], np.inf
    for i in order:
        if cost[i] < cheapest:
            keep.append(int(i))
            cheapest = cost[i]
    return keep


def _layout(spec: Spec, gpu: catalogue.GPU, storage: str | None, grid: dict[str, np.ndarray],
            scores: dict[str, np.ndarray], i: int) -> Layout:
    off = OFFLOADS[int(grid["off"][i])]
    tensor = int(grid["t"][i])
    return Layout(gpu.name, int(grid["n"][i]), tensor, int(grid["p"][i]), int(grid["v"][i]), int(grid["c"][i]),
                  int(grid["ep"][i]), int(grid["z"][i]), int(grid["mb"][i]), CHECKPOINTING[int(grid["ck"][i])],
                  off[0], off[1], storage,
                  spec.parallelism.sequence_parallel and tensor > 1,
                  float(scores["memory_peak"][i]), float(scores["time_total"][i]), float(scores["gpu_hours"][i]),
                  float(scores["cost"][i]))
