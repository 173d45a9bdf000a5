"""From a spec to a plan: parameters, FLOPs, per-GPU memory, fit, time and cost, and the alternatives.

Pure arithmetic over ``llmspec.planner.numeric`` (generated from the sympy formulas): no torch, no sympy, no numpy.
"""

from __future__ import annotations

import math
from typing import Any

from llmspec.planner import numeric, rl_phases
from llmspec.planner.device_inputs import device_inputs, usable_memory
from llmspec.planner.inputs import (
    CHECKPOINTING,
    FORWARD_FORMULAS,
    PARAMETER_FORMULAS,
    architecture_inputs,
    evaluate_stage,
    host_fits,
    offloaded_bytes_per_node,
    strategy_inputs,
)
from llmspec.planner.post_inputs import CRITIC, POLICY, REWARD
from llmspec.planner.result import Alternative, Plan, Strategy, memory_breakdown
from llmspec.spec.loading import role_model
from llmspec.spec.rules import OFFLOADABLE_OPTIMIZERS
from llmspec.spec.schema import Spec

__all__ = ["CHECKPOINTING", "Alternative", "Plan", "Strategy", "plan", "single_device_env",
           "strategies"]


def _evaluate(spec: Spec, base: dict[str, Any], strategy: Strategy, stage: str) -> dict[str, Any]:
    """The training formulas on one GPU of ``stage`` ("only", "first", "middle": the second, "last") under
    ``strategy``; ``base``: the spec's model, device and layout inputs with the parameter formulas evaluated."""
    p = spec.parallelism.pipeline
    split = spec.stage_layers
    # even split: DeepSpeed's balanced partition puts at most ceil(L/p) blocks on a stage
    layers = math.ceil(spec.model.n_layers / p) if split is None else split[{"first": 0, "middle": 1}.get(stage, -1)]
    env = {**base, **strategy_inputs(spec, *strategy.codes, base["dp"])}
    return evaluate_stage(spec, env, strategy.codes, int(stage in ("only", "first")), int(stage in ("only", "last")),
                          {"only": 0, "first": 0, "middle": 1}.get(stage, p - 1), layers)


def role_spec(spec: Spec, role: str) -> Spec:
    """The spec with an RL step's ``role`` model (critic or reward) in place of the policy."""
    return spec.model_copy(update={"model": role_model(spec, role)})


def _rl_roles(spec: Spec) -> list[str]:
    """The models an RL step holds beside the policy: a critic where the method trains one, and a reward model when
    one is named (else the verifier rewards); none for every other run."""
    post = spec.post_training
    if post is None or not post.generates:
        return []
    return [CRITIC] * post.trains_critic + [REWARD] * (post.reward_model is not None)


def _rl_models(spec: Spec) -> dict[str, tuple[Spec, dict[str, Any]]]:
    """An RL step's other models by role, each as a spec with that architecture and its parameter
    formulas (the frozen reward model needs its stored bytes and forward only, the same under every strategy)."""
    out = {}
    for role in _rl_roles(spec):
        role_model = role_spec(spec, role)
        inputs = {**architecture_inputs(role_model, role), **device_inputs(role_model)}
        out[role] = (role_model, numeric.evaluate(inputs, FORWARD_FORMULAS if role == REWARD else PARAMETER_FORMULAS))
    return out


def _peak_stage(spec: Spec, base: dict[str, Any], strategy: Strategy,
                others: dict[str, tuple[Spec, dict[str, Any]]] | None = None) -> tuple[str, dict[str, Any]]:
    if spec.post_training is not None and spec.post_training.generates:
        others = others or {}
        critic = _evaluate(*others[CRITIC], strategy, "only") if CRITIC in others else None
        reward = others[REWARD][1] if REWARD in others else None
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
    zero, _, optimizer, params = strategy.codes
    host, nvme, deepspeed = offloaded_bytes_per_node(spec, env, zero, optimizer, params, env["dp"],
                                                     spec.cluster.gpus_per_node)
    return int(host), int(nvme), int(deepspeed)


def plan(spec: Spec, alternatives: bool = True, attended_keys: float | None = None) -> Plan:
    """Plan a spec: the chosen strategy in full, and (by default) every alternative strategy's peak and time.
    ``virtual_stages: auto`` is resolved first; the plan's spec carries the count picked. ``attended_keys``: under
    document masking, the mean keys a query sees within its document, from the prepared corpus's lengths
    (``llmspec.data.attention.attended_keys``, which the planner may not import); absent, causal attention's."""
    par, requested = spec.parallelism, spec
    others = _rl_models(spec)
    chosen = Strategy(par.zero_stage, par.activation_checkpointing, par.offload_optimizer, par.offload_params)
    spec, base, (stage, env) = _with_virtual_stages(spec, chosen, others, attended_keys)
    host, nvme, host_deepspeed = _host_memory(spec, env, chosen)
    gpu = spec.cluster.device
    usable = usable_memory(gpu, spec)
    result = Plan(spec, chosen, env, stage, gpu.name, gpu.memory_bytes, usable, host, nvme, host_deepspeed,
                  base["eff"], requested=requested)
    if alternatives:
        for strategy in strategies(spec):
            _, alt = _peak_stage(spec, base, strategy, others) if strategy != chosen else (stage, env)
            memory = memory_breakdown(alt)
            fits = memory["peak"] <= usable and bool(host_fits(spec, *_host_memory(spec, alt, strategy)[:2]))
            result.alternatives.append(Alternative(strategy, memory, fits, alt["time_step"],
                                                   alt["time_total"], alt["cost"], strategy == chosen))
    return result


def _with_virtual_stages(spec: Spec, chosen: Strategy, others, attended_keys: float | None = None
                         ) -> tuple[Spec, dict[str, Any], tuple[str, dict]]:
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
        base = numeric.evaluate({**architecture_inputs(candidate, attended_keys=attended_keys),
                                 **device_inputs(candidate)}, PARAMETER_FORMULAS)
        peak = _peak_stage(candidate, base, chosen, others)
        env = peak[1]
        score = (0, env["time_step"]) if env["memory_peak"] <= usable else (1, env["memory_peak"])
        if best is None or score < best[0]:
            best = (score, candidate, base, peak)
    return best[1:]


def single_device_env(spec: Spec, checkpointing: str, cpu_kernels: bool = False,
                      full_attention: bool = False, role: str = POLICY) -> dict[str, Any]:
    """Every formula for one micro-batch of the whole model on one device (no tensor or pipeline split):
    what ``llmspec measure`` compares with the compiled model (``cpu_kernels``: as CPU kernels save tensors;
    ``full_attention``: every key counted, as FlopCounterMode counts SDPA); ``role``: which model of an RL step
    (policy, critic or reward)."""
    par = spec.parallelism.model_copy(update={"tensor": 1, "pipeline": 1, "expert": 1, "context": 1,
                                              "virtual_stages": 1, "first_stage_layers": None,
                                              "last_stage_layers": None, "activation_checkpointing": checkpointing})
    single = spec.model_copy(update={"parallelism": par})
    if role != POLICY:
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
    """An RL step (PPO, GRPO) of ``single_device_env``'s models: its phases as one GPU of the data-parallel group runs
    them (``rollouts_per_step / data_parallel`` rollouts)."""
    envs = {role: single_device_env(spec, checkpointing, cpu_kernels, full_attention, role)
            for role in [POLICY, *_rl_roles(spec)]}
    return rl_phases.step(spec, envs[POLICY], envs.get(CRITIC), envs.get(REWARD),
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


