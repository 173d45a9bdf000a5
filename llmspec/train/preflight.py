"""Pre-flight: refuse, before any data is prepared, what `llmspec run` plans but cannot execute, and a spec whose
GPUs this machine does not have (one line: what is missing, what was found)."""

from __future__ import annotations

from pathlib import Path

from llmspec.errors import DoesNotFitError, LLMSpecError
from llmspec.planner.training import plan
from llmspec.spec.post_training import RL_METHODS
from llmspec.spec.schema import CustomGPU, Spec
from llmspec.spec.units import fmt_bytes


def check_runnable(spec: Spec) -> None:
    """Refuse, before anything is prepared, what `llmspec run` plans but cannot execute on this machine."""
    par, cl = spec.parallelism, spec.cluster
    post = spec.post_training
    if post is not None and post.method in RL_METHODS:
        check_rl_runnable(spec)
    if spec.training.precision == "fp8":
        raise LLMSpecError("training.precision fp8: planned, not run (the compiled model's matmuls have no FP8 "
                           "path; Transformer Engine would add one); set bf16 to run")
    if par.byte_regime == "pure16":
        raise LLMSpecError("parallelism.byte_regime pure16: planned, not run (the engines keep an fp32 master); "
                           "use deepspeed, zero_paper or megatron to run")
    if cl.nodes > 1 and not cl.hosts:
        raise LLMSpecError(f"cluster.nodes {cl.nodes}: name the hosts, --hostfile PATH (DeepSpeed's format, "
                           f"slots={cl.gpus_per_node} each) or cluster.hosts; no host is ever guessed")
    if par.tensor > 1 and par.pipeline > 1:
        raise LLMSpecError(f"parallelism.tensor {par.tensor} with pipeline {par.pipeline}: planned, not run "
                           "(DeepSpeed's pipeline engine takes no AutoTP); run one of the two")
    if par.expert > 1:
        unsupported = [text for text, present in (
            (f"tensor {par.tensor}", par.tensor > 1), (f"pipeline {par.pipeline}", par.pipeline > 1),
            ("zero_stage 3", par.zero_stage == 3), ("optimizer offload", par.offload_optimizer != "none"),
            (f"{spec.model.mlp} experts", spec.model.mlp != "swiglu"), ("biases", spec.model.bias)) if present]
        if unsupported:
            raise LLMSpecError(f"parallelism.expert {par.expert} with {', '.join(unsupported)}: planned, not run "
                               "(`llmspec run` runs DeepSpeed AutoEP on SwiGLU experts with ZeRO 0-2, without "
                               "tensor or pipeline parallelism or offload)")
    if par.expert > 1 and spec.model.moe.capacity_factor is not None:
        raise LLMSpecError(f"model.moe.capacity_factor with parallelism.expert {par.expert}: planned, not run "
                           "(DeepSpeed's AutoEP routes every token, dropless); drop capacity_factor or set "
                           "parallelism.expert=1 to run")
    if par.tensor > 1 and par.sequence_parallel:
        raise LLMSpecError("parallelism.sequence_parallel: planned, not run (DeepSpeed's AutoTP holds the "
                           "activations outside the split layers whole); set it to false to run, and the plan "
                           "counts them whole too")
    if par.tensor > 1 and par.tp_comm_overlap:
        raise LLMSpecError("parallelism.tp_comm_overlap: planned, not run (DeepSpeed's AutoTP waits for each "
                           "collective); set it to false to run, and the plan counts them exposed too")
    if par.expert > 1 and par.ep_comm_overlap:
        raise LLMSpecError("parallelism.ep_comm_overlap: planned, not run (DeepSpeed's AutoEP waits for each "
                           "all-to-all); set it to false to run, and the plan counts them exposed too")
    if par.context > 1:
        raise LLMSpecError(f"parallelism.context {par.context}: planned, not trained (the compiled model's attention "
                           "exchanges no keys and values between GPUs); set parallelism.context=1 to run")
    # only a pipeline that asks to interleave is planned here (`auto` resolves to the plan's pick)
    chunks = 1 if par.virtual_stages == 1 or par.pipeline == 1 else \
        plan(spec, alternatives=False).spec.parallelism.virtual_stages
    if chunks > 1:  # `auto` runs when the plan picks 1
        picked = f" (the plan picks {chunks})" if par.virtual_stages == "auto" else ""
        raise LLMSpecError(f"parallelism.virtual_stages {par.virtual_stages}{picked}: planned, not trained "
                           "(DeepSpeed's pipeline runs one chunk per rank, 1F1B); set parallelism.virtual_stages=1 "
                           "to run")
    if cl.device.name != "cpu":
        check_devices(spec, local_gpus())


def check_rl_runnable(spec: Spec) -> None:
    """PPO and GRPO run on prompts (the built-in task set's, or data.corpus's), rewarded by the verifier (prompts
    with answers) or by a trained reward model's run of the same tokenizer."""
    post, tr = spec.post_training, spec.training
    if post.method == "grpo" and post.epochs != 1:
        raise LLMSpecError(f"post_training.epochs {post.epochs}: grpo runs one pass per batch of rollouts")
    if post.method == "ppo" and post.critic_model is not None:
        check_critic_source(spec)
    if post.method == "grpo" and post.rollouts_per_step != tr.global_batch_size:
        raise LLMSpecError(f"post_training.rollouts_per_step {post.rollouts_per_step}: grpo trains on its rollouts "
                           f"as one batch (its old policy is the policy itself): set it to training.global_batch_size "
                           f"{tr.global_batch_size}")
    if post.rollouts_per_step % tr.global_batch_size:
        raise LLMSpecError(f"post_training.rollouts_per_step {post.rollouts_per_step}: ppo trains on mini-batches of "
                           f"training.global_batch_size {tr.global_batch_size}; make it a multiple")
    if post.reward_model is not None:
        check_reward_run(Path(post.reward_model).expanduser(), spec)


