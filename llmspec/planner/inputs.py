"""The planner's formula inputs, each computed in one place for the plan and the layout search alike.

Every function here accepts Python numbers (the plan: ints and Fractions stay exact) or numpy columns (the
layout search scores every configuration at once); neither path imports the other's machinery.
"""

from __future__ import annotations

import typing
from fractions import Fraction
from typing import Any

from llmspec.planner import numeric
from llmspec.planner.regimes import KINDS, bytes_per_param, split_bytes_per_param
from llmspec.spec import catalogue
from llmspec.spec.post_training import RL_METHODS, WITH_REFERENCE, sequences_per_example
from llmspec.spec.schema import ParallelismSpec, Spec

# The achieved fraction of peak for the FLOPs a GPU executes (recompute included), before exposed communication
# and pipeline bubbles, which the time model adds separately: the GPU generation's fitted matmul efficiency,
# lowered by the memory-bound kernels (norms, activations, residual adds, dropout) that run between the matmuls.
# Their time per token grows with the width they sweep (h, or h/t under sequence parallelism), the matmuls' with h²/t;
# so their share of a block's time is ELEMENTWISE·R/w, with w = h/t (h under sequence parallelism: both split) and R
# the GPU's ridge point in FLOPs per HBM byte. ELEMENTWISE (bytes those kernels move per unit of matmul work) is
# fitted with the generations' efficiencies by benchmarks/calibrate.py; docs/calibration.md has the fit and its
# residuals. Megatron-LM 2021 saw exactly this: "GPU utilization improves as the models get larger (larger matrix
# multiplications)".
ELEMENTWISE = 0.05


# The strategy choices, in the spec's own order: codes into these tuples are what the search's columns hold.
CHECKPOINTING: tuple[str, ...] = typing.get_args(ParallelismSpec.model_fields["activation_checkpointing"].annotation)
OFFLOAD_MODES: tuple[str, ...] = typing.get_args(ParallelismSpec.model_fields["offload_optimizer"].annotation)

PARAMETER_FORMULAS = frozenset(name for name, group in numeric.GROUPS.items()
                               if group in ("Parameters", "Post-training: parameters", "Post-training: frozen weights"))
# Inference, compute-optimal sizing and RL phases have inputs of their own (context, batch, compute, rollouts);
# training plans skip them.
OTHER_GROUPS = ("Inference", "Compute-optimal sizing", "Post-training: RL phases")
TRAINING_FORMULAS = frozenset(name for name, group in numeric.GROUPS.items() if group not in OTHER_GROUPS)
RL_FORMULAS = frozenset(name for name, group in numeric.GROUPS.items() if group == "Post-training: RL phases")
# what a forward pass needs, with no strategy: the parameters and the forward FLOPs per token (serving, a frozen
# reward model)
FORWARD_FORMULAS = PARAMETER_FORMULAS | {"matmul_weights", "attention_context", "flops_attention_per_token",
                                         "flops_per_token_forward"}


def choose(condition: Any, yes: Any, no: Any) -> Any:
    """``yes if condition else no``, also elementwise over numpy arrays (the layout search); exact for both."""
    return yes * condition + no * (1 - condition)


def sixteen_bit(precision: str) -> str:
    """The dtype of everything but the matmuls: FP8 training keeps activations, attention and weights in bf16."""
    return "bf16" if precision == "fp8" else precision


def achieved_efficiency(gpu: catalogue.GPU, spec: Spec, tensor: Any, matmul: float | None = None,
                        elementwise: float = ELEMENTWISE) -> Any:
    """The fraction of peak a block's FLOPs run at on ``gpu`` (``tensor`` may be a numpy column: the search);
    ``matmul`` and ``elementwise`` replace the fitted constants (the calibration tries others)."""
    width = spec.model.d_model / (1 if spec.parallelism.sequence_parallel else tensor)
    ridge = gpu.ridge[spec.training.precision]
    return (gpu.efficiency if matmul is None else matmul) * width / (width + elementwise * ridge)


def usable_memory(gpu: catalogue.GPU, spec: Spec) -> int:
    """Bytes per GPU that PyTorch may use: the device's memory less the spec's reserve (CUDA context, NCCL)."""
    return gpu.memory_bytes - int(spec.cluster.memory_reserve_gib * 2**30)


