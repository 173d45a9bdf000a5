"""The planner's formula inputs, each computed in one place for the plan and the layout search alike.

Every function here accepts Python numbers (the plan: ints and Fractions stay exact) or numpy columns (the
layout search scores every configuration at once); neither path imports the other's machinery.
"""

from __future__ import annotations

import typing
from fractions import Fraction
from typing import Any

from llmspec.planner import numeric
from llmspec.planner.post_inputs import policy_loss_saved, post_training_inputs, sequence_length
from llmspec.planner.regimes import KINDS, bytes_per_param, split_bytes_per_param
from llmspec.spec import catalogue
from llmspec.spec.architecture import Architecture
from llmspec.spec.post_training import sequences_per_example
from llmspec.spec.schema import ParallelismSpec, Spec

# The strategy choices, in the spec's own order: codes into these tuples are what the search's columns hold.
CHECKPOINTING: tuple[str, ...] = typing.get_args(ParallelismSpec.model_fields["activation_checkpointing"].annotation)
OFFLOAD_MODES: tuple[str, ...] = typing.get_args(ParallelismSpec.model_fields["offload_optimizer"].annotation)

PARAMETER_FORMULAS = frozenset(name for name, group in numeric.GROUPS.items()
                               if group in ("Parameters", "Post-training: parameters", "Post-training: frozen weights"))
# Inference, compute-optimal sizing and RL phases have inputs of their own (context, batch, compute, rollouts);
# training plans skip them.
RL_GROUPS = ("Post-training: RL phases", "Post-training: RL step")
OTHER_GROUPS = ("Inference", "Compute-optimal sizing", *RL_GROUPS)
TRAINING_FORMULAS = frozenset(name for name, group in numeric.GROUPS.items() if group not in OTHER_GROUPS)
RL_FORMULAS = frozenset(name for name, group in numeric.GROUPS.items() if group in RL_GROUPS)
# a PPO/GRPO plan reports the step's rl_X in place of the policy's training-step X (memory_peak, time_step, mfu, …)
RL_TOTALS = {name.removeprefix("rl_"): name for name in RL_FORMULAS if name.removeprefix("rl_") in TRAINING_FORMULAS}
# what a stage's evaluation adds to the parameters (evaluated once per model, whatever the layout and strategy)
STAGE_FORMULAS = TRAINING_FORMULAS - PARAMETER_FORMULAS


def formulas_for(results: tuple[str, ...], within: frozenset[str] = STAGE_FORMULAS) -> frozenset[str]:
    """The formulas of ``within`` that ``results`` need, themselves included (what the layout search evaluates:
    its scores, not every figure a plan reports)."""
    needed, todo = set(), list(results)
    while todo:
        name = todo.pop()
        if name in within and name not in needed:
            needed.add(name)
            todo.extend(numeric.ARGUMENTS[name])
    return frozenset(needed)
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


