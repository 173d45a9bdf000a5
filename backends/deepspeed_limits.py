"""What the ``deepspeed`` engine (``llmspec.backends.deepspeed_worker``) refuses, without importing DeepSpeed: the
layouts and features the plan counts but DeepSpeed (as `llmspec run` drives it) does not execute."""

from __future__ import annotations

from llmspec.backends.nvme_check import nvme_refusals
from llmspec.planner.training import plan
from llmspec.spec.schema import Spec
from llmspec.train.limits import Refusal, compiled_model_refusals


def refusals(spec: Spec) -> list[Refusal]:
    par, cl, moe = spec.parallelism, spec.cluster, spec.model.moe
    found = compiled_model_refusals(spec)
    if par.byte_regime == "pure16":
        found.append(Refusal("parallelism.byte_regime", "pure16", "the engines keep an fp32 master: DeepSpeed's "
                             "bf16/fp16 optimizers step an fp32 copy", "use deepspeed, zero_paper or megatron to run"))
    if cl.nodes > 1 and not cl.hosts:
        found.append(Refusal("cluster.nodes", cl.nodes, "DeepSpeed's launcher starts ranks on named hosts; no host is "
                             "ever guessed", f"name the hosts, --hostfile PATH (DeepSpeed's format, "
                             f"slots={cl.gpus_per_node} each) or cluster.hosts", verdict="not run without its hosts"))
    arch = spec.model.architecture
    per_layer = [field for field, used in (
        ("model.layer_types", not arch.uniform), ("model.attention_chunk_size", "chunked" in dict(arch.kinds)),
        ("model.rope_scaling", arch.rope_scaling is not None and arch.rope_scaling.type == "longrope")) if used]
    if par.pipeline > 1 and per_layer:
        found.append(Refusal(per_layer[0], "", "the pipeline's block layers (pipeline.py) take one RoPE table and "
                             "one mask, the same for every layer", "set parallelism.pipeline=1 to run",
                             said=f"{per_layer[0]} with pipeline {par.pipeline}"))
    if par.tensor > 1 and par.pipeline > 1:
        found.append(Refusal("parallelism.tensor", par.tensor, "DeepSpeed's pipeline engine takes no AutoTP",
                             "run one of the two",
                             said=f"parallelism.tensor {par.tensor} with pipeline {par.pipeline}"))
    if par.expert > 1:
        unsupported = [text for text, present in (
            (f"tensor {par.tensor}", par.tensor > 1), (f"pipeline {par.pipeline}", par.pipeline > 1),
            ("zero_stage 3", par.zero_stage == 3), ("optimizer offload", par.offload_optimizer != "none"),
            (f"{spec.model.mlp} experts", spec.model.mlp != "swiglu"), ("biases", spec.model.bias)) if present]
        if unsupported:
            found.append(Refusal("parallelism.expert", par.expert, "`llmspec run` runs DeepSpeed AutoEP on SwiGLU "
                                 "experts with ZeRO 0-2, without tensor or pipeline parallelism or offload",
                                 said=f"parallelism.expert {par.expert} with {', '.join(unsupported)}"))
        if moe is not None and moe.capacity_factor is not None:
            found.append(Refusal("model.moe.capacity_factor", moe.capacity_factor, "DeepSpeed's AutoEP routes every "
                                 "token, dropless", "drop capacity_factor or set parallelism.expert=1 to run",
                                 said=f"model.moe.capacity_factor with parallelism.expert {par.expert}"))
    if par.tensor > 1 and par.sequence_parallel:
        found.append(Refusal("parallelism.sequence_parallel", True, "DeepSpeed's AutoTP holds the activations outside "
                             "the split layers whole", "set it to false to run, and the plan counts them whole too"))
    if par.tensor > 1 and par.tp_comm_overlap:
        found.append(Refusal("parallelism.tp_comm_overlap", True, "DeepSpeed's AutoTP waits for each collective",
                             "set it to false to run, and the plan counts them exposed too"))
    if par.expert > 1 and par.ep_comm_overlap:
        found.append(Refusal("parallelism.ep_comm_overlap", True, "DeepSpeed's AutoEP waits for each all-to-all",
                             "set it to false to run, and the plan counts them exposed too"))
    if par.context > 1:
        found.append(Refusal("parallelism.context", par.context, "the compiled model's attention exchanges no keys "
                             "and values between GPUs", "set parallelism.context=1 to run", verdict="planned, not "
                             "trained"))
    # only a pipeline that asks to interleave is planned here (`auto` resolves to the plan's pick; it runs at 1)
    chunks = 1 if par.virtual_stages == 1 or par.pipeline == 1 else \
        plan(spec, alternatives=False).spec.parallelism.virtual_stages
    if chunks > 1:
        picked = f" (the plan picks {chunks})" if par.virtual_stages == "auto" else ""
        found.append(Refusal("parallelism.virtual_stages", par.virtual_stages, "DeepSpeed's pipeline runs one chunk "
                             "per rank, 1F1B", "set parallelism.virtual_stages=1 to run", verdict="planned, not "
                             "trained", said=f"parallelism.virtual_stages {par.virtual_stages}{picked}"))
    found += nvme_refusals(spec)  # last: it looks at this node's disk, and plans again
    return found


def runs_as(spec: Spec) -> str:
    """How the engine runs a spec it does not refuse: its ranks and the DeepSpeed feature each degree uses."""
    par = spec.parallelism
    how = [f"ZeRO-{par.zero_stage}"]
    how += ["AutoTP"] * (par.tensor > 1) + ["PipelineModule, 1F1B"] * (par.pipeline > 1) + ["AutoEP"] * (par.expert > 1)
    how += [f"{kind} offload to {where}" for kind, where in (("optimizer", par.offload_optimizer),
                                                               ("parameter", par.offload_params)) if where != "none"]
    ranks = f"{spec.cluster.gpus} ranks" if spec.cluster.gpus > 1 else "one rank"
    return f"runs, {ranks}: {', '.join(how)}"
