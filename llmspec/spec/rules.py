"""Cross-field rules. Each returns a Problem naming the field the user should change.

These run inside ``Spec`` validation (after every field has parsed), so a spec object that exists is consistent.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from llmspec.errors import Problem
from llmspec.spec import catalogue
from llmspec.spec.architecture import layer_types as layer_types_of
from llmspec.spec.post_training import QUANTISED, linear_names

# The optimizers DeepSpeed runs on the CPU under optimizer offload (ds_config.json names them).
OFFLOADABLE_OPTIMIZERS = ("adamw", "adam")

if TYPE_CHECKING:
    from llmspec.spec.model import ModelSpec
    from llmspec.spec.schema import Spec


def consistency_problems(spec: Spec) -> list[Problem]:
    problems: list[Problem] = []

    def bad(path: str, message: str) -> None:
        problems.append(Problem(path, message))

    m, tr, par, cl = spec.model, spec.training, spec.parallelism, spec.cluster
    kv = m.n_kv_heads or m.n_heads

    # --- architecture -------------------------------------------------------------------------------------
    if m.head_dim is None:
        bad("model.n_heads", f"d_model {m.d_model} is not divisible by n_heads {m.n_heads}; "
                             "change n_heads or set model.head_dim explicitly")
    if kv > m.n_heads:
        bad("model.n_kv_heads", f"n_kv_heads {kv} exceeds n_heads {m.n_heads}")
    elif m.n_heads % kv:
        bad("model.n_kv_heads", f"n_heads {m.n_heads} is not divisible by n_kv_heads {kv} (GQA groups must be equal)")
    if m.position == "rope" and m.head_dim is not None and m.head_dim % 2:
        bad("model.head_dim", f"RoPE rotates pairs of dimensions: head_dim {m.head_dim} must be even")
    if m.rope_scaling is not None and m.position != "rope":
        bad("model.rope_scaling", "rope_scaling needs position: rope")
    if m.rope_scaling is not None and m.rope_scaling.type == "llama3" and (
            m.rope_scaling.high_freq_factor <= m.rope_scaling.low_freq_factor):
        # Llama 3's smoothing interpolates between the two wavelength bounds, dividing by high - low
        bad("model.rope_scaling.high_freq_factor", f"high_freq_factor {m.rope_scaling.high_freq_factor:g} must "
                                                   f"exceed low_freq_factor {m.rope_scaling.low_freq_factor:g} "
                                                   "(Llama 3.1: 4 and 1)")
    if m.moe is not None and m.moe.top_k > m.moe.n_experts:
        bad("model.moe.top_k", f"top_k {m.moe.top_k} exceeds n_experts {m.moe.n_experts}")
    if m.head_dim is not None:
        _layer_problems(m, bad)

    # --- training -------------------------------------------------------------------------------------------
    if tr.seq_len > m.max_seq_len:
        bad("training.seq_len", f"seq_len {tr.seq_len} exceeds model.max_seq_len {m.max_seq_len}")
    if tr.schedule.min_lr > tr.optimizer.lr:
        bad("training.schedule.min_lr", f"min_lr {tr.schedule.min_lr} exceeds optimizer.lr {tr.optimizer.lr}")
    if tr.fp8_library != "transformer_engine" and tr.precision != "fp8":
        bad("training.fp8_library", f"{tr.fp8_library} is set but precision is {tr.precision}: it names whose FP8 "
                                    "linears precision fp8 plans")

    if spec.data.document_masking:
        arch = m.architecture
        other = [text for text, used in (
            ("model.position learned", not arch.rope), ("model.layer_types", not arch.uniform),
            ("model.sliding_window", m.sliding_window is not None), ("model.attn_softcap", m.attn_softcap is not None),
            ("model.attention_chunk_size", m.attention_chunk_size is not None),
            ("post_training", spec.post_training is not None)) if used]
        if other:
            bad("data.document_masking", f"document masking is compiled for pretraining a RoPE model whose layers "
                                         f"all attend to every earlier key; not with {other[0]}")
    own_vocab = spec.data.tokenizer.vocab_size
    if own_vocab is not None and own_vocab > m.vocab_size:
        bad("data.tokenizer.vocab_size", f"a tokenizer of {own_vocab} tokens for model.vocab_size {m.vocab_size}: "
                                         f"ids from {m.vocab_size} on have no embedding (raise model.vocab_size, or "
                                         "lower this)")

    # --- cluster --------------------------------------------------------------------------------------------
    device = None
    if isinstance(cl.gpu, str):
        device = catalogue.lookup(cl.gpu)
        if device is None:
            close = difflib.get_close_matches(cl.gpu, catalogue.names(), n=1, cutoff=0.4)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            bad("cluster.gpu", f"unknown GPU '{cl.gpu}'{hint} (known: {', '.join(catalogue.names())}; "
                               "or give memory_gib and peak_tflops)")
    else:
        device = cl.gpu.to_gpu()
    if device is not None and cl.memory_reserve_gib * 2**30 >= device.memory_bytes:
        bad("cluster.memory_reserve_gib", f"reserve {cl.memory_reserve_gib:g} GiB leaves nothing of "
                                          f"{device.name}'s {device.memory_bytes / 2**30:g} GiB")
    if device is not None and tr.precision not in device.peak_flops:
        have = ", ".join(sorted(device.peak_flops))
        bad("training.precision", f"{device.name} does not support {tr.precision} (supports {have})")

    # --- parallelism ----------------------------------------------------------------------------------------
    t, p = par.tensor, par.pipeline
    if m.n_heads % t or kv % t:
        bad("parallelism.tensor", f"tensor degree {t} must divide n_heads {m.n_heads} and n_kv_heads {kv}")
    if m.d_ff % t:
        bad("parallelism.tensor", f"tensor degree {t} must divide d_ff {m.d_ff}")
    if t > 1 and m.qk_norm == "full":
        bad("model.qk_norm", f"qk_norm full normalises the whole q and k projections, which tensor degree {t} "
                             "splits by heads (DeepSpeed AutoTP does not gather them): use tensor 1")
    if par.sequence_parallel and t == 1:
        bad("parallelism.sequence_parallel", "sequence parallelism splits tensor-parallel activations; it needs "
                                             "parallelism.tensor > 1")
    if p > m.n_layers:
        bad("parallelism.pipeline", f"pipeline degree {p} exceeds n_layers {m.n_layers}")
    given = [n for n in (par.first_stage_layers, par.last_stage_layers) if n is not None]
    split_ok = p <= m.n_layers
    if given and p == 1:
        bad("parallelism.first_stage_layers", "first/last_stage_layers split a pipeline: they need pipeline > 1")
    elif given:
        rest, stages = m.n_layers - sum(given), p - len(given)
        if (stages == 0 and rest != 0) or (stages and (rest < stages or rest % stages)):
            split_ok = False
            bad("parallelism.first_stage_layers",
                f"n_layers {m.n_layers} less first/last_stage_layers ({' + '.join(map(str, given))}) leaves {rest} "
                f"for the other {stages} stage(s): they must divide evenly, at least one each")
    v = par.virtual_stages
    if v != "auto" and v > 1 and p == 1:
        bad("parallelism.virtual_stages", f"virtual_stages {v} interleaves a pipeline: it needs pipeline > 1")
    elif v != "auto" and v > 1 and split_ok and (fewest := min(spec.stage_blocks)) < v:
        bad("parallelism.virtual_stages", f"virtual_stages {v}: a stage of {fewest} block{'s' * (fewest != 1)} "
                                          f"cannot run {v} chunks (at least one block each)")
    if par.expert > 1 and m.moe is None:
        bad("parallelism.expert", f"expert degree {par.expert} splits experts: the model has none (model.moe)")
    elif par.expert > 1 and m.moe.n_experts % par.expert:
        bad("parallelism.expert", f"expert degree {par.expert} must divide n_experts {m.moe.n_experts}")
    if p > 1 and par.zero_stage > 1:
        bad("parallelism.zero_stage", f"DeepSpeed pipelines support ZeRO stage 0 or 1, not {par.zero_stage}")
    if par.offload_params != "none" and par.zero_stage != 3:
        bad("parallelism.offload_params", "parameter offload needs zero_stage: 3")
    if par.offload_optimizer != "none" and tr.optimizer.name not in OFFLOADABLE_OPTIMIZERS:
        bad("parallelism.offload_optimizer", f"offload runs DeepSpeed's CPU Adam/AdamW; training.optimizer.name "
                                             f"{tr.optimizer.name} cannot be offloaded")
    if par.offload_optimizer != "none" and par.zero_stage == 0:
        bad("parallelism.offload_optimizer", "optimizer offload needs zero_stage 1, 2 or 3")
    if tr.precision == "fp8" and spec.post_training is not None:
        bad("training.precision", "fp8 is planned for pretraining (a frozen or quantised base under FP8 matmuls is "
                                  "not modelled): use bf16 for post-training")
    if par.byte_regime == "pure16" and tr.precision == "fp32":
        bad("parallelism.byte_regime", "pure16 keeps weights, gradients and optimizer states in 16 bits: it needs "
                                       "training.precision bf16 or fp16")
    if spec.post_training is not None:
        _post_training_problems(spec, bad)
    if cl.hosts is not None and len(cl.hosts) != cl.nodes:
        bad("cluster.hosts", f"{len(cl.hosts)} host(s) for cluster.nodes {cl.nodes}: name one host per node")
    elif cl.hosts is not None and len(set(cl.hosts)) != len(cl.hosts):
        bad("cluster.hosts", "a host is listed twice")
    cp = par.context
    if cp > 1 and tr.seq_len % (2 * cp):
        bad("parallelism.context", f"context degree {cp} splits each sequence into 2 × {cp} chunks (two per GPU, "
                                   f"balancing causal attention): training.seq_len {tr.seq_len} must divide by "
                                   f"{2 * cp}")
    gpus, split = cl.gpus, t * p * cp
    degrees = "tensor × pipeline" + " × context" * (cp > 1)
    if gpus % split:
        bad("parallelism.tensor", f"{gpus} GPUs (cluster.gpus_per_node × nodes) are not divisible by "
                                  f"{degrees} = {split}")
    elif par.data_parallel is not None and par.data_parallel != gpus // split:
        bad("parallelism.data_parallel", f"data_parallel is derived as gpus / ({degrees}) = "
                                         f"{gpus // split}; remove it or set it to that value")
    elif (gpus // split) % par.expert:
        bad("parallelism.expert", f"expert groups are carved from the data-parallel ranks: expert degree "
                                  f"{par.expert} must divide data_parallel {gpus // split}")
    else:
        dp = gpus // split
        per_step = tr.micro_batch_size * dp
        if tr.global_batch_size % per_step:
            bad("training.global_batch_size",
                f"global_batch_size {tr.global_batch_size} is not divisible by micro_batch_size × data_parallel"
                f" = {tr.micro_batch_size} × {dp}")
        elif tr.gradient_accumulation_steps not in (None, tr.global_batch_size // per_step):
            bad("training.gradient_accumulation_steps",
                f"derived as global / (micro × data_parallel) = {tr.global_batch_size // per_step}; remove it")
    return problems


def _layer_problems(m: ModelSpec, bad) -> None:
    """The 2026 families' fields: each read only where the model uses it, each consistent with the rest."""
    rope = m.position == "rope"
    for field, value in (("partial_rotary", m.partial_rotary != 1), ("nope_layers", m.nope_layers is not None),
                         ("rope_local_theta", m.rope_local_theta is not None)):
        if value and not rope:
            bad(f"model.{field}", f"{field} shapes RoPE: it needs position: rope")
    rotary = int(m.head_dim * m.partial_rotary)
    if rope and m.partial_rotary != 1 and (rotary == 0 or rotary % 2):
        bad("model.partial_rotary", f"partial_rotary {m.partial_rotary:g} of head_dim {m.head_dim} rotates "
                                    f"{rotary} dims: RoPE needs a positive, even number of them")
    if isinstance(m.nope_layers, list) and any(index >= m.n_layers for index in m.nope_layers):
        bad("model.nope_layers", f"layer {max(m.nope_layers)} does not exist: layers are 0 … {m.n_layers - 1}")
    kinds = set(m.layer_types or [])
    if m.layer_types is not None and len(m.layer_types) > m.n_layers:
        bad("model.layer_types", f"{len(m.layer_types)} layer types for n_layers {m.n_layers}: give one per layer, "
                                 "or a shorter pattern that repeats")
    if "sliding" in kinds and m.sliding_window is None:
        bad("model.sliding_window", "layer_types has sliding layers: set their window")
    if m.layer_types is not None and m.sliding_window is not None and "sliding" not in kinds:
        bad("model.sliding_window", "no layer of layer_types is sliding: the window is unused (remove it)")
    if "chunked" in kinds and m.attention_chunk_size is None:
        bad("model.attention_chunk_size", "layer_types has chunked layers: set their attention_chunk_size")
    if m.attention_chunk_size is not None and "chunked" not in kinds:
        bad("model.attention_chunk_size", "no layer is chunked (model.layer_types): the chunk size is unused")
    if m.rope_local_theta is not None and rope and not kinds - {"full"} and m.sliding_window is None:
        bad("model.rope_local_theta", "rope_local_theta is the base of sliding and chunked layers: the model has "
                                      "none (model.layer_types)")
    layers = m.architecture.layers
    varied = len(set(layers)) > 1
    if varied and not rope:
        bad("model.layer_types", "layers of different kinds are compiled for RoPE models (position: rope)")
    has_nope = any(not layer.rope for layer in layers) and rope
    if has_nope and set(layer_types_of(m)) - {"full"}:
        bad("model.nope_layers", "NoPE layers beside sliding or chunked ones are not compiled yet: use one or the "
                                 "other")
    if m.rope_local_theta is not None and (has_nope or "full" not in set(layer_types_of(m))):
        bad("model.rope_local_theta", "rope_local_theta is the base of the sliding and chunked layers beside full "
                                      "ones (Gemma 3), without NoPE layers")
    if m.rope_local_theta is not None and m.rope_scaling is not None and m.rope_scaling.type in ("yarn", "longrope"):
        bad("model.rope_scaling.type", f"{m.rope_scaling.type} beside rope_local_theta is not compiled: linear or "
                                       "llama3 scale the full layers")
    if m.qk_norm != "none" and (m.norm != "rmsnorm" or not rope):
        bad("model.qk_norm", "QK-norm is an RMSNorm on the q and k projections of a RoPE model: it needs norm "
                             "rmsnorm and position rope")
    if m.dropout > 0 and (m.norm_placement != "pre" or m.embed_scale is not None):
        bad("model.dropout", "dropout is compiled for pre-norm blocks without an embedding scale (GPT-2)")
    if m.embed_scale is not None and not rope:
        bad("model.embed_scale", "embed_scale is compiled for RoPE models (learned positions add a table)")
    if m.parallel_residual and m.norm_placement != "pre":
        bad("model.parallel_residual", "a parallel residual block is pre-norm (GPT-NeoX): norm_placement pre")
    scaling = m.rope_scaling
    if scaling is not None:
        longrope = scaling.type == "longrope"
        for field in ("short_factor", "long_factor"):
            factors = getattr(scaling, field)
            if factors is not None and not longrope:
                bad(f"model.rope_scaling.{field}", f"{field} is read by rope type longrope, not {scaling.type}")
            elif longrope and (factors is None or len(factors) != rotary // 2):
                have = "none" if factors is None else f"{len(factors)}"
                bad(f"model.rope_scaling.{field}", f"longrope needs one factor per rotated frequency: {rotary // 2} "
                                                   f"(rotary dims / 2), {have} given")
        if scaling.attention_factor is not None and scaling.type not in ("yarn", "longrope"):
            bad("model.rope_scaling.attention_factor", f"attention_factor is read by yarn and longrope, not "
                                                       f"{scaling.type}")


def _post_training_problems(spec: Spec, bad) -> None:
    m, par, post = spec.model, spec.parallelism, spec.post_training
    adapter, method = post.adapter, post.method
    where = "post_training.adapter"
    if adapter.type == "none":
        # a knob at its default is harmless (a dumped spec.yaml writes every field)
        knobs = sorted(name for name in adapter.model_fields_set - {"type"}
                       if getattr(adapter, name) != type(adapter).model_fields[name].default)
        if knobs:
            bad(f"{where}.{knobs[0]}", f"{knobs[0]} is set but {where}.type is none (full fine-tuning): set the type "
                                       "to lora or prefix, or remove it")
    if adapter.type == "lora" and adapter.targets != "all-linear":
        known = linear_names(m.fused_qkv, m.gated, m.moe is not None)
        unknown = [name for name in adapter.targets if name not in known]
        if unknown or not adapter.targets:
            bad(f"{where}.targets", f"{unknown[0] if unknown else 'an empty list'} is not a linear of this model "
                                    f"(its linears: {', '.join(known)}; or all-linear)")
        elif len(set(adapter.targets)) != len(adapter.targets):
            bad(f"{where}.targets", "a target is listed twice")
    if post.has_reference and m.moe is not None and m.moe.capacity_factor is not None:
        bad("model.moe.capacity_factor", f"{method}'s reference and rollouts run the model out of training, "
                                         "where every token is routed: capacity is planned for sft and reward only")
    if adapter.type != "none" and m.moe is not None:
        bad(f"{where}.type", "adapters on a mixture of experts are not planned yet (a frozen MoE's saved tensors "
                             "depend on routing): fine-tune it fully (type none)")
    if adapter.type == "prefix" and (m.sliding_window is not None or m.attention_chunk_size is not None):
        bad(f"{where}.type", "prefix key/values sit before the first position: a sliding window would drop them "
                             "from every later query (model.sliding_window)")
    if adapter.type == "prefix" and m.attn_softcap is not None:
        bad(f"{where}.type", "prefix tuning runs through SDPA; soft-capped attention (model.attn_softcap) is "
                             "written out: use lora")
    if post.base_precision in QUANTISED and adapter.type == "none":
        bad("post_training.base_precision", f"{post.base_precision} stores the frozen weights quantised, which "
                                            "cannot be trained: set post_training.adapter.type to lora or prefix")
    if post.base_precision not in (*QUANTISED, spec.training.precision):
        bad("post_training.base_precision", f"a {post.base_precision} base in a {spec.training.precision} run: "
                                            "unquantised frozen weights are stored in training.precision (set "
                                            f"{spec.training.precision}, or quantise: int8, nf4)")
    if post.double_quant and post.base_precision != "nf4":
        bad("post_training.double_quant", "double quantisation applies to nf4's absmax constants: it needs "
                                          "post_training.base_precision nf4")
    if getattr(post, "reference", None) == "adapter_off" and adapter.type == "none":
        bad("post_training.reference", "adapter_off uses the base under the adapter as the reference: it needs "
                                       "post_training.adapter.type lora or prefix")
    if post.generates:
        length = post.prompt_len + post.response_len
        if length > spec.training.seq_len:
            bad("post_training.response_len", f"prompt_len {post.prompt_len} + response_len {post.response_len} "
                                              f"exceeds training.seq_len {spec.training.seq_len}")
        group = getattr(post, "group_size", 1)
        if post.rollouts_per_step % group:
            bad("post_training.rollouts_per_step", f"rollouts_per_step {post.rollouts_per_step} is not a multiple "
                                                   f"of group_size {group}")
    split = [f"{name} {degree}" for name, degree in (("tensor", par.tensor), ("pipeline", par.pipeline),
                                                     ("context", par.context), ("expert", par.expert))
             if degree > 1]
    if split:
        bad(f"parallelism.{split[0].split()[0]}", f"post-training is planned over data parallelism (ZeRO 0-3, "
                                                  f"offload); {split[0]} is not supported with post_training")
