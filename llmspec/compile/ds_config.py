"""``ds_config.json`` from a strict model of the DeepSpeed config: every key is a declared field.

DeepSpeed silently ignores misspelled top-level keys (``zero_optimisation`` runs ZeRO-0), so the config is written
from Pydantic models with ``extra="forbid"`` and DeepSpeed's own spellings; tests parse every generated file with
``deepspeed.runtime.config.DeepSpeedConfig``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llmspec.spec.schema import Spec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Offload(_Strict):
    device: Literal["cpu", "nvme"]
    nvme_path: str | None = None
    pin_memory: bool = True


class ZeroOptimization(_Strict):
    stage: Literal[0, 1, 2, 3]
    overlap_comm: bool
    contiguous_gradients: bool = True
    reduce_bucket_size: int
    allgather_bucket_size: int
    offload_optimizer: Offload | None = None
    offload_param: Offload | None = None
    stage3_prefetch_bucket_size: int | None = None
    stage3_max_live_parameters: int | None = None
    stage3_gather_16bit_weights_on_model_save: bool | None = None


class Precision(_Strict):
    enabled: bool


class FP16(Precision):
    loss_scale: float = 0  # 0: dynamic loss scaling
    initial_scale_power: int = 16


class OptimizerParams(_Strict):
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float


class Optimizer(_Strict):
    type: Literal["AdamW", "Adam"]
    params: OptimizerParams


class WarmupCosineParams(_Strict):
    total_num_steps: int
    warmup_num_steps: int = Field(ge=1)
    warmup_min_ratio: float = 0.0
    cos_min_ratio: float
    warmup_type: Literal["linear", "log"] = "linear"


class Scheduler(_Strict):
    type: Literal["WarmupCosineLR"] = "WarmupCosineLR"
    params: WarmupCosineParams


class ActivationCheckpointing(_Strict):
    """DeepSpeed's own checkpointing options. model.py checkpoints with ``torch.utils.checkpoint`` (non-reentrant),
    which these do not change; they are kept off so a switch to ``deepspeed.checkpointing`` starts from defaults."""

    partition_activations: bool = False
    contiguous_memory_optimization: bool = False
    cpu_checkpointing: bool = False


class LayerSpec(_Strict):
    """One AutoTP rule: the parameters whose names match ``patterns`` are split as ``partition_type`` says."""

    patterns: list[str]
    partition_type: Literal["column", "row"]
    shape: list | None = None  # the logical view to split: fused q/k/v is three sub-matrices, split each
    partition_dim: int | None = None


class PartitionConfig(_Strict):
    use_default_specs: bool = False
    layer_specs: list[LayerSpec]


class TensorParallel(_Strict):
    autotp_size: int
    vocab_parallel_lm_head: bool = True
    partition_config: PartitionConfig


class ExpertParallel(_Strict):
    """AutoEP over the compiled MoE layer (``blocks.N.mlp``: a ``router`` and an ``experts`` list of SwiGLU MLPs),
    routed as it routes: softmax over all experts, top-k, weights renormalised, applied after the experts."""

    enabled: bool = True
    autoep_size: int
    moe_layer_pattern: str = r"blocks\.\d+\.mlp"
    router_pattern: str = "router"
    expert_pattern: str = "experts"
    expert_w1: str = "gate_proj"
    expert_w2: str = "down_proj"
    expert_w3: str = "up_proj"
    expert_activation: Literal["swiglu"] = "swiglu"
    top_k: int
    score_func: Literal["softmax"] = "softmax"
    route_norm: bool = True
    score_apply: Literal["post"] = "post"
    use_grouped_mm: bool  # grouped GEMM kernels are GPU kernels


class DeepSpeedConfig(_Strict):
    # None under tensor parallelism: DeepSpeed derives it from the data-parallel group, not the world
    train_batch_size: int | None = None
    train_micro_batch_size_per_gpu: int
    gradient_accumulation_steps: int
    gradient_clipping: float | None = None
    steps_per_print: int
    zero_optimization: ZeroOptimization
    bf16: Precision
    fp16: FP16
    optimizer: Optimizer | None = None
    scheduler: Scheduler
    activation_checkpointing: ActivationCheckpointing | None = None
    tensor_parallel: TensorParallel | None = None
    expert_parallel: ExpertParallel | None = None
    wall_clock_breakdown: bool = False


# The compiled model's projections (llmspec/compile/templates/model.py.in), as Megatron splits them: the
# projections into heads and into the MLP's hidden width by output rows (column-parallel), the two that write back
# into the residual stream by input columns (row-parallel, followed by an all-reduce). MoE experts are split the same
# way, each on every rank. Norms, the router and row-parallel biases stay whole on every rank.
COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROW_PARALLEL = ("o_proj", "down_proj")


def partition_config(spec: Spec) -> PartitionConfig:
    """AutoTP's rules for the compiled model's parameter names (weights and their biases)."""
    model = spec.model

    def names(*projections: str) -> str:
        return rf".*\.({'|'.join(projections)})\.(weight|bias)$"

    rules = [LayerSpec(patterns=[names(*COLUMN_PARALLEL)], partition_type="column"),
             LayerSpec(patterns=[names(*ROW_PARALLEL)], partition_type="row")]
    if model.fused_qkv:  # one matrix stacking q, k and v: split each of the three, not the stack
        q_size, kv_size = model.n_heads * model.head_dim, model.n_kv_heads * model.head_dim
        rules.append(LayerSpec(patterns=[names("qkv_proj")], partition_type="column",
                               shape=[[q_size, kv_size, kv_size], -1], partition_dim=0))
    return PartitionConfig(layer_specs=rules)


def ds_config(spec: Spec) -> DeepSpeedConfig:
    """The DeepSpeed config that runs this spec: batch triple, ZeRO and offload, precision, AdamW, schedule."""
    tr, par = spec.training, spec.parallelism

    def offload(target: str) -> Offload | None:
        if target == "none":
            return None
        # NVMe offload swaps to the spec's parallelism.nvme_path; without one the key is left out (no folder is
        # ever guessed), and `run` refuses the spec before launching (backends/nvme_check.py)
        return Offload(device=target, nvme_path=par.nvme_path if target == "nvme" else None)  # type: ignore[arg-type]

    zero3 = par.zero_stage == 3
    optimizer = None
    if tr.optimizer.name in ("adamw", "adam"):  # DeepSpeed builds these (DeepSpeedCPUAdam under offload)
        opt = tr.optimizer
        optimizer = Optimizer(type="AdamW" if opt.name == "adamw" else "Adam", params=OptimizerParams(
            lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay))
    tensor = par.tensor > 1
    return DeepSpeedConfig(
        train_batch_size=None if tensor else tr.global_batch_size,
        train_micro_batch_size_per_gpu=tr.micro_batch_size,
        gradient_accumulation_steps=tr.gradient_accumulation_steps,
        gradient_clipping=tr.grad_clip,
        steps_per_print=tr.log_interval,
        zero_optimization=ZeroOptimization(
            stage=par.zero_stage, overlap_comm=par.overlap_comm,
            reduce_bucket_size=par.reduce_bucket_size, allgather_bucket_size=par.allgather_bucket_size,
            offload_optimizer=offload(par.offload_optimizer), offload_param=offload(par.offload_params),
            stage3_prefetch_bucket_size=par.prefetch_bucket_size if zero3 else None,
            stage3_max_live_parameters=par.max_live_parameters if zero3 else None,
            stage3_gather_16bit_weights_on_model_save=True if zero3 else None,
        ),
        bf16=Precision(enabled=tr.precision in ("bf16", "fp8")),  # DeepSpeed has no FP8 matmuls: the bf16 engine
        fp16=FP16(enabled=tr.precision == "fp16"),
        optimizer=optimizer,
        scheduler=Scheduler(params=WarmupCosineParams(
            total_num_steps=tr.steps, warmup_num_steps=max(1, tr.schedule.warmup_steps),
            cos_min_ratio=tr.schedule.min_lr / tr.optimizer.lr)),
        activation_checkpointing=ActivationCheckpointing() if par.activation_checkpointing != "none" else None,
        tensor_parallel=TensorParallel(autotp_size=par.tensor, partition_config=partition_config(spec))
        if tensor else None,
        expert_parallel=ExpertParallel(autoep_size=par.expert, top_k=spec.model.moe.top_k,
                                       use_grouped_mm=spec.cluster.device.name != "cpu")
        if par.expert > 1 and spec.model.moe else None,
    )


def ds_config_dict(spec: Spec) -> dict:
    return ds_config(spec).model_dump(exclude_none=True)
