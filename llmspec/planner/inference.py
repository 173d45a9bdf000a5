"""Serving plan: one replica over ``parallelism.tensor`` GPUs — weights, KV cache, max batch, decode and prefill."""

from __future__ import annotations

from typing import Any

from llmspec.errors import LLMSpecError
from llmspec.planner import numeric
from llmspec.planner.device_inputs import device_inputs, usable_memory
from llmspec.planner.inputs import (
    FORWARD_FORMULAS,
    architecture_inputs,
)
from llmspec.spec.schema import Spec


def inference_plan(spec: Spec, context: int | None = None, batch: int = 1) -> dict[str, Any]:
    """Serving one replica over ``parallelism.tensor`` GPUs: weights, KV cache, max batch, decode and prefill."""
    context = context or spec.model.max_seq_len
    if context > spec.model.max_seq_len:
        raise LLMSpecError(f"--context {context}: exceeds model.max_seq_len {spec.model.max_seq_len}")
    training = spec.training.model_copy(update={"seq_len": context})
    at_context = spec.model_copy(update={"training": training})
    gpu = spec.cluster.device
    inputs = {**architecture_inputs(at_context), **device_inputs(at_context)}
    env = numeric.evaluate(inputs, FORWARD_FORMULAS)
    t = spec.parallelism.tensor
    env.update({"context": context, "batch": batch, "kv_bytes": inputs["e"], "psi": env["params_total"] / t,
                "usable": usable_memory(gpu, spec),
                "hbm_bandwidth": gpu.hbm_bandwidth, "F_fwd": env["flops_per_token_forward"]})
    names = {n for n, g in numeric.GROUPS.items() if g == "Inference"}
    env = numeric.evaluate(env, names)
    keys = ("kv_cache_per_token", "inference_weights", "kv_cache", "inference_memory", "max_batch",
            "decode_step", "decode_tokens_per_second", "prefill_seconds")
    out = {key: env[key] for key in keys}
    out.update(context=context, batch=batch, tensor=t, gpu=gpu.name, usable=env["usable"],
               fits=env["inference_memory"] <= env["usable"])
    return out
