"""Cross-field rules. Each returns a Problem naming the field the user should change.

These run inside ``Spec`` validation (after every field has parsed), so a spec object that exists is consistent.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from llmspec.errors import Problem
from llmspec.spec import catalogue

# The optimizers DeepSpeed runs on the CPU under optimizer offload (ds_config.json names them).
OFFLOADABLE_OPTIMIZERS = ("adamw", "adam")

if TYPE_CHECKING:
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
    if m.moe is not None and m.moe.top_k > m.moe.n_experts:
        bad("model.moe.top_k", f"top_k {m.moe.top_k} exceeds n_experts {m.moe.n_experts}")

    # --- training -------------------------------------------------------------------------------------------
    if tr.seq_len > m.max_seq_len:
        bad("training.seq_len", f"seq_len {tr.seq_len} exceeds model.max_seq_len {m.max_seq_len}")
    if tr.schedule.min_lr > tr.optimizer.lr:
        bad("training.schedule.min_lr", f"min_lr {tr.schedule.min_lr} exceeds optimizer.lr {tr.optimizer.lr}")

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
    if par.sequence_parallel and t == 1:
        bad("parallelism.sequence_parallel", "sequence parallelism splits tensor-parallel activations; it needs "
                                             "parallelism.tensor > 1")
    if p > m.n_layers:
        bad("parallelism.pipeline", f"pipeline degree {p} exceeds n_layers {m.n_layers}")
    if par.virtual_stages > 1 and (p == 1 or m.n_layers % (p * par.virtual_stages)):
        bad("parallelism.virtual_stages",
            f"virtual_stages {par.virtual_stages} needs pipeline > 1 and n_layers divisible by pipeline × stages")
    given = [n for n in (par.first_stage_layers, par.last_stage_layers) if n is not None]
    if given and p == 1:
        bad("parallelism.first_stage_layers", "first/last_stage_layers split a pipeline: they need pipeline > 1")
    elif given:
        rest, stages = m.n_layers - sum(given), p - len(given)
        if (stages == 0 and rest != 0) or (stages and (rest < stages or rest % stages)):
            bad("parallelism.first_stage_layers",
                f"n_layers {m.n_layers} less first/last_stage_layers ({' + '.join(map(str, given))}) leaves {rest} "
                f"for the other {stages} stage(s): they must divide evenly, at least one each")
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
    if cl.hosts is not None and len(cl.hosts) != cl.nodes:
        bad("cluster.hosts", f"{len(cl.hosts)} host(s) for cluster.nodes {cl.nodes}: name one host per node")
    elif cl.hosts is not None and len(set(cl.hosts)) != len(cl.hosts):
        bad("cluster.hosts", "a host is listed twice")
    gpus = cl.gpus
    if gpus % (t * p):
        bad("parallelism.tensor", f"{gpus} GPUs (cluster.gpus_per_node × nodes) are not divisible by "
                                  f"tensor × pipeline = {t * p}")
    elif par.data_parallel is not None and par.data_parallel != gpus // (t * p):
        bad("parallelism.data_parallel", f"data_parallel is derived as gpus / (tensor × pipeline) = "
                                         f"{gpus // (t * p)}; remove it or set it to that value")
    elif (gpus // (t * p)) % par.expert:
        bad("parallelism.expert", f"expert groups are carved from the data-parallel ranks: expert degree "
                                  f"{par.expert} must divide data_parallel {gpus // (t * p)}")
    else:
        dp = gpus // (t * p)
        per_step = tr.micro_batch_size * dp
        if tr.global_batch_size % per_step:
            bad("training.global_batch_size",
                f"global_batch_size {tr.global_batch_size} is not divisible by micro_batch_size × data_parallel"
                f" = {tr.micro_batch_size} × {dp}")
        elif tr.gradient_accumulation_steps not in (None, tr.global_batch_size // per_step):
            bad("training.gradient_accumulation_steps",
                f"derived as global / (micro × data_parallel) = {tr.global_batch_size // per_step}; remove it")
    return problems
