"""What a plan holds: the strategy it was planned under, every formula's value for the GPU that sets the peak, and the
alternatives; its properties are the contract of `llmspec plan --json` (shared/design.md).

Pure reads of the evaluated env (``llmspec.planner.training`` computes it): no arithmetic beyond rounding bytes up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from llmspec.planner import rl_phases
from llmspec.planner.inputs import CHECKPOINTING, OFFLOAD_MODES, host_fits
from llmspec.planner.post_inputs import CRITIC, POLICY, REFERENCE, REWARD
from llmspec.planner.published import tflops_per_gpu
from llmspec.planner.regimes import bytes_per_param
from llmspec.spec.schema import Spec
from llmspec.spec.units import fmt_bytes

__all__ = ["TIME_ROWS", "Alternative", "Plan", "Strategy", "memory_breakdown"]


# The plan's time rows as a report lists them: (key, label, what it is). compute's three parts and ZeRO-3's share
# of the data-parallel row are indented under them; the unindented rows add up to step_seconds.
TIME_ROWS = (
    ("compute_seconds", "compute", ""),
    ("matmul_seconds", "  matmuls", "calibrated fraction of peak"),
    ("attention_seconds", "  attention", "its kernel's own rate"),
    ("elementwise_seconds", "  memory-bound", "norms, RoPE, activations"),
    ("imbalance_seconds", "slowest stage", "uneven blocks, the LM head"),
    ("bubble_seconds", "pipeline bubble", "(p − 1)/(v·m) of a stage"),
    ("dp_exposed_seconds", "data-parallel comm", "not hidden behind compute"),
    ("zero_gather_seconds", "  ZeRO-3 gathers", "past the next layer's compute"),
    ("optimizer_seconds", "optimizer step", "its states' bytes/HBM"),
    ("tp_seconds", "tensor-parallel comm", "not hidden"), ("pp_seconds", "pipeline comm", ""),
    ("offload_seconds", "optimizer offload", ""), ("ep_seconds", "expert all-to-all", "not hidden"),
    ("cp_seconds", "context-parallel comm", "not hidden"),
)


@dataclass(frozen=True)
class Strategy:
    """The memory-relevant choices of a plan: what the alternatives table varies."""

    zero_stage: int
    activation_checkpointing: str
    offload_optimizer: str = "none"
    offload_params: str = "none"

    @property
    def codes(self) -> tuple[int, int, int, int]:
        """The strategy as ``strategy_inputs`` takes it: the ZeRO stage, and indices of CHECKPOINTING and
        OFFLOAD_MODES (what the layout search's columns hold)."""
        return (self.zero_stage, CHECKPOINTING.index(self.activation_checkpointing),
                OFFLOAD_MODES.index(self.offload_optimizer), OFFLOAD_MODES.index(self.offload_params))

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
    # the spec as given to ``plan`` (``spec`` is it with ``virtual_stages: auto`` resolved)
    requested: Spec | None = None

    def is_for(self, spec: Spec) -> bool:
        """Whether this plan was made for ``spec``: what a caller handed a plan (build, run) checks before using
        its numbers in place of planning again."""
        return spec is self.requested or spec == self.requested

    # -- the contract of `llmspec plan --json` (shared/design.md) -------------------------------------------
    @property
    def params(self) -> dict[str, int]:
        e = self.env
        return {
            "total": int(e["params_total"]), "embedding": int(e["params_embedding"]),
            "non_embedding": int(e["params_non_embedding"]), "active": int(e["params_active"]),
            "per_layer": int(e["params_layer"]), "attention_per_layer": int(e["params_attention"]),
            "mlp_per_layer": int(e["params_mlp_per_layer"]), "router_per_layer": int(e["params_router"]),
            "norms": int(e["params_norms"]), "lm_head": int(e["params_lm_head"]),
            "largest_module": int(e["params_largest_module"]), "experts_per_gpu": int(e["experts_per_gpu"]),
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
            "attention_executed_per_token": e["flops_attention_executed_per_token"],
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
            "cost": e["cost"], "compute_seconds": e["time_compute"], "matmul_seconds": e["time_matmul"],
            "attention_seconds": e["time_attention_kernels"], "elementwise_seconds": e["time_elementwise"],
            "imbalance_seconds": e["time_imbalance"], "optimizer_seconds": e["time_optimizer"],
            "zero_gather_seconds": e["time_zero3_exposed"],
            "bubble_seconds": e["time_bubble"],
            "dp_exposed_seconds": e["time_dp_exposed"], "tp_seconds": e["time_tp"], "pp_seconds": e["time_pp"],
            "offload_seconds": e["time_offload"], "ep_seconds": e["time_ep"], "cp_seconds": e["time_cp"],
            "mfu": e["mfu"], "hfu": e["hfu"], "steps": e["steps"],
        }

    @property
    def tokens_per_step(self) -> int:
        """Tokens a step trains on: the global batch, or an RL step's rollouts (prompt + response)."""
        post = self.spec.post_training
        if self.phases:
            return post.rollouts_per_step * (post.prompt_len + post.response_len)
        return self.spec.training.tokens_per_step

    @property
    def total_tokens(self) -> int:
        return self.tokens_per_step * self.spec.training.steps if self.phases else self.spec.training.total_tokens

    @property
    def peak_phase(self) -> str:
        """The phase that sets the peak: generation, scoring or training (an RL step); training for other runs."""
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
        if rl_phases.MODELS_KEY in e:  # an RL step: the policy's own env, the critic's, the reward model's
            models = e[rl_phases.MODELS_KEY]
            trained = _trained_entry(POLICY, e[rl_phases.POLICY_KEY])
            others = [_trained_entry(CRITIC, models[CRITIC])] if models[CRITIC] is not None else []
            if models[REWARD] is not None:
                others.append({"role": REWARD, "params": int(models[REWARD]["params_frozen_model"]),
                               "trainable": 0, "bytes_per_gpu": _bytes(e["rl_memory_reward"])})
        else:
            trained, others = _trained_entry(REWARD if post.value_model else POLICY, e), []
        out = [trained]
        if getattr(post, "reference", None) == "copy":
            out.append({"role": REFERENCE, "params": trained["params"], "trainable": 0,
                        "bytes_per_gpu": _bytes(e["memory_reference"])})
        return out + others

    @property
    def phases(self) -> dict[str, dict[str, float]]:
        """An RL step (PPO, GRPO): memory (bytes), seconds and FLOPs per GPU of each phase; empty for other
        runs."""
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
    return {"role": role, "params": int(env["params_trained_model"]), "trainable": int(env["params_trainable"]),
            "bytes_per_gpu": _bytes(env["memory_trained_model"])}


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