def expert_rows_per_routed_token(spec: Spec, micro_batch: Any = None, context: Any = None) -> Any:
    """Rows each routed token costs in training: 1 dropless; under a capacity factor c, each expert computes
    ⌈c·T·K/E⌉ rows of a micro-batch's T tokens on one GPU (the compiled MoE's rounding), whatever routing does.
    The micro-batch and context degree default to the spec's; the layout search passes arrays of them."""
    moe = spec.model.moe
    if moe is None or moe.capacity_factor is None:
        return 1
    micro_batch = spec.training.micro_batch_size if micro_batch is None else micro_batch
    context = spec.parallelism.context if context is None else context
    tokens = micro_batch * sequences_per_example(spec.post_training) * sequence_length(spec) // context
    # ⌈x⌉ as -⌊-x⌋: the same IEEE value as math.ceil, for a number or an array
    rows = -(-(moe.capacity_factor * tokens * moe.top_k / moe.n_experts) // 1)
    return moe.n_experts * rows / (tokens * moe.top_k)


def architecture_inputs(spec: Spec, role: str = "policy") -> dict[str, Any]:
    """Formula inputs that describe the model and the batch (everything but the strategy and the stage); ``role``:
    which model of a PPO run they describe: policy, critic or reward."""
    mo, tr, par = spec.model, spec.training, spec.parallelism
    moe = mo.moe
    e = 4 if tr.precision == "fp32" else 2
    pairs = sequences_per_example(spec.post_training)
    seq = sequence_length(spec)
    return {**post_training_inputs(spec, e, role),
        "V": mo.vocab_size, "h": mo.d_model, "L": mo.n_layers, "a": mo.n_heads, "k": mo.n_kv_heads,
        "d_h": mo.head_dim, "f": mo.d_ff, "P": mo.max_seq_len,
        "E": moe.n_experts if moe else 1, "K": moe.top_k if moe else 1, "moe": int(moe is not None),
        "capacity": expert_rows_per_routed_token(spec),
        "tied": int(mo.tie_embeddings), "learned": int(mo.position == "learned"), "rope": int(mo.position == "rope"),
        "bias": int(mo.bias), "qkv_bias": int(mo.bias or mo.qkv_bias), "gated": int(mo.gated),
        "fused_qkv": int(mo.fused_qkv), "relu": int(mo.mlp == "relu"), "layernorm": int(mo.norm == "layernorm"),
        "dropout": int(mo.dropout > 0),
        "fp8_saved": int(tr.precision == "fp8" and tr.fp8_library == "transformer_engine"),
        # pairwise objectives (reward, dpo) run a chosen and a rejected sequence per example
        "b": tr.micro_batch_size * pairs, "s": seq, "B": tr.global_batch_size * pairs,
        "D": tr.total_tokens * pairs,
        "e": e, "w_bytes": e, "g_bucket": e,
        "g_comm": 4 if par.byte_regime == "megatron" else e, "window": mo.sliding_window or seq,
        # CPU kernels keep LayerNorm statistics and dropout masks in the activation dtype; GPU kernels in
        # fp32 and bool.
        "e_stat": e if spec.cluster.device.name == "cpu" else 4,
        "e_mask": e if spec.cluster.device.name == "cpu" else 1,
        "masked": int(mo.sliding_window is not None and mo.sliding_window < seq),
        "t": par.tensor, "sequence_parallel": int(par.sequence_parallel),
        "tp_comm_overlap": int(par.tp_comm_overlap), "ep_comm_overlap": int(par.ep_comm_overlap),
        "p": par.pipeline, "ep": par.expert,
        # ZeRO shards, and gradients reduce, over every rank holding the same weights: data × context parallel
        "dp": par.data_parallel * par.context, "cp": par.context, "m": tr.gradient_accumulation_steps,
        # `auto` is resolved by planner.training.plan before a layout is evaluated (the layout search runs 1)
        "v": 1 if par.virtual_stages == "auto" else par.virtual_stages,
        "L_last": spec.stage_blocks[-1], "L_max": max(spec.stage_blocks[:-1], default=0),
        "n_gpu": spec.cluster.gpus,
        "gpus_per_node": spec.cluster.gpus_per_node, "steps": tr.steps,
        "overlap_comm": int(par.overlap_comm), "causal": 1, "reduce_bucket": par.reduce_bucket_size,
        "prefetch_bucket": par.prefetch_bucket_size,
    }


# Bytes the objective saves beyond its per-token tensors, as measured on the compiled model: cross-entropy's fp32
# total weight, once per micro-batch; per pair, what the pairwise loss keeps of its fp32 margin (log-sigmoid: its
# input and a buffer; IPO's square and the hinge's ReLU: one).
LOSS_SAVED_PER_PAIR = {"reward": 8, "sigmoid": 8, "ipo": 4, "hinge": 4}
# The RL losses on per-token log-probabilities, as measured on the compiled model (the same in fp32 and bf16):
# bytes per token beyond cross-entropy's per-token tensors (the gathered targets' indices and response mask, the
# ratio, its clamp's mask and the chosen side of min/max, GRPO's k3 exponent, PPO's value-clip terms), per
# sequence (GRPO's per-sequence token counts and sums) and per micro-batch (PPO's masked means; GRPO's mean over
# sequences saves nothing).
RL_LOSS_SAVED = {"grpo": (21, 8, 0), "ppo": (45, 0, 4)}  # (per token, per sequence, per micro-batch)


def sequence_length(spec: Spec) -> int:
    """Tokens per sequence: training.seq_len, or an RL run's prompt + response (what it generates and trains on)."""
    post = spec.post_training
    if post is not None and post.method in RL_METHODS:
        return post.prompt_len + post.response_len
    return spec.training.seq_len


def post_training_inputs(spec: Spec, e: int, role: str = "policy") -> dict[str, Any]:
    """Formula inputs of the post_training section (all zero for pretraining: nothing frozen, an LM head). PPO's
    critic is trained as the policy is (same adapter and base storage) under a value head, without a reference;
    its reward model is evaluated as a value-head model (only its stored bytes and forward are used)."""
    post, mo = spec.post_training, spec.model
    method = post.method if post is not None else "pretrain"
    adapter = post.adapter if post is not None else None
    kind = adapter.type if adapter is not None else "none"
    targets = post.lora_targets(mo.fused_qkv, mo.gated, mo.moe is not None) if post is not None else []
    base = post.base_precision if post is not None else None
    pair_loss = {"reward": "reward", "dpo": getattr(post, "loss", "")}.get(method)
    b = spec.training.micro_batch_size
    if pair_loss:
        loss_saved = LOSS_SAVED_PER_PAIR[pair_loss] * b
    elif method in RL_LOSS_SAVED and role == "policy":
        per_token, per_sequence, per_batch = RL_LOSS_SAVED[method]
        loss_saved = per_token * b * sequence_length(spec) + per_sequence * b + per_batch
    elif method == "ppo" and role == "critic" and kind == "none":
        # the critic embeds the policy's input ids: where embeddings train, both keep that one int64 tensor
        loss_saved = 4 - 8 * b * sequence_length(spec)
    else:
        loss_saved = 4
    return {
        "adapter": int(kind != "none"), "r": adapter.r if kind == "lora" else 0,
        "lora_dropout": int(kind == "lora" and adapter.dropout > 0), "prefix": int(kind == "prefix"),
        "n_virtual": adapter.n_virtual if kind == "prefix" else 0,
        **{f"lora_{name.removesuffix('_proj')}": int(name in targets)
           for name in ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "down_proj")},
        "value_head": int(method == "reward" or role != "policy"), "dpo": int(method == "dpo"),
        "nf4": int(base == "nf4"), "int8": int(base == "int8"), "double_quant": int(bool(post and post.double_quant)),
        "w_frozen": {"fp32": 4, "bf16": 2, "fp16": 2}.get(base, e),
        "reference_copy": int(getattr(post, "reference", None) == "copy" and role == "policy"),
        "reference_forward": int(method in WITH_REFERENCE and getattr(post, "reference", None) != "precomputed" and role == "policy"),
        "reference_in_step": int(method in ("dpo", "grpo") and getattr(post, "reference", None) != "precomputed" and role == "policy"),
        "loss_saved": loss_saved,
    }


