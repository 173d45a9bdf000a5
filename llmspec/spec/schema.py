"""The spec: one Pydantic model describing an LLM training job (model, training, parallelism, cluster, data).

Every section forbids unknown keys. Fields marked *derived* are filled in by validators when absent and checked
when given. Cross-field rules live in ``llmspec.spec.rules`` so that each problem names its own field path.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, WithJsonSchema, field_validator, model_validator

from llmspec.errors import ConsistencyError
from llmspec.spec import catalogue
from llmspec.spec.data import DataSpec
from llmspec.spec.hostfile import HOST_PATTERN
from llmspec.spec.model import ModelSpec
from llmspec.spec.post_training import PostTraining
from llmspec.spec.rules import consistency_problems
from llmspec.spec.section import NonNegative, Positive, Section
from llmspec.spec.units import COUNT_PATTERN, parse_count

# A fraction in [0, 1): Adam's and Lion's betas.
Beta = Annotated[float, Field(ge=0, lt=1)]
# What the loader accepts for a count (parse_count), for editors' JSON Schema: 2T, 300B, 1.5e12, 4_000_000.
COUNT_SCHEMA = {"anyOf": [{"type": "integer", "exclusiveMinimum": 0}, {"type": "number", "exclusiveMinimum": 0},
                          {"type": "string", "pattern": COUNT_PATTERN}]}
# More tokens than any corpus holds (1e17 = 100,000T) is a typo, not a plan.
MAX_TOKENS = 10**17
MAX_SEED = 2**63 - 1


class Optimizer(Section):
    name: Literal["adamw", "adam", "sgd", "lion"] = "adamw"
    lr: float = Field(3e-4, gt=0)
    betas: tuple[Beta, Beta] = (0.9, 0.95)
    weight_decay: float = Field(0.1, ge=0)
    eps: float = Field(1e-8, gt=0)

    @property
    def n_states(self) -> int:
        """fp32 state tensors per parameter: Adam keeps two moments; SGD (momentum) and Lion keep one."""
        return 2 if self.name in ("adamw", "adam") else 1


class Schedule(Section):
    """Linear warmup from 0 to ``optimizer.lr``, then cosine decay to ``min_lr``."""

    warmup_steps: NonNegative = 2000
    min_lr: float = Field(3e-5, ge=0)


class TrainingSpec(Section):
    seq_len: Positive
    micro_batch_size: Positive = 1
    global_batch_size: Positive = Field(description="sequences per optimizer step")
    tokens: Annotated[int, Field(gt=0, le=MAX_TOKENS, strict=True), WithJsonSchema(COUNT_SCHEMA)] | None = Field(
        None, description="total training tokens; accepts 300B, 2T, 1.5e12")
    precision: Literal["fp32", "bf16", "fp16", "fp8"] = Field(
        "bf16", description="fp8: the matmuls in FP8 (E4M3 forward, E5M2 gradients; fp8_library says whose), "
        "everything else in bf16, on GPUs with FP8 tensor cores; planned, not run (`build` writes the bf16 engine "
        "config)")
    fp8_library: Literal["transformer_engine", "torchao"] = Field(
        "transformer_engine", description="under precision fp8, whose FP8 linears: Transformer Engine saves each "
        "linear's input for backward in FP8 and keeps FP8 copies of the weights between micro-batches; torchao's "
        "Float8Linear saves the 16-bit input and casts weights at each use")
    optimizer: Optimizer = Optimizer()
    schedule: Schedule = Schedule()
    grad_clip: float | None = Field(1.0, gt=0)
    max_steps: Positive | None = Field(None, description="overrides tokens for short runs")
    log_interval: Positive = 10
    loggers: list[Literal["tensorboard", "wandb", "csv"]] = Field(
        [], description="where step and eval lines go besides metrics.jsonl (always written): tensorboard (event "
        "files in RUN_DIR/tensorboard), wandb (offline unless the user configured wandb), csv (RUN_DIR/metrics.csv)")
    eval_interval: Positive = 500
    checkpoint_interval: Positive = 1000
    seed: Annotated[int, Field(ge=0, le=MAX_SEED, strict=True)] = Field(
        0, description="seeds the weights, the batches and sampling; at most 2^63 - 1 (a signed 64-bit integer, what "
        "torch's and numpy's generators hold)")
    init_from: str | None = Field(
        None, description="a run directory or an `import-hf` output whose weights (and tokenizer) start the run")
    gradient_accumulation_steps: Positive | None = Field(
        None, description="derived: global_batch_size / (micro_batch_size · data_parallel)"
    )

    @field_validator("tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: object) -> object:
        return None if value is None else parse_count(value)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _need_length(self) -> TrainingSpec:
        if self.tokens is None and self.max_steps is None:
            raise ValueError("set training.tokens (e.g. 2T) or training.max_steps")
        return self

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    @property
    def total_tokens(self) -> int:
        return self.max_steps * self.tokens_per_step if self.max_steps else self.tokens  # type: ignore[return-value]

    @property
    def steps(self) -> int:
        return self.max_steps or -(-self.total_tokens // self.tokens_per_step)


Offload = Literal["none", "cpu", "nvme"]


class ParallelismSpec(Section):
    zero_stage: Literal[0, 1, 2, 3] = 0
    tensor: Positive = 1
    pipeline: Positive = 1
    virtual_stages: Positive | Literal["auto"] = Field(
        1, description="interleaved 1F1B: model chunks per pipeline stage (Narayanan et al. 2021), each stage's "
        "blocks split into this many as evenly as they go; auto: the planner picks the count with the shortest step "
        "that fits (`run` trains 1: DeepSpeed's pipeline runs one chunk per rank)")
    context: Positive = Field(
        1, description="context-parallel degree: each sequence split over this many GPUs, which exchange keys and "
        "values around a ring inside attention (ring attention as Megatron-LM's context parallelism runs it; the "
        "chunks load-balanced for causal attention); planned, not trained")
    expert: Positive = Field(1, description="expert-parallel degree: each MoE layer's experts split over this many "
                             "data-parallel ranks (DeepSpeed AutoEP)")
    first_stage_layers: Positive | None = Field(
        None, description="blocks on the first pipeline stage (Megatron's uneven split); the rest divide evenly")
    last_stage_layers: Positive | None = Field(
        None, description="blocks on the last pipeline stage (it also holds the LM head); the rest divide evenly")
    sequence_parallel: StrictBool = Field(
        False, description="tensor-parallel ranks split the sequence outside attention and the MLP (Megatron); "
        "`run`'s engine (DeepSpeed AutoTP) does not, so it plans only")
    tp_comm_overlap: StrictBool = Field(
        False, description="tensor-parallel collectives pipelined in chunks under the matmuls they feed "
        "(Transformer Engine, Megatron-LM's --tp-comm-overlap): the time model counts 1/tensor of them and what "
        "outlasts the matmuls; `run`'s engine (DeepSpeed AutoTP) does not overlap, so it plans only")
    ep_comm_overlap: StrictBool = Field(
        False, description="one micro-batch's expert all-to-all under another's compute (Megatron-Core's "
        "--overlap-moe-expert-parallel-comm, DeepSeek-V3's DualPipe): the time model counts what outlasts the "
        "step's compute; `run`'s engine (DeepSpeed AutoEP) does not overlap, so it plans only")
    activation_checkpointing: Literal["none", "selective", "full"] = "none"
    offload_optimizer: Offload = "none"
    offload_params: Offload = "none"
    nvme_path: str | None = Field(
        None, description="with NVMe offload: the folder on each node's NVMe where DeepSpeed keeps what it offloads "
        "(must exist, be writable and hold the plan's NVMe bytes: `run` checks it); required for NVMe offload to run")
    byte_regime: Literal["deepspeed", "zero_paper", "megatron", "pure16"] = Field(
        "deepspeed", description="bytes per parameter for 16-bit training: 20, 16 or 18 with an fp32 master, or "
        "pure16: 16-bit weights, gradients and optimizer states, no master (8 with Adam; see docs/formulas.md)"
    )
    data_parallel: Positive | None = Field(None, description="derived: gpus / (tensor · pipeline · context)")
    overlap_comm: StrictBool = Field(True, description="data-parallel gradient reduction overlapped with backward "
                               "(DeepSpeed's overlap_comm, what other engines call dp_comm_overlap)")
    reduce_bucket_size: Positive = 500_000_000
    allgather_bucket_size: Positive = 500_000_000
    prefetch_bucket_size: Positive = 50_000_000
    max_live_parameters: Positive = 1_000_000_000


class CustomGPU(Section):
    """An accelerator that is not in the catalogue."""

    name: str = "custom"
    memory_gib: float = Field(gt=0)
    peak_tflops: dict[Literal["fp32", "bf16", "fp16"], float] = Field(description="dense TFLOP/s per dtype")
    hbm_bandwidth_gbs: float = Field(1000.0, gt=0)
    intra_node_bandwidth_gbs: float = Field(100.0, gt=0)

    def to_gpu(self) -> catalogue.GPU:
        return catalogue.GPU(
            self.name, int(self.memory_gib * 2**30), {k: v * 1e12 for k, v in self.peak_tflops.items()},
            self.hbm_bandwidth_gbs * 1e9, self.intra_node_bandwidth_gbs * 1e9,
        )


class ClusterSpec(Section):
    gpu: str | CustomGPU = "A100-80GB"
    gpus_per_node: Positive = 8
    nodes: Positive = 1
    intra_node_bandwidth: float | None = Field(None, gt=0, description="GB/s per GPU, one direction (NVLink)")
    inter_node_bandwidth: float | None = Field(None, gt=0, description="GB/s per GPU across nodes (IB/RoCE)")
    price_per_gpu_hour: float | None = Field(None, ge=0, description="USD; default from the dated catalogue")
    efficiency: float | None = Field(None, gt=0, le=1, description="achieved fraction of peak FLOP/s on matmuls "
                                     "(the calibrated default otherwise)")
    calibration: str | None = Field(None, min_length=1, description="a file of measured kernel rates (`llmspec "
                                    "measure --steps --write-calibration`) that replaces the catalogue's for the GPU "
                                    "it was measured on")
    memory_reserve_gib: float = Field(1.0, ge=0, description="per GPU, outside PyTorch: CUDA context, NCCL")
    host_memory_gib: float | None = Field(
        None, gt=0, description="CPU memory per node; given, what offload and DeepSpeed's loading keep there (the "
        "plan's host per node) must fit it, and `size` turns to NVMe offload where CPU offload does not")
    nvme_gib: float | None = Field(None, gt=0, description="NVMe per node; given, NVMe offload must fit it")
    hosts: list[Annotated[str, Field(pattern=HOST_PATTERN)]] | None = Field(
        None, description="one per node, reachable by passwordless ssh (or --hostfile PATH); `build` writes "
        "DeepSpeed's hostfile from them")

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def device(self) -> catalogue.GPU:
        """The resolved accelerator (call only on a validated spec)."""
        if isinstance(self.gpu, CustomGPU):
            return self.gpu.to_gpu()
        found = catalogue.lookup(self.gpu)
        assert found is not None, "validated specs name catalogue GPUs"
        return found


class Published(Section):
    """What a run with this spec's layout reported, for the planner's published-run tests and calibration."""

    source: str = Field(min_length=1, description="citation: paper, table")
    tflops_per_gpu: float = Field(gt=0, description="reported throughput per GPU")
    counted: Literal["model", "megatron"] = Field(
        "model", description="how the report counts FLOPs: model (6N per token + causal attention, no recompute: "
        "the plan's MFU) or megatron (Narayanan et al. 2021's 96·B·s·L·h²(1 + s/6h + V/16Lh) per step: full "
        "recompute, attention counted whole)")


class Spec(Section):
    """An LLM training job."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="letters, digits, . _ -")
    model: ModelSpec
    training: TrainingSpec
    parallelism: ParallelismSpec = ParallelismSpec()
    cluster: ClusterSpec = ClusterSpec()
    data: DataSpec = DataSpec()
    post_training: PostTraining | None = Field(None, description="absent: pretraining")
    published: Published | None = Field(None, description="a published run's reported throughput at this layout")

    @property
    def stage_layers(self) -> list[int] | None:
        """Blocks per pipeline stage when the spec splits unevenly (first/last_stage_layers), else None (the even
        split). The stages without a given count share the rest equally (the rules check that they can)."""
        par = self.parallelism
        first, last, p = par.first_stage_layers, par.last_stage_layers, par.pipeline
        if p == 1 or (first is None and last is None):
            return None
        given = [n for n in (first, last) if n is not None]
        middle = p - len(given)
        each = (self.model.n_layers - sum(given)) // middle if middle else 0
        return [first or each, *([each] * (p - 2)), last or each]

    @property
    def stage_blocks(self) -> list[int]:
        """Blocks on each pipeline stage: the uneven split as given, else DeepSpeed's balance (counts differ by at
        most one; the fuller stages are taken to be the last ones, which hold the LM head: the slower case)."""
        split = self.stage_layers
        if split is not None:
            return split
        p, n = self.parallelism.pipeline, self.model.n_layers
        fuller = n % p
        return [n // p] * (p - fuller) + [n // p + 1] * fuller

    @model_validator(mode="after")
    def _check_and_derive(self) -> Spec:
        if self.post_training is not None:
            tr = self.training
            self.post_training.derive(tr.seq_len, tr.precision, tr.global_batch_size, self.model.fused_qkv)
        problems = consistency_problems(self)
        if problems:
            raise ConsistencyError(problems)
        par, train = self.parallelism, self.training
        par.data_parallel = self.cluster.gpus // (par.tensor * par.pipeline * par.context)
        train.gradient_accumulation_steps = train.global_batch_size // (train.micro_batch_size * par.data_parallel)
        return self