def check_critic_source(spec: Spec) -> None:
    """To run, ``critic_model`` names weights the critic starts from (InstructGPT starts it from the reward model):
    a run directory or an import-hf output of the critic's architecture, fully trained (no adapters), reading the
    policy's token ids. A spec names an architecture only: enough to plan, not to run."""
    from llmspec.train.init_from import critic_source

    source = critic_source(spec)
    _same_tokenizer(f"post_training.critic_model {spec.post_training.critic_model}", source.tokenizer, spec)


def _same_tokenizer(label: str, theirs: Path | None, spec: Spec) -> None:
    """A model beside the policy (reward model, critic) must read the policy's token ids."""
    init = spec.training.init_from
    ours = Path(init).expanduser() / "tokenizer.json" if init else None
    if ours is not None and ours.is_file() and theirs is not None and theirs.is_file() and \
            theirs.read_bytes() != ours.read_bytes():
        raise LLMSpecError(f"{label}: its tokenizer differs from training.init_from's; it must read the policy's "
                           "token ids")


def check_reward_run(run_dir: Path, spec: Spec) -> None:
    """To run, ``reward_model`` names a trained reward model's run directory whose tokenizer is the policy's."""
    from llmspec.spec.loading import named_specs, parse_spec
    from llmspec.train.checkpoint import latest_checkpoint

    label = f"post_training.reward_model {run_dir}"
    hint = f" (train it first: `llmspec run {run_dir.name}`)" if run_dir.name in named_specs() else ""
    if not (run_dir / "spec.yaml").is_file() or latest_checkpoint(run_dir / "checkpoints") is None:
        raise LLMSpecError(f"{label}: not a run directory with a checkpoint{hint}; to run, name a trained reward "
                           "model's run")
    saved = parse_spec((run_dir / "spec.yaml").read_text(), source=str(run_dir / "spec.yaml"))
    if saved.post_training is None or saved.post_training.method != "reward":
        raise LLMSpecError(f"{label}: that run is not a reward model (post_training.method reward)")
    _same_tokenizer(label, run_dir / "tokenizer.json", spec)


def check_devices(spec: Spec, found: list[tuple[str, int]]) -> None:
    """Refuse a GPU spec on a machine without the GPUs it names: ``found`` is (name, memory bytes) per local GPU.
    Without any GPU, a spec whose plan fits this machine's CPU runs there (announced by the engine)."""
    cl = spec.cluster
    if found:
        have = f"{len(found)} × {found[0][0]} ({fmt_bytes(found[0][1])})"
        if len(found) < cl.gpus_per_node:
            raise LLMSpecError(f"cluster.gpus_per_node {cl.gpus_per_node}: this machine has {have}")
        family = None if isinstance(cl.gpu, CustomGPU) else _family(cl.device.name)  # a custom GPU's name is the user's
        if family and family not in found[0][0].upper().replace("-", "").replace(" ", ""):
            raise LLMSpecError(f"cluster.gpu {cl.device.name}: this machine has {have}; set cluster.gpu to its GPU "
                               "so that the plan is this machine's")
        if found[0][1] < 0.95 * cl.device.memory_bytes:
            raise LLMSpecError(f"cluster.gpu {cl.device.name}: planned with {fmt_bytes(cl.device.memory_bytes)} per "
                               f"GPU, but this machine has {have}")
        return
    on_cpu = spec.model_copy(update={"cluster": cl.model_copy(update={"gpu": "cpu"})})
    cpu = on_cpu.cluster.device
    if spec.training.precision not in cpu.peak_flops:
        raise LLMSpecError(f"cluster.gpu {cl.device.name}: this machine has no GPU, and "
                           f"training.precision {spec.training.precision} needs one")
    planned = plan(on_cpu, alternatives=False)
    if not planned.fits:
        raise DoesNotFitError(
            f"cluster.gpu {cl.device.name}: this machine has no GPU, and on its CPU the plan needs "
            f"{fmt_bytes(planned.memory['peak'])} per rank of {fmt_bytes(planned.usable_memory)}; run on a "
            f"machine with {cl.gpus} × {cl.device.name} (the named specs for a CPU: {', '.join(cpu_specs())})")


def _family(catalogue_name: str) -> str:
    """The part of a catalogue name that a device name contains: H100-SXM → H100, RTX-4090 → 4090."""
    parts = catalogue_name.upper().split("-")
    return parts[1] if parts[0] == "RTX" else parts[0]


def local_gpus() -> list[tuple[str, int]]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [(torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory)
            for i in range(torch.cuda.device_count())]


def cpu_specs() -> list[str]:
    """The named specs that pretrain on this machine class (cluster.gpu: cpu); the post-training chain on them
    starts from a tiny run."""
    from llmspec.spec.loading import load_spec, named_specs

    specs = {name: load_spec(name) for name in sorted(named_specs())}
    return [name for name, spec in specs.items() if spec.cluster.device.name == "cpu" and spec.post_training is None]