def stage_params(env: dict[str, Any], first: Any, last: Any, layers: Any, tensor: Any = 1) -> Any:
    """Parameters one GPU holds of one pipeline stage split ``tensor`` ways (DeepSpeed keeps a tied embedding on
    both end stages; AutoTP keeps norms, router, some biases and untied embeddings whole on every rank).
    Flags, layer counts and the degree may be numpy arrays; Python ints give an exact Fraction."""
    # The last stage holds the final norm and the LM head, or (pipelines) the tied copy of the embedding that it
    # multiplies with; a single stage holding both ends shares one tied matrix.
    head = env["params_norm"] + choose(first * env["tied"], 0, env["V"] * env["h"])
    # expert parallelism: each rank of an expert group holds E/ep of every MoE layer's experts
    experts_elsewhere = env["E"] * env["params_mlp"] * env["moe"] * _divide(env["ep"] - 1, env["ep"])
    held = layers * (env["params_layer"] - experts_elsewhere) + first * env["params_embedding"] + last * head
    whole = layers * env["params_layer_unsplit"] + first * env["params_embedding_unsplit"] + last * env["params_norm"]
    return whole + _divide(held - whole, tensor)


def largest_module(env: dict[str, Any], tensor: Any = 1) -> Any:
    """Parameters of the largest module one GPU holds whole (what ZeRO-3 gathers at once) under ``tensor``."""
    whole = env["params_embedding_unsplit"] - env["learned"] * env["P"] * env["h"]  # an untied token embedding
    split = _divide(env["params_largest_module"], tensor)
    return split + (whole - split) * (whole > split)


