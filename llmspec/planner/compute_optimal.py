"""Compute-optimal sizing: how many parameters and tokens a compute budget buys, and a model of that size.

Three answers side by side (formulas in the "Compute-optimal sizing" group): 20 tokens per parameter, Chinchilla's
approach-3 fit as published, and the Besiroglu et al. 2024 refit. The rounded published fit favours smaller
models trained longer (≈ 90 tokens/parameter at Gopher's budget); the 20× rule is the one the spec is sized with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llmspec.errors import LLMSpecError
from llmspec.planner import numeric
from llmspec.planner.inputs import PARAMETER_FORMULAS, architecture_inputs
from llmspec.spec import catalogue
from llmspec.spec.loading import load_spec
from llmspec.spec.schema import Spec
from llmspec.spec.units import parse_count

RULES = {"20_tokens_per_param": "20x", "chinchilla_2022": "chinchilla", "besiroglu_2024": "refit"}
TEMPLATE = "llama2-7b"  # training, parallelism and cluster settings when no spec is given


@dataclass
class ComputeOptimal:
    compute: float
    rules: dict[str, dict[str, float]]
    spec: Spec
    params: int  # the concrete architecture's exact count

    def to_json(self) -> dict[str, Any]:
        mo = self.spec.model
        best = self.rules["20_tokens_per_param"]
        return {"compute": self.compute, "compute_optimal": {"params": best["params"], "tokens": best["tokens"]},
                "rules": self.rules, "spec": self.spec.name,
                "architecture": {"params": self.params, "n_layers": mo.n_layers, "d_model": mo.d_model,
                                 "n_heads": mo.n_heads, "n_kv_heads": mo.n_kv_heads, "head_dim": mo.head_dim,
                                 "d_ff": mo.d_ff, "vocab_size": mo.vocab_size},
                "tokens": self.spec.training.total_tokens}


def optimal(compute: float) -> dict[str, dict[str, float]]:
    names = {n for n, g in numeric.GROUPS.items() if g == "Compute-optimal sizing"}
    env = numeric.evaluate({"compute": compute}, names)
    out = {}
    for rule, key in RULES.items():
        out[rule] = {"params": env[f"optimal_params_{key}"], "tokens": env[f"optimal_tokens_{key}"]}
        if f"optimal_loss_{key}" in env:
            out[rule]["loss"] = env[f"optimal_loss_{key}"]
    return out


def _params(spec: Spec) -> int:
    return int(numeric.evaluate(architecture_inputs(spec), PARAMETER_FORMULAS)["params_total"])


def shape_for(params: float, template: Spec) -> Spec:
    """A Llama-style shape near ``params``: d_model at 64–128 per layer, a multiple of 128 (of 1024 from 4096 up,
    so heads come in eights), head_dim 128 (64 below d_model 2048), 8 KV heads once there are 32 heads or more,
    SwiGLU d_ff = 8/3 d rounded up to 256. Ties go to the aspect ratio nearest 100."""
    best = None
    for layers in range(2, 161):
        for ratio in (64, 80, 96, 112, 128):
            step = 1024 if ratio * layers >= 4096 else 128  # big models: a multiple of 8 heads of 128
            d = max(128, round(ratio * layers / step) * step)
            head_dim = 128 if d >= 2048 else 64
            heads = d // head_dim
            kv = 8 if heads >= 32 and heads % 8 == 0 else heads
            candidate = template.model.model_copy(update={
                "d_model": d, "n_layers": layers, "n_heads": heads, "n_kv_heads": kv, "head_dim": head_dim,
                "d_ff": -(-8 * d // 3 // 256) * 256})
            spec = template.model_copy(update={"model": candidate})
            count = _params(spec)
            score = (abs(math.log(count / params)), abs(d / layers - 100))
            if best is None or score < best[0]:
                best = (score, spec)
    return best[1]  # type: ignore[index]


def compute_optimal_report(source: str | None, sets: list[str], compute: str | None, budget: float | None,
                           gpu: str | None, days: float | None) -> ComputeOptimal:
    template = load_spec(source or TEMPLATE, sets)
    if compute is not None:
        try:
            flops = float(parse_count(compute))
        except ValueError as error:
            raise LLMSpecError(f"--compute {compute}: {error}") from None
        gpus = None
    else:
        if budget is None or gpu is None or days is None or "," in gpu:
            raise LLMSpecError("size: give --compute FLOPS, or --budget USD with one --gpu and --days")
        device = catalogue.lookup(gpu)
        if device is None:
            raise LLMSpecError(f"--gpu {gpu}: unknown GPU (known: {', '.join(catalogue.names())})")
        price = template.cluster.price_per_gpu_hour or device.price_per_hour
        affordable = budget / (price * 24 * days)
        if affordable < 8:
            raise LLMSpecError(f"--budget {budget:g}: buys {affordable:.1f} {device.name} for {days:g} days; "
                               "at least one node of 8 is needed")
        gpus = 1 << (int(affordable).bit_length() - 1)  # whole nodes, a power of two: batch layouts divide
        # the model is not sized yet: its matmuls at the generation's fitted rate (a model that fills this
        # budget is wide enough that the memory-bound kernels cost little)
        efficiency = template.cluster.efficiency or device.efficiency
        flops = gpus * device.peak_flops[template.training.precision] * efficiency * days * 86400
    rules = optimal(flops)
    shaped = shape_for(rules["20_tokens_per_param"]["params"], template)
    tokens = int(rules["20_tokens_per_param"]["tokens"])
    data = shaped.model_dump(exclude={"training": {"gradient_accumulation_steps"},
                                      "parallelism": {"data_parallel"}})
    data["name"] = f"compute-optimal-{flops:.2g}".replace("+", "")
    data["training"].update(tokens=tokens, max_steps=None)
    if gpus is not None:
        data["cluster"].update(gpu=gpu, gpus_per_node=8, nodes=gpus // 8)
        par, tr = data["parallelism"], data["training"]
        per_step = tr["micro_batch_size"] * gpus // (par["tensor"] * par["pipeline"])
        tr["global_batch_size"] = -(-tr["global_batch_size"] // per_step) * per_step  # a whole number of steps
    spec = _a_layout_that_fits(Spec.model_validate(data))
    return ComputeOptimal(flops, rules, spec, _params(spec))


def _a_layout_that_fits(spec: Spec) -> Spec:
    """The template's layout when the sized model fits it; else the fastest layout of the layout search on the
    same GPU type and at most as many GPUs (so that --write never writes a spec that does not fit)."""
    from llmspec.planner.layout_search import search, with_layout
    from llmspec.planner.training import plan

    if plan(spec, alternatives=False).fits:
        return spec
    found = search(spec, [spec.cluster.device.name], max_gpus=spec.cluster.gpus)
    if found.best is None:
        raise LLMSpecError(f"{spec.name}: no layout of up to {spec.cluster.gpus} {spec.cluster.device.name} fits "
                           "the compute-optimal model; give more GPUs (--budget) or another --gpu")
    return with_layout(spec, found.best)
