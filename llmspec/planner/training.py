"""From a spec to a plan: parameters, FLOPs, per-GPU memory, fit, time and cost, and the alternatives.

Pure arithmetic over ``llmspec.planner.numeric`` (generated from the sympy formulas): no torch, no sympy, no numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from llmspec.planner import numeric, rl_phases
from llmspec.planner.inputs import (
    CHECKPOINTING,
    FORWARD_FORMULAS,
    OFFLOAD_MODES,
    PARAMETER_FORMULAS,
    TRAINING_FORMULAS,
    architecture_inputs,
    device_inputs,
    host_fits,
    largest_module,
    offloaded_bytes_per_node,
    shard_experts,
    stage_params,
    strategy_inputs,
    usable_memory,
)
from llmspec.planner.published import tflops_per_gpu
from llmspec.planner.regimes import bytes_per_param
from llmspec.spec.loading import role_model
from llmspec.spec.post_training import RL_METHODS
from llmspec.spec.rules import OFFLOADABLE_OPTIMIZERS
from llmspec.spec.schema import Spec
from llmspec.spec.units import fmt_bytes

__all__ = ["CHECKPOINTING", "Alternative", "Plan", "Strategy", "plan", "single_device_env",
           "strategies"]


@dataclass(frozen=True)
class Strategy:
    """The memory-relevant choices of a plan: what the alternatives table varies."""

    zero_stage: int
    activation_checkpointing: str
    offload_optimizer: str = "none"
    offload_params: str = "none"

    @property
    def label(self) -> str:
        text = f"ZeRO-{self.zero_stage} · ckpt {self.activation_checkpointing}"
        if self.offload_params != "none":
            return f"{text} · offload opt+params ({self.offload_params})"
        if self.offload_optimizer != "none":
            return f"{text} · offload opt ({self.offload_optimizer})"
        return text

    def sets(self) -> list[str]:
        """The ``--set`` overrides that select this strategy."""
        return [f"parallelism.zero_stage={self.zero_stage}",
                f"parallelism.activation_checkpointing={self.activation_checkpointing}",
                f"parallelism.offload_optimizer={self.offload_optimizer}",
                f"parallelism.offload_params={self.offload_params}"]


@dataclass
class Alternative:
    strategy: Strategy
    memory: dict[str, int]  # the same breakdown as Plan.memory
    fits: bool
    step_seconds: float
    total_seconds: float
    cost: float
    chosen: bool


@dataclass
class Plan:
    spec: Spec
    strategy: Strategy
    env: dict[str, Any]  # every formula input and result for the stage that sets the peak
    stage: str  # "only", "first", "middle" (the second, with an uneven split) or "last": the highest peak
    gpu_name: str
    gpu_memory: int
    usable_memory: int
    host_memory: int
    nvme_memory: int
    host_memory_deepspeed: int
    efficiency: float
    alternatives: list[Alternative] = field(default_factory=list)

    # -- the contract of `llmspec plan --json` (shared/design.md) -------------------------------------------
    @property
    def params(self) -> dict[str, int]:
        e = self.env
        return {
            "total": int(e["params_total"]), "embedding": int(e["params_embedding"]),
            "non_embedding": int(e["params_non_embedding"]), "active": int(e["params_active"]),
            "per_layer": int(e["params_layer"]), "attention_per_layer": int(e["params_attention"]),
            "mlp_per_layer": int(e["E"] * e["params_mlp"]), "router_per_layer": int(e["params_router"]),
            "norms": int(e["L"] * 2 * e["params_norm"] + e["params_norm"]), "lm_head": int(e["params_lm_head"]),
            "largest_module": int(e["params_largest_module"]),
            "experts_per_gpu": int(e["E"] * e["moe"] / e["ep"]),
            # on one GPU of the peak stage, before ZeRO shards its states: a fraction when the vocabulary does
            # not divide by the tensor-parallel degree
            "per_gpu": float(e["psi"]) if e["psi"] != int(e["psi"]) else int(e["psi"]),
            # what trains (everything, or an adapter + value head) and what stays frozen
            "trainable": int(e["params_trainable"]), "frozen": int(e["params_frozen"]),
        }

    @property
    def flops(self) -> dict[str, float]:
        e = self.env
        return {
            "per_token_forward": e["flops_per_token_forward"], "per_token_train": e["flops_per_token_train"],
            "per_token_hardware": e["flops_per_token_hardware"], "per_step": e["flops_per_step"],
            "total": e["flops_total"], "six_nd": e["flops_6nd"], "attention_per_token": e["flops_attention_per_token"],
            "capacity_per_token": e["flops_capacity_per_token"],
        }

    @property
    def memory(self) -> dict[str, int]:
        return memory_breakdown(self.env)

    @property
    def time(self) -> dict[str, float]:
        e = self.env
        return {
            "step_seconds": e["time_step"], "tokens_per_second": e["tokens_per_second"],
            "total_seconds": e["time_total"], "days": e["time_total"] / 86400, "gpu_hours": e["gpu_hours"],
            "cost": e["cost"], "compute_seconds": e["time_compute"], "imbalance_seconds": e["time_imbalance"],
            "bubble_seconds": e["time_bubble"],
            "dp_exposed_seconds": e["time_dp_exposed"], "tp_seconds": e["time_tp"], "pp_seconds": e["time_pp"],
            "offload_seconds": e["time_offload"], "ep_seconds": e["time_ep"], "cp_seconds": e["time_cp"],
            "mfu": e["mfu"], "hfu": e["hfu"], "steps": e["steps"],
        }

    @property
    def tokens_per_step(self) -> int:
        """Tokens a step trains on: the global batch, or a PPO/GRPO step's rollouts (prompt + response)."""
        post = self.spec.post_training
        if self.phases:
            return post.rollouts_per_step * (post.prompt_len + post.response_len)
        return self.spec.training.tokens_per_step

    @property
    def total_tokens(self) -> int:
        return self.tokens_per_step * self.spec.training.steps if self.phases else self.spec.training.total_tokens

    @property
    def peak_phase(self) -> str:
        """The phase that sets the peak: generation, scoring or training (PPO/GRPO); training for other runs."""
        return self.env.get(rl_phases.PEAK_PHASE_KEY, "training")

    @property
    def fits(self) -> bool:
        """The peak within each GPU's usable memory, and what offload keeps on a node within its CPU memory and
        NVMe where the spec gives them."""
        return self.memory["peak"] <= self.usable_memory and self.host_fits

    @property
    def host_fits(self) -> bool:
        return bool(host_fits(self.spec, self.host_memory, self.nvme_memory))

    @property
    def host_misfit(self) -> str | None:
        """What overflows a node (one clause naming the field), or None."""
        cl = self.spec.cluster
        for held, size, field_name, what in ((self.host_memory, cl.host_memory_gib, "host_memory_gib", "host"),
                                              (self.nvme_memory, cl.nvme_gib, "nvme_gib", "NVMe")):
            if size is not None and held > size * 2**30:
                return (f"{what} per node {fmt_bytes(held)} exceeds cluster.{field_name} "
                        f"{fmt_bytes(int(size * 2**30))}")
        return None

    @property
    def models(self) -> list[dict[str, Any]]:
        """One entry per model the run holds (post-training): role, parameters, trainable ones, bytes per GPU."""
        post, e = self.spec.post_training, self.env
        if post is None:
            return []
        if rl_phases.MODELS_KEY in e:  # PPO/GRPO: the policy's own env, the critic's, the reward model's bytes
            models = e[rl_phases.MODELS_KEY]
            trained = _trained_entry("policy", e[rl_phases.POLICY_KEY])
            others = [_trained_entry("critic", models["critic"])] if models["critic"] is not None else []
            if models["reward"] is not None:
                reward = models["reward"]
                others.append({"role": "reward", "params": int(reward["params_base"] + reward["h"]),
                               "trainable": 0, "bytes_per_gpu": _bytes(models["reward_bytes"])})
        else:
            trained, others = _trained_entry("reward" if post.value_model else "policy", e), []
        out = [trained]
        if getattr(post, "reference", None) == "copy":
            out.append({"role": "reference", "params": trained["params"], "trainable": 0,
                        "bytes_per_gpu": _bytes(e["memory_reference"])})
        return out + others

    @property
    def phases(self) -> dict[str, dict[str, float]]:
        """PPO/GRPO: memory (bytes), seconds and FLOPs per GPU of each phase of a step; empty for other runs."""
        return {name: {"memory": _bytes(phase["memory"]), "seconds": float(phase["seconds"]),
                       "flops": float(phase["flops"])}
                for name, phase in self.env.get(rl_phases.PHASES_KEY, {}).items()}

    @property
    def published(self) -> dict[str, Any] | None:
        """A published run's figure beside the plan's, counted as the publication counts (spec.published)."""
        reported = self.spec.published
        if reported is None:
            return None
        planned = tflops_per_gpu(self.spec, self.env)
        return {"source": reported.source, "counted": reported.counted, "tflops_per_gpu": reported.tflops_per_gpu,
                "planned_tflops_per_gpu": planned, "ratio": planned / reported.tflops_per_gpu}

    def to_json(self) -> dict[str, Any]:
        spec = self.spec
        post = {} if spec.post_training is None else {"models": self.models}
        published = self.published
        if self.phases:
            post["phases"] = self.phases
        return {**post,
            "name": spec.name,
            "params": self.params,
            "flops": self.flops,
            "memory": self.memory,
            "host_memory": self.host_memory,
            "nvme_memory": self.nvme_memory,
            "host_memory_deepspeed": self.host_memory_deepspeed,
            "time": self.time,
            **({"published": published} if published else {}),
            "fits": self.fits,
            "host_fits": self.host_fits,
            "gpu": {"name": self.gpu_name, "memory": self.gpu_memory, "usable": self.usable_memory,
                    "count": spec.cluster.gpus, "efficiency": self.efficiency},
            "layout": {"data_parallel": spec.parallelism.data_parallel, "tensor": spec.parallelism.tensor,
                       "context": spec.parallelism.context,
                       "pipeline": spec.parallelism.pipeline, "virtual_stages": spec.parallelism.virtual_stages,
                       "stage_blocks": spec.stage_blocks,
                       "gradient_accumulation_steps": spec.training.gradient_accumulation_steps,
                       "peak_stage": self.stage},
            "regime": {"name": spec.parallelism.byte_regime, "precision": spec.training.precision,
                       "bytes_per_param": bytes_per_param(spec.parallelism.byte_regime, spec.training.precision,
                                                          spec.training.optimizer.n_states)},
            "strategy": {"label": self.strategy.label, "sets": self.strategy.sets()},
            "alternatives": [
                {"strategy": a.strategy.label, "sets": a.strategy.sets(), "memory": a.memory, "fits": a.fits,
                 "step_seconds": a.step_seconds, "total_seconds": a.total_seconds, "cost": a.cost,
                 "chosen": a.chosen}
                for a in self.alternatives
            ],
        }