def _divide(value: Any, divisor: Any) -> Any:
    """value / divisor, exact for Python ints (an int when it divides, else a Fraction: a Fraction times a numpy
    array would make an object array, 75× slower to evaluate), elementwise for numpy arrays."""
    if isinstance(divisor, int) and not hasattr(value, "shape"):
        exact = Fraction(value, divisor)
        return exact.numerator if exact.denominator == 1 else exact
    return value / divisor


def strategy_inputs(spec: Spec, zero_stage: Any, checkpointing: Any, offload_optimizer: Any, offload_params: Any,
                    data_parallel: Any) -> dict[str, Any]:
    """The formula inputs a memory strategy sets: bytes per parameter after ZeRO sharding and offload, and the
    stage, checkpointing and offload flags. ``checkpointing`` and the offloads are codes into CHECKPOINTING and
    OFFLOAD_MODES; every argument may be a number (exact, for the plan) or a numpy column (the search)."""
    par, tr = spec.parallelism, spec.training
    z, ck = zero_stage, checkpointing
    opt_on, prm_on = (offload_optimizer >= 1) * 1, (offload_params >= 1) * 1
    per_replica = Fraction(1, data_parallel) if isinstance(data_parallel, int) else 1.0 / data_parallel
    held: dict[str, Any] = dict.fromkeys(KINDS, 0)
    for stage in range(4):
        for opt in (0, 1):
            for prm in (0, 1):
                selected = (z == stage) * (opt_on == opt) * (prm_on == prm)
                if not (selected.any() if hasattr(selected, "any") else selected):
                    continue
                split = split_bytes_per_param(par.byte_regime, tr.precision, tr.optimizer.n_states, stage, opt, prm)
                for kind, (unsharded, sharded) in split.items():
                    held[kind] = held[kind] + selected * (unsharded + sharded * per_replica)
    nvme = OFFLOAD_MODES.index("nvme")
    return {
        "w_bpp": held["weights"], "g_bpp": held["gradients"], "o_bpp": held["optimizer"],
        "zero01": (z <= 1) * 1, "zero2": (z == 2) * 1, "zero12": ((z == 1) | (z == 2)) * 1, "zero3": (z == 3) * 1,
        "ck_none": (ck == CHECKPOINTING.index("none")) * 1,
        "ck_selective": (ck == CHECKPOINTING.index("selective")) * 1,
        "ck_full": (ck == CHECKPOINTING.index("full")) * 1,
        "offload": opt_on, "shard": choose(z >= 1, data_parallel, 1),
        "bw_host": choose((offload_optimizer == nvme) | (offload_params == nvme), catalogue.NVME_BANDWIDTH,
                          catalogue.HOST_LINK_BANDWIDTH),
    }


def offloaded_bytes_per_node(spec: Spec, env: dict[str, Any], zero: Any, optimizer: Any, params: Any,
                             replicas: Any, gpus_per_node: Any) -> tuple[Any, Any, Any]:
    """Host bytes per node, NVMe bytes per node, and DeepSpeed's own host estimate, for one layout or numpy columns
    of them (``optimizer``/``params``: offload codes, indices of OFFLOAD_MODES; ``replicas``: ranks sharing a
    shard, data × context parallel).

    DeepSpeed's estimators (zero_init=True) are kept as they are, with one exception: for ZeRO-1/2 with optimizer
    offload DeepSpeed's figure grows with every GPU of the job (params × max(4 · gpus, 16) × 1.5), which is no
    node's memory at scale; there the host figure is the node's share of the offloaded states (optimizer and
    gradients of its GPUs' shards) with DeepSpeed's 1.5 buffer factor. NVMe holds the same share (and the weights
    under parameter offload), without the buffer factor."""
    cpu, nvme = OFFLOAD_MODES.index("cpu"), OFFLOAD_MODES.index("nvme")
    deepspeed = choose(zero == 3,
                       choose(params == cpu, env["host_zero3_offload_all"],
                              choose(optimizer == cpu, env["host_zero3_offload"], env["host_zero3"])),
                       choose(optimizer == cpu, env["host_zero2_offload"], env["host_zero2"]))
    full = bytes_per_param(spec.parallelism.byte_regime, spec.training.precision, spec.training.optimizer.n_states)
    moved = full["optimizer"] + full["gradients"]
    per_node = env["psi"] / replicas * gpus_per_node
    share = per_node * moved
    share = share * 1.5 if hasattr(share, "dtype") else share * Fraction(3, 2)  # exact for one plan
    host = choose((zero != 3) & (optimizer == cpu), share, deepspeed)
    on_nvme = choose((optimizer == nvme) | (params == nvme),
                     per_node * (moved + full["weights"] * (params == nvme)), 0)
    return host, on_nvme, deepspeed


