"""Calibration of the time model on published runs: each GPU family's matmul efficiency (``catalogue.EFFICIENCY``)
and the memory-bound kernels' share (``device_inputs.ELEMENTWISE``), fitted by least squares on the log ratios of every
published point; ``benchmarks/calibrate.py`` runs the fit and writes docs/calibration.md. Re-timing a plan at
other constants needs no new plan: the step time is a function of the plan's inputs, of which only ``eff``
changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmspec.planner import numeric
from llmspec.planner.device_inputs import achieved_efficiency
from llmspec.planner.published import tflops_per_gpu
from llmspec.planner.training import Plan, plan
from llmspec.spec.schema import Spec

# The Llama 2 model card (A100-80GB GPU-hours for 2T tokens): the GPU-hours points of the A100 fit.
MODEL_CARD_GPU_HOURS = {"llama2-7b": 184_320, "llama2-70b": 1_720_320}
MODEL_CARD_SOURCE = "Llama 2 model card (Touvron et al. 2023), A100-80GB GPU-hours for 2T tokens"
TIME_FORMULAS = frozenset(name for name, group in numeric.GROUPS.items() if group == "Time and cost")


@dataclass
class Point:
    """One published figure and the planner's prediction for it (ratio > 1: the planner is optimistic)."""

    name: str
    family: str  # the GPU family whose fitted efficiency it calibrates (catalogue.EFFICIENCY)
    quantity: str  # "TFLOP/s per GPU" or "GPU-hours"
    published: float
    predicted: float
    source: str

    @property
    def ratio(self) -> float:
        """Predicted speed over published: throughput over throughput, or published GPU-hours over predicted."""
        speed = self.quantity.startswith("TFLOP")
        return self.predicted / self.published if speed else self.published / self.predicted


class Calibration:
    """The published points, each planned once; ``points(efficiency, elementwise)`` re-times them."""

    def __init__(self, specs: dict[str, Spec]):
        self.cases = []
        for name, spec in specs.items():
            planned: Plan = plan(spec, alternatives=False)
            inputs = {k: v for k, v in planned.env.items() if k not in TIME_FORMULAS}
            self.cases.append((name, planned.spec, planned.spec.cluster.device, inputs))

    def points(self, efficiency: dict[str, float], elementwise: float) -> list[Point]:
        """Every point re-timed at these family efficiencies and memory-bound share (achieved_efficiency)."""
        found = []
        for name, spec, gpu, inputs in self.cases:
            eff = achieved_efficiency(gpu, spec, spec.parallelism.tensor, efficiency[gpu.family], elementwise)
            env = numeric.evaluate({**inputs, "eff": eff}, TIME_FORMULAS)
            if spec.published is not None:
                found.append(Point(name, gpu.family, "TFLOP/s per GPU", spec.published.tflops_per_gpu,
                                   tflops_per_gpu(spec, env), spec.published.source))
            else:
                found.append(Point(name, gpu.family, "GPU-hours", MODEL_CARD_GPU_HOURS[name], env["gpu_hours"],
                                   MODEL_CARD_SOURCE))
        return found


def loss(points: list[Point]) -> float:
    """Sum of squared log ratios: a 10% miss either way weighs the same on every point."""
    return sum(math.log(p.ratio) ** 2 for p in points)


def published_specs() -> dict[str, Spec]:
    """Every named spec with a published figure (specs/published/), and the Llama 2 model-card specs."""
    from llmspec.spec.loading import load_spec, named_specs

    names = [n for n in sorted(named_specs()) if n.startswith("published/")] + sorted(MODEL_CARD_GPU_HOURS)
    return {name: load_spec(name) for name in names}


def _golden(f, low: float, high: float, tolerance: float = 1e-4) -> float:
    """The minimum of a unimodal f on [low, high] by golden-section search."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low, high
    while b - a > tolerance:
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if f(c) < f(d):
            b = d
        else:
            a = c
    return (a + b) / 2


def fit(calibration: Calibration) -> tuple[dict[str, float], float]:
    """The families' efficiencies and the memory-bound share that minimise ``loss`` over every point: for each
    share, each family's efficiency by golden section on its own points; the share by golden section outside."""
    families = sorted({case[2].family for case in calibration.cases})
    best: dict[float, dict[str, float]] = {}

    def total(elementwise: float) -> float:
        efficiency = {}
        for family in families:
            efficiency[family] = _golden(lambda e, family=family: loss(
                [p for p in calibration.points(dict.fromkeys(families, e), elementwise) if p.family == family]),
                0.2, 1.0)
        best[elementwise] = efficiency
        return loss(calibration.points(efficiency, elementwise))

    elementwise = _golden(total, 0.0, 8.0, tolerance=1e-2)
    total(elementwise)
    return best[elementwise], elementwise