def architecture_inputs(spec: Spec, role: str = "policy", attended_keys: float | None = None) -> dict[str, Any]:
    """Formula inputs that describe the model and the batch (everything but the strategy and the stage); ``role``:
    which model of a PPO run they describe: policy, critic or reward. The model is read from its resolved
    architecture (``spec.model.architecture``), per layer where layers differ. ``attended_keys``: document
    masking's mean keys per query from the prepared corpus (plan's argument)."""
    arch, tr, par = spec.model.architecture, spec.training, spec.parallelism
    moe = arch.moe
    e = 4 if tr.precision == "fp32" else 2
    pairs = sequences_per_example(spec.post_training)
    seq = sequence_length(spec)
    # the role's own inputs after the layout's: a critic's loss saves what the policy's does not
    return {**layout_inputs(spec), **post_training_inputs(spec, e, role), **_layer_kinds(arch, seq),
        "V": arch.vocab_size, "h": arch.d_model, "L": arch.n_layers, "a": arch.n_heads, "k": arch.n_kv_heads,
        "d_h": arch.head_dim, "f": arch.d_ff, "P": arch.max_seq_len,
        "E": moe.n_experts if moe else 1, "K": moe.top_k if moe else 1, "moe": int(moe is not None),
        "tied": int(arch.tie_embeddings), "learned": int(arch.position == "learned"), "rope": int(arch.rope),
        "bias": int(arch.bias), "qkv_bias": int(arch.qkv_bias), "gated": int(arch.gated),
        "fused_qkv": int(arch.fused_qkv), "relu": int(arch.activation == "relu"),
        "layernorm": int(arch.norm == "layernorm"), "dropout": int(arch.dropout > 0),
        "norms_per_block": arch.norms_per_block, "qk_norm_head": int(arch.qk_norm == "head"),
        "qk_norm_full": int(arch.qk_norm == "full"), "post_norm": int(arch.norm_placement != "pre"),
        "parallel_residual": int(arch.parallel_residual), "softcap": int(arch.attn_softcap is not None),
        "final_softcap": int(arch.final_softcap is not None),
        "rotary_dim": arch.rotary_dim,
        "local_rope": int(arch.local_rope),
        **_document_masking(spec, seq, attended_keys),
        "fp8_saved": int(tr.precision == "fp8" and tr.fp8_library == "transformer_engine"),
        # pairwise objectives run a chosen and a rejected sequence per example
        "s": seq, "B": tr.global_batch_size * pairs,
        "D": tr.total_tokens * pairs,
        "e": e, "w_bytes": e, "g_bucket": e,
        "g_comm": 4 if par.byte_regime == "megatron" else e,
        # CPU kernels keep LayerNorm statistics and dropout masks in the activation dtype; GPU kernels in
        # fp32 and bool.
        "e_stat": e if spec.cluster.device.name == "cpu" else 4,
        "e_mask": e if spec.cluster.device.name == "cpu" else 1,
        "sequence_parallel": int(par.sequence_parallel),
        "tp_comm_overlap": int(par.tp_comm_overlap), "ep_comm_overlap": int(par.ep_comm_overlap),
        "steps": tr.steps,
        "overlap_comm": int(par.overlap_comm), "causal": 1, "reduce_bucket": par.reduce_bucket_size,
        "prefetch_bucket": par.prefetch_bucket_size,
    }


def _document_masking(spec: Spec, seq: int, attended_keys: float | None = None) -> dict[str, Any]:
    """Document masking's inputs: whether the model masks attention to each document (pretraining only), and the
    keys a query then attends to on average: ``attended_keys`` where the caller read the prepared documents'
    lengths (llmspec.data.attention.attended_keys), else causal attention's (s + 1)/2, an upper bound."""
    masking = int(spec.data.document_masking and spec.post_training is None)
    return {"document_masking": masking,
            "document_keys": attended_keys if masking and attended_keys is not None else Fraction(seq + 1, 2)}


def _layer_kinds(arch: Architecture, seq: int) -> dict[str, Any]:
    """Layers per attention kind and their spans: a sliding layer's window, a chunked layer's chunk (the sequence
    where the model has none), and whether a window or chunk shorter than the sequence needs a mask."""
    layers = {"sliding": 0, "chunked": 0}
    spans = {"sliding": seq, "chunked": seq}
    for (kind, span), count in arch.kinds.items():
        if kind != "full":
            layers[kind] += count
            spans[kind] = span
    return {"L_sliding": layers["sliding"], "L_chunked": layers["chunked"], "window": spans["sliding"],
            "chunk": spans["chunked"], "masked": int(layers["sliding"] > 0 and spans["sliding"] < seq),
            "chunk_masked": int(layers["chunked"] > 0 and spans["chunked"] < seq)}