def host_fits(spec: Spec, host: Any, nvme: Any) -> Any:
    """Whether the node's CPU memory and NVMe hold what offload puts there (true where the spec gives no size)."""
    cl = spec.cluster
    return (True if cl.host_memory_gib is None else host <= cl.host_memory_gib * 2**30) & \
        (True if cl.nvme_gib is None else nvme <= cl.nvme_gib * 2**30)


def shard_experts(spec: Spec, held: dict[str, Any], codes: tuple, psi: Any, layers: Any, tensor: Any,
                  replicas: Any, expert: Any) -> dict[str, Any]:
    """Bytes per parameter once ZeRO shards each expert's states over the ranks holding the same experts
    (``replicas`` / ``expert``) and the rest over all ``replicas``: the two regimes weighted by their parameters.
    ``held`` has the per-replica bytes (strategy_inputs); ``codes`` are strategy_inputs' strategy arguments. Numbers
    or numpy columns."""
    experts = _divide(layers * held["E"] * held["params_mlp"] * held["moe"], expert * tensor)
    like_experts = strategy_inputs(spec, *codes, replicas // expert)
    return {kind: (held[kind] * (psi - experts) + like_experts[kind] * experts) / psi
            for kind in ("w_bpp", "g_bpp", "o_bpp")}


def device_inputs(spec: Spec, gpu: catalogue.GPU | None = None, nodes: Any = None, gpus_per_node: Any = None,
                  tensor: Any = None, pipeline: Any = None, context: Any = None, expert: Any = None) -> dict[str, Any]:
    """Device, link and price inputs: the spec's cluster, or (the layout search) another GPU and numpy columns of
    node counts and degrees. Bandwidth overrides in the spec apply to any GPU."""
    cl, par = spec.cluster, spec.parallelism
    gpu = gpu or cl.device
    nodes = cl.nodes if nodes is None else nodes
    within = cl.gpus_per_node if gpus_per_node is None else gpus_per_node
    t = par.tensor if tensor is None else tensor
    p = par.pipeline if pipeline is None else pipeline
    c = par.context if context is None else context
    ep = par.expert if expert is None else expert
    # links at what collectives achieve of their peak (catalogue.NVLINK_ACHIEVED, NETWORK_ACHIEVED)
    intra = (cl.intra_node_bandwidth * 1e9 if cl.intra_node_bandwidth else gpu.intra_node_bandwidth) \
        * catalogue.NVLINK_ACHIEVED
    inter = (cl.inter_node_bandwidth * 1e9 if cl.inter_node_bandwidth else gpu.inter_node_bandwidth) \
        * catalogue.NETWORK_ACHIEVED
    return {
        "F_peak": gpu.peak_flops[sixteen_bit(spec.training.precision)],
        "F_matmul": gpu.peak_flops[spec.training.precision],
        "eff": cl.efficiency or achieved_efficiency(gpu, spec, t),
        "bw_dp": choose(nodes == 1, intra, inter),
        "bw_tp": choose(t <= within, intra, inter),
        "bw_ep": choose(t * ep <= within, intra, inter),  # expert groups are consecutive ranks
        "bw_pp": choose(t * p <= within, intra, inter),
        "bw_cp": choose(t * c <= within, intra, inter),  # context groups: consecutive ranks after tensor
        "cpu_adam_rate": catalogue.CPU_ADAM_RATE,
        "price": cl.price_per_gpu_hour if cl.price_per_gpu_hour is not None else gpu.price_per_hour,
    }