def _layout(spec: Spec) -> str:
    par = spec.parallelism
    parts = [f"TP {par.tensor}"] + [f"{k} {v}" for k, v in (("CP", par.context), ("PP", par.pipeline)) if v > 1]
    if par.pipeline > 1 and par.virtual_stages != 1:
        parts[-1] += f" (v {par.virtual_stages})"
    return " × ".join(parts + [f"DP {par.data_parallel}"])


def report(calibration: Calibration) -> str:
    """docs/calibration.md: the time model's fitted constants, and every published point against its prediction
    at the catalogue's constants."""
    from llmspec.planner.device_inputs import ELEMENTWISE
    from llmspec.spec import catalogue

    points = calibration.points(catalogue.EFFICIENCY, ELEMENTWISE)
    efficiency, elementwise = fit(calibration)
    lines = [
        "# Calibration of the time model",
        "",
        "<!-- written by benchmarks/calibrate.py --write; tests/test_published.py checks it is current -->",
        "",
        "A step's time is its FLOPs at an achieved fraction of peak, plus what communication, the pipeline bubble "
        "and stage imbalance leave exposed (docs/formulas.md, \"Time and cost\"). The achieved fraction is",
        "",
        "    eff = E[family] · w / (w + ELEMENTWISE · R)",
        "",
        "with E the GPU family's efficiency on large matmuls, w the width the block's memory-bound kernels sweep "
        "per GPU (d_model / tensor, or d_model under sequence parallelism), and R the GPU's ridge point (peak "
        "FLOP/s over HBM bytes/s at the training precision). Links run at what NCCL's collectives achieve of "
        f"their peak: NVLink {catalogue.NVLINK_ACHIEVED:.0%}, InfiniBand/RoCE {catalogue.NETWORK_ACHIEVED:.0%} "
        "(llmspec/spec/catalogue.py cites the nccl-tests measurements). Tensor-parallel collectives are exposed "
        "whole unless `parallelism.tp_comm_overlap` pipelines them under their matmuls, which leaves 1/tensor of "
        "them and whatever outlasts the matmuls.",
        "",
        "## Fitted constants",
        "",
        "Least squares on the log ratio of every point below (a 10% miss weighs the same on each). "
        "`python benchmarks/calibrate.py` refits.",
        "",
        "| constant | fit | catalogue |",
        "|---|---:|---:|",
        f"| ELEMENTWISE | {elementwise:.3f} | {ELEMENTWISE:.3f} |",
        *(f"| E[{family}] | {value:.3f} | {catalogue.EFFICIENCY[family]:.3f} |"
          for family, value in sorted(efficiency.items())),
        "",
        "## Predicted against published",
        "",
        "At the catalogue's constants. Speed ratio: predicted over published throughput, or published over "
        "predicted GPU-hours; above 1 the planner is optimistic. Megatron-LM counts FLOPs with recompute and "
        "attention over every key (`published.counted: megatron`); Llama 3's MFU is compared with the plan's "
        "(6N + causal attention per token).",
        "",
        "| run | GPU | GPUs | layout | quantity | published | predicted | speed ratio |",
        "|---|---|---:|---|---|---:|---:|---:|",
    ]
    specs = {name: spec for name, spec, *_ in calibration.cases}
    for point in points:
        spec = specs[point.name]
        lines.append(f"| {point.name} | {spec.cluster.device.name} | {spec.cluster.gpus:,} | {_layout(spec)} | "
                     f"{point.quantity} | {point.published:,.0f} | {point.predicted:,.0f} | {point.ratio:.3f} |")
    worst = max(points, key=lambda p: abs(math.log(p.ratio)))
    rms = math.sqrt(loss(points) / len(points))
    lines += [
        "",
        f"Residuals: root-mean-square {rms:.1%} (of the log ratio), worst {worst.name} at {worst.ratio:.3f}; "
        "tests/test_published.py holds every point within ±15%.",
        "",
        "## Every GPU's matmul efficiency",
        "",
        "| GPU | matmul efficiency | from |",
        "|---|---:|---|",
        *(f"| {gpu.name} | {gpu.efficiency:.2f} | {gpu.efficiency_source} |" for gpu in catalogue.CATALOGUE),
        "",
    ]
    return "\n".join(lines)