def _bytes(value: Any) -> int:
    return int(math.ceil(value))


def _trained_entry(role: str, env: dict[str, Any]) -> dict[str, Any]:
    """plan --json ``models`` entry of a trained model: parameters, trainable ones, its bytes on one GPU."""
    return {"role": role, "params": int(env["params_trainable"] + env["params_frozen"]),
            "trainable": int(env["params_trainable"]),
            "bytes_per_gpu": _bytes(env["memory_weights"] + env["memory_gradients"] + env["memory_optimizer"]
                                    + env["memory_frozen_base"])}


def memory_breakdown(env: dict[str, Any]) -> dict[str, int]:
    """Bytes per GPU by kind; ``model_states`` is exact (DeepSpeed's integer arithmetic), the rest rounded up."""
    return {
        "weights": _bytes(env["memory_weights"]), "gradients": _bytes(env["memory_gradients"]),
        "optimizer": _bytes(env["memory_optimizer"]), "gathered": _bytes(env["memory_gathered"]),
        "frozen": _bytes(env["memory_frozen"]),
        "model_states": int(env["memory_model_states"]), "activations": _bytes(env["memory_activations"]),
        "buffers": _bytes(env["memory_buffers"]), "fp8_weights": _bytes(env["memory_fp8_weights"]),
        "peak": _bytes(env["memory_peak"]),
    }


