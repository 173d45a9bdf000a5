"""A published run's throughput as its publication counts FLOPs, and the plan's prediction counted the same way
(the plan shows both; planner/calibration.py fits the time model to them)."""

from __future__ import annotations

from typing import Any

from llmspec.spec.schema import Spec


def megatron_flops_per_step(spec: Spec) -> float:
    """Narayanan et al. 2021, eq. (3): 96·B·s·L·h²·(1 + s/(6h) + V/(16·L·h)) per step, with full recompute and
    attention counted over every key (how its Table 1 counts TFLOP/s)."""
    mo, tr = spec.model, spec.training
    h, L, V, s, B = mo.d_model, mo.n_layers, mo.vocab_size, tr.seq_len, tr.global_batch_size
    return 96 * B * s * L * h * h * (1 + s / (6 * h) + V / (16 * L * h))


def tflops_per_gpu(spec: Spec, env: dict[str, Any]) -> float:
    """The throughput per GPU a plan's environment predicts, counted as the spec's publication counts."""
    if spec.published is not None and spec.published.counted == "megatron":
        return megatron_flops_per_step(spec) / env["time_step"] / env["n_gpu"] / 1e12
    return env["mfu"] * env["F_peak"] / 1e12