def layout_inputs(spec: Spec, gpus: Any = None, gpus_per_node: Any = None, tensor: Any = None, context: Any = None,
                  pipeline: Any = None, virtual: Any = None, expert: Any = None, micro_batch: Any = None
                  ) -> dict[str, Any]:
    """Formula inputs a parallel layout sets: the degrees, the micro-batch and the accumulation it leaves, the GPUs,
    and the blocks on the last and the fullest other stage. The spec's own layout, or (the layout search) numpy
    columns of each, whose blocks split evenly."""
    cl, par, tr = spec.cluster, spec.parallelism, spec.training
    n = cl.gpus if gpus is None else gpus
    t = par.tensor if tensor is None else tensor
    c = par.context if context is None else context
    p = par.pipeline if pipeline is None else pipeline
    # `auto` is resolved by planner.training.plan before a layout is evaluated (the layout search runs 1 …)
    v = (1 if par.virtual_stages == "auto" else par.virtual_stages) if virtual is None else virtual
    mb = tr.micro_batch_size if micro_batch is None else micro_batch
    # the spec's own layout: its derived degree and accumulation (a copy with its splits undone, as measure plans a
    # single device, keeps the run's); a searched layout: what its columns leave
    own = gpus is tensor is context is pipeline is micro_batch is None
    data = par.data_parallel if own else n // (t * p * c)
    layers = spec.model.n_layers
    blocks = spec.stage_blocks if pipeline is None else None  # the spec's split, uneven where it says so
    return {
        "t": t, "p": p, "cp": c, "v": v, "ep": par.expert if expert is None else expert,
        # ZeRO shards, and gradients reduce, over every rank holding the same weights: data × context parallel
        "dp": data * c, "m": tr.gradient_accumulation_steps if own else tr.global_batch_size // (mb * data),
        "b": mb * sequences_per_example(spec.post_training), "capacity": expert_rows_per_routed_token(spec, mb, c),
        "loss_saved": policy_loss_saved(spec, mb),  # the policy's, per micro-batch of this layout
        "n_gpu": n, "gpus_per_node": cl.gpus_per_node if gpus_per_node is None else gpus_per_node,
        # an even split puts a block more on the last (layers mod p) stages (Spec.stage_blocks)
        "L_last": blocks[-1] if blocks else -(-layers // p),
        "L_max": max(blocks[:-1], default=0) if blocks else choose(p > 1, layers // p + (layers % p > 1), 0),
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


def stage_inputs(spec: Spec, env: dict[str, Any], codes: tuple, first: Any, last: Any, rank: Any,
                 layers: Any) -> dict[str, Any]:
    """Every formula input of one GPU on one pipeline stage, for the plan (exact numbers) and the layout search
    (numpy columns) alike: ``env`` holds the model's, the device's, the layout's and the strategy's inputs (its
    ``codes``: strategy_inputs' arguments) with the parameter formulas evaluated; the stage adds what it holds
    (``psi``: its parameters, or what a fine-tune trains), the experts' own ZeRO sharding and its largest
    module."""
    tensor = env["t"]
    out = dict(env)
    # a fine-tune shards what trains; its frozen weights are formulas of their own (memory_frozen)
    psi = out["params_trainable"] if spec.post_training is not None else stage_params(out, first, last, layers,
                                                                                       tensor)
    if spec.model.moe is not None:
        out.update(shard_experts(spec, out, codes, psi, layers, tensor, out["dp"], out["ep"]))
    out.update({"psi": psi, "first_stage": first, "last_stage": last, "rank": rank, "L_here": layers,
                "P_L": largest_module(out, tensor)})
    return out


def evaluate_stage(spec: Spec, env: dict[str, Any], codes: tuple, first: Any, last: Any, rank: Any,
                   layers: Any, names: frozenset[str] = STAGE_FORMULAS) -> dict[str, Any]:
    """The training formulas of one stage (stage_inputs) evaluated, every one or ``names``: numbers, or a column
    per layout."""
    return numeric.evaluate(stage_inputs(spec, env, codes, first, last, rank, layers), names)


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