def _evaluate(spec: Spec, base: dict[str, Any], strategy: Strategy, stage: str) -> dict[str, Any]:
    par = spec.parallelism
    p, t = par.pipeline, par.tensor
    first, last = stage in ("only", "first"), stage in ("only", "last")
    split = spec.stage_layers
    # even split: DeepSpeed's balanced partition puts at most ceil(L/p) blocks on a stage
    layers = math.ceil(spec.model.n_layers / p) if split is None else split[{"first": 0, "middle": 1}.get(stage, -1)]
    env = dict(base)
    codes = (strategy.zero_stage, CHECKPOINTING.index(strategy.activation_checkpointing),
             OFFLOAD_MODES.index(strategy.offload_optimizer), OFFLOAD_MODES.index(strategy.offload_params))
    env.update(strategy_inputs(spec, *codes, par.data_parallel * par.context))
    # post-training (data parallelism only): ZeRO shards what trains; frozen weights are counted apart
    psi = env["params_trainable"] if spec.post_training is not None else stage_params(env, first, last, layers, t)
    if par.expert > 1:
        env.update(shard_experts(spec, env, codes, psi, layers, t, par.data_parallel * par.context, par.expert))
    rank = {"only": 0, "first": 0, "middle": 1}.get(stage, p - 1)
    env.update({
        "psi": psi,
        "first_stage": int(first), "last_stage": int(last), "L_here": layers,
        "rank": rank,
    })
    env["P_L"] = largest_module(env, t)
    return numeric.evaluate(env, TRAINING_FORMULAS)


def role_spec(spec: Spec, role: str) -> Spec:
    """The spec with PPO/GRPO's ``role`` model (critic or reward) in place of the policy."""
    return spec.model_copy(update={"model": role_model(spec, role)})


def _rl_roles(spec: Spec) -> list[str]:
    """The models a PPO/GRPO step holds beside the policy: PPO's critic, and a reward model when one is named (else
    the verifier rewards); none for every other run."""
    post = spec.post_training
    if post is None or post.method not in RL_METHODS:
        return []
    return ["critic"] * (post.method == "ppo") + ["reward"] * (getattr(post, "reward_model", None) is not None)


def _rl_models(spec: Spec) -> dict[str, tuple[Spec, dict[str, Any]]]:
    """PPO/GRPO: the other models of a step by role, each as a spec with that architecture and its parameter
    formulas (the frozen reward model needs its stored bytes and forward only, the same under every strategy)."""
    out = {}
    for role in _rl_roles(spec):
        role_model = role_spec(spec, role)
        inputs = {**architecture_inputs(role_model, role), **device_inputs(role_model)}
        out[role] = (role_model, numeric.evaluate(inputs, FORWARD_FORMULAS if role == "reward" else PARAMETER_FORMULAS))
    return out


def _peak_stage(spec: Spec, base: dict[str, Any], strategy: Strategy,
                others: dict[str, tuple[Spec, dict[str, Any]]] | None = None) -> tuple[str, dict[str, Any]]:
    if spec.post_training is not None and spec.post_training.method in RL_METHODS:
        others = others or {}
        critic = _evaluate(*others["critic"], strategy, "only") if "critic" in others else None
        reward = others["reward"][1] if "reward" in others else None
        policy = _evaluate(spec, base, strategy, "only")
        return "only", rl_phases.step(spec, policy, critic, reward, spec.cluster.device.hbm_bandwidth)
    if spec.parallelism.pipeline == 1:
        return "only", _evaluate(spec, base, strategy, "only")
    # an uneven split can make the second stage (the first without the embedding) the fullest
    names = ("first", "middle", "last") if spec.stage_layers and \
        spec.parallelism.pipeline > 2 else ("first", "last")
    stages = [(name, _evaluate(spec, base, strategy, name)) for name in names]
    return max(stages, key=lambda item: item[1]["memory_peak"])


def _host_memory(spec: Spec, env: dict[str, Any], strategy: Strategy) -> tuple[int, int, int]:
    """Host bytes per node, NVMe bytes per node, and DeepSpeed's own host estimate (``offloaded_bytes_per_node``)."""
    par = spec.parallelism
    host, nvme, deepspeed = offloaded_bytes_per_node(
        spec, env, strategy.zero_stage, OFFLOAD_MODES.index(strategy.offload_optimizer),
        OFFLOAD_MODES.index(strategy.offload_params), par.data_parallel * par.context, spec.cluster.gpus_per_node)
    return int(host), int(nvme), int(deepspeed)


def plan(spec: Spec, alternatives: bool = True) -> Plan:
    """Plan a spec: the chosen strategy in full, and (by default) every alternative strategy's peak and time.
    ``virtual_stages: auto`` is resolved first; the plan's spec carries the count picked."""
    par = spec.parallelism
    others = _rl_models(spec)
    chosen = Strategy(par.zero_stage, par.activation_checkpointing, par.offload_optimizer, par.offload_params)
    spec, base, (stage, env) = _with_virtual_stages(spec, chosen, others)
    par = spec.parallelism
    host, nvme, host_deepspeed = _host_memory(spec, env, chosen)
    gpu = spec.cluster.device
    usable = usable_memory(gpu, spec)
    result = Plan(spec, chosen, env, stage, gpu.name, gpu.memory_bytes, usable, host, nvme, host_deepspeed,
                  base["eff"])
    if alternatives:
        for strategy in strategies(spec):
            _, alt = _peak_stage(spec, base, strategy, others) if strategy != chosen else (stage, env)
            memory = memory_breakdown(alt)
            fits = memory["peak"] <= usable and bool(host_fits(spec, *_host_memory(spec, alt, strategy)[:2]))
            result.alternatives.append(Alternative(strategy, memory, fits, alt["time_step"],
                                                   alt["time_total"], alt["cost"], strategy == chosen))
    return result


def _with_virtual_stages(spec: Spec, chosen: Strategy, others) -> tuple[Spec, dict[str, Any], tuple[str, dict]]:
    """The spec with its virtual stages resolved, its base inputs, and its peak stage under ``chosen``. ``auto``
    tries every count a stage's blocks allow (1 … the fewest blocks on a stage) and keeps the shortest step that
    fits, or the smallest peak when none fits."""
    counts = [spec.parallelism.virtual_stages]
    if counts[0] == "auto":
        counts = list(range(1, min(spec.stage_blocks) + 1)) if spec.parallelism.pipeline > 1 else [1]
    usable = usable_memory(spec.cluster.device, spec)
    best = None
    for v in counts:
        candidate = spec.model_copy(update={"parallelism": spec.parallelism.model_copy(update={"virtual_stages": v})})
        base = numeric.evaluate({**architecture_inputs(candidate), **device_inputs(candidate)}, PARAMETER_FORMULAS)
        peak = _peak_stage(candidate, base, chosen, others)
        env = peak[1]
        score = (0, env["time_step"]) if env["memory_peak"] <= usable else (1, env["memory_peak"])
        if best is None or score < best[0]:
            best = (score, candidate, base, peak)
    return best[1:]


def single_device_env(spec: Spec, checkpointing: str, cpu_kernels: bool = False,
                      full_attention: bool = False, role: str = "policy") -> dict[str, Any]:
    """Every formula for one micro-batch of the whole model on one device (no tensor or pipeline split):
    what ``llmspec measure`` compares with the compiled model (``cpu_kernels``: as CPU kernels save tensors;
    ``full_attention``: every key counted, as FlopCounterMode counts SDPA); ``role``: which model of a PPO/GRPO
    step (policy, critic or reward)."""
    par = spec.parallelism.model_copy(update={"tensor": 1, "pipeline": 1, "expert": 1, "context": 1,
                                              "virtual_stages": 1, "first_stage_layers": None,
                                              "last_stage_layers": None, "activation_checkpointing": checkpointing})
    single = spec.model_copy(update={"parallelism": par})
    if role != "policy":
        single = role_spec(single, role)
    inputs = {**architecture_inputs(single, role), **device_inputs(single)}
    if cpu_kernels:
        inputs["e_stat"] = inputs["e_mask"] = inputs["e"]
    if full_attention:
        inputs["causal"] = 0
    base = numeric.evaluate(inputs, PARAMETER_FORMULAS)
    strategy = Strategy(par.zero_stage, checkpointing, par.offload_optimizer, par.offload_params)
    return _evaluate(single, base, strategy, "only")


def single_device_rl_step(spec: Spec, checkpointing: str, cpu_kernels: bool = False,
                          full_attention: bool = False) -> dict[str, Any]:
    """A PPO/GRPO step of ``single_device_env``'s models: its phases as one GPU of the data-parallel group runs
    them (``rollouts_per_step / data_parallel`` rollouts)."""
    envs = {role: single_device_env(spec, checkpointing, cpu_kernels, full_attention, role)
            for role in ["policy", *_rl_roles(spec)]}
    return rl_phases.step(spec, envs["policy"], envs.get("critic"), envs.get("reward"),
                          spec.cluster.device.hbm_bandwidth)


def strategies(spec: Spec) -> list[Strategy]:
    """Every ZeRO stage × checkpointing mode × CPU offload that the spec's parallelism allows."""
    out = []
    max_stage = 1 if spec.parallelism.pipeline > 1 else 3
    for stage in range(max_stage + 1):
        offloadable = stage >= 1 and spec.training.optimizer.name in OFFLOADABLE_OPTIMIZERS
        offloads = [("none", "none")] + ([("cpu", "none")] if offloadable else []) + (
            [("cpu", "cpu")] if offloadable and stage == 3 else [])
        for opt, prm in offloads:
            for ckpt in CHECKPOINTING:
                out.append(Strategy(stage, ckpt, opt, prm))
    return out


