"""Calibration of the time model on published runs: each GPU family's matmul efficiency (``catalogue.EFFICIENCY``)
and the eager memory-bound kernels' HBM passes (``device_inputs.ELEMENTWISE_PASSES``), fitted by least squares on the
log ratios of every published point, with each point's leave-one-out error; ``benchmarks/calibrate.py`` runs the
fit and writes docs/calibration.md. Re-timing a plan at other constants needs no new plan: the step time is a
function of the plan's inputs, of which only ``eff`` and ``elementwise_passes`` change.

Also the calibration file a user's own measurement writes (``llmspec measure --steps --write-calibration``) and the
planner reads (``cluster.calibration``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmspec.planner import numeric
from llmspec.planner.device_inputs import (
    ATTENTION_HALF_CONTEXT,
    CALIBRATED_INPUTS,
    ELEMENTWISE_PASSES,
    HBM_ACHIEVED,
    calibration_values,
)
from llmspec.planner.published import tflops_per_gpu
from llmspec.spec import catalogue
from llmspec.spec.schema import Spec

# The Llama 2 model card (A100-80GB GPU-hours for 2T tokens): the GPU-hours points of the A100 fit.
MODEL_CARD_GPU_HOURS = {"llama2-7b": 184_320, "llama2-70b": 1_720_320}
MODEL_CARD_SOURCE = "Llama 2 model card (Touvron et al. 2023), A100-80GB GPU-hours for 2T tokens"
# Published throughput in tokens per second per GPU (FSDP and ZeRO-3 runs, which report tokens rather than FLOPs);
# each spec's comment gives the layout and what the run used that `run` lacks.
_FOUNDRY = "MosaicML llm-foundry, scripts/train/benchmarking/README.md"
_TITAN = "torchtitan's performance.md (its repository's docs folder)"
TOKENS_PER_SECOND = {
    "published/mpt-7b-2k-h100": (10_643, f"{_FOUNDRY}, H100 80GB BF16 table"),
    "published/mpt-7b-8k-h100": (6_935, f"{_FOUNDRY}, H100 80GB BF16 table"),
    "published/mpt-7b-32k-h100": (3_318, f"{_FOUNDRY}, H100 80GB BF16 table"),
    "published/mpt-13b-2k-h100-64": (4_800, f"{_FOUNDRY}, H100 80GB BF16 table"),
    "published/mpt-30b-2k-h100-32": (2_308, f"{_FOUNDRY}, H100 80GB BF16 table"),
    "published/mpt-70b-2k-h100-64": (1_039, f"{_FOUNDRY}, H100 80GB BF16 table"),
    "published/mpt-7b-2k-a100": (4_641, f"{_FOUNDRY}, A100 80GB table"),
    "published/mpt-7b-32k-a100": (1_672, f"{_FOUNDRY}, A100 80GB table"),
    "published/mpt-30b-2k-a100": (916, f"{_FOUNDRY}, A100 80GB table"),
    "published/mpt-70b-2k-a100-64": (410, f"{_FOUNDRY}, A100 80GB table"),
    "published/torchtitan-llama3-8b-h100": (5_762, f"{_TITAN} (2024-12), Table 1"),
    "published/torchtitan-llama3-8b-h100-128": (5_605, f"{_TITAN} (2024-12), Table 3"),
    "published/torchtitan-llama3-8b-a100": (2_973, f"{_TITAN} (2024-06), Llama 3 table"),
    "published/torchtitan-llama3-70b-a100": (331, f"{_TITAN} (2024-06), Llama 3 table"),
}
TIME_FORMULAS = frozenset(name for name, group in numeric.GROUPS.items() if group == "Time and cost")
# the constants the fit moves: each family's matmul efficiency, and the eager elementwise passes
Constants = tuple[dict[str, float], float]


@dataclass
class Point:
    """One published figure and the planner's prediction for it (ratio > 1: the planner is optimistic)."""

    name: str
    family: str  # the GPU family whose fitted efficiency it calibrates (catalogue.EFFICIENCY)
    quantity: str  # "TFLOP/s per GPU", "tokens/s per GPU" or "GPU-hours"
    published: float
    predicted: float
    source: str

    @property
    def ratio(self) -> float:
        """Predicted speed over published: throughput over throughput, or published GPU-hours over predicted."""
        speed = self.quantity != "GPU-hours"
        return self.predicted / self.published if speed else self.published / self.predicted


class Calibration:
    """The published points, each planned once; ``points(efficiency, passes)`` re-times them."""

    def __init__(self, specs: dict[str, Spec]):
        from llmspec.planner.training import plan

        self.cases = []
        for name, spec in specs.items():
            planned = plan(spec, alternatives=False)
            inputs = {k: v for k, v in planned.env.items() if k not in TIME_FORMULAS}
            gpu = planned.spec.cluster.device
            # what the run's own kernels fix (its kernel profile), which the fit does not move
            fixed = calibration_values(spec.cluster.calibration, gpu) if spec.cluster.calibration else {}
            self.cases.append((name, planned.spec, gpu, inputs, fixed))

    def points(self, efficiency: dict[str, float], passes: float, only: str | None = None,
               leave_out: str | None = None) -> list[Point]:
        """Every point (of family ``only``; less ``leave_out``) re-timed at these family matmul efficiencies and
        elementwise passes. A spec's own calibration file (a published run's kernels that `run` lacks) keeps its
        rates."""
        found = []
        for name, spec, gpu, inputs, fixed in self.cases:
            if (only is not None and gpu.family != only) or name == leave_out:
                continue
            moved = {"eff": efficiency[gpu.family], "elementwise_passes": passes}
            moved = {k: v for k, v in moved.items() if CALIBRATED_INPUTS.get(k, k) not in fixed}
            env = numeric.evaluate({**inputs, **moved}, TIME_FORMULAS)
            if spec.published is not None:
                found.append(Point(name, gpu.family, "TFLOP/s per GPU", spec.published.tflops_per_gpu,
                                   tflops_per_gpu(spec, env), spec.published.source))
            elif name in TOKENS_PER_SECOND:
                published, source = TOKENS_PER_SECOND[name]
                found.append(Point(name, gpu.family, "tokens/s per GPU", published,
                                   env["tokens_per_second"] / env["n_gpu"], source))
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


def fit(calibration: Calibration, leave_out: str | None = None) -> Constants:
    """The families' efficiencies and the elementwise passes that minimise ``loss`` over every point (less
    ``leave_out``): for each number of passes, each family's efficiency by golden section on its own points; the
    passes by golden section outside."""
    families = sorted({case[2].family for case in calibration.cases})
    best: dict[float, dict[str, float]] = {}

    def total(passes: float) -> float:
        efficiency = {}
        for family in families:
            efficiency[family] = _golden(lambda e, family=family: loss(calibration.points(
                dict.fromkeys(families, e), passes, only=family, leave_out=leave_out)), 0.2, 1.0, 1e-3)
        best[passes] = efficiency
        return loss(calibration.points(efficiency, passes, leave_out=leave_out))

    passes = _golden(total, 1.0, 12.0, tolerance=2e-2)
    total(passes)
    return best[passes], passes


def leave_one_out(calibration: Calibration) -> dict[str, float]:
    """Each point's speed ratio when the constants are fitted on every other point."""
    ratios = {}
    for name, *_ in calibration.cases:
        efficiency, passes = fit(calibration, leave_out=name)
        ratios[name] = next(p.ratio for p in calibration.points(efficiency, passes) if p.name == name)
    return ratios


# ---- a user's calibration file -------------------------------------------------------------------------------
def _layout(spec: Spec) -> str:
    par = spec.parallelism
    parts = [f"TP {par.tensor}"] + [f"{k} {v}" for k, v in (("CP", par.context), ("PP", par.pipeline)) if v > 1]
    if par.pipeline > 1 and par.virtual_stages != 1:
        parts[-1] += f" (v {par.virtual_stages})"
    parts.append(f"DP {par.data_parallel}")
    if par.zero_stage == 3:
        parts[-1] += " (ZeRO-3/FSDP)"
    return " × ".join(parts)


def report(calibration: Calibration) -> str:
    """docs/calibration.md: the time model's fitted constants, and every published point against its prediction
    at the catalogue's constants and when left out of the fit."""
    points = calibration.points(catalogue.EFFICIENCY, ELEMENTWISE_PASSES)
    efficiency, passes = fit(calibration)
    held_out = leave_one_out(calibration)
    lines = [
        "# Calibration of the time model",
        "",
        "<!-- written by benchmarks/calibrate.py --write; tests/test_published.py checks it is current -->",
        "",
        "A step's time is each kernel class at its own rate, plus what communication, the pipeline bubble and stage "
        "imbalance leave exposed (docs/formulas.md, \"Time and cost\"):",
        "",
        "- **matmuls** at E[family] of the GPU's peak: fitted below on the published runs;",
        "- **attention** at its kernel's forward and backward fractions of peak (`catalogue.ATTENTION`: "
        "FlashAttention-2's published kernel benchmarks, Dao 2023 on A100, Shah et al. 2024 on H100), less at "
        f"narrow heads (d/(d + 32) relative to head dim 128) and short contexts (half rate at "
        f"{ATTENTION_HALF_CONTEXT} keys per query); without a fused kernel (CPU, Megatron-LM 2021) the scores are "
        "materialised and their traffic counted;",
        "- **memory-bound kernels** (norms, residual adds, activations, RoPE, the loss) as the bytes they read "
        f"and write over {HBM_ACHIEVED:.0%} of HBM bandwidth; RMSNorm and RoPE written as torch ops make "
        "ELEMENTWISE_PASSES passes (fitted below) where a fused kernel makes one. A narrow model, a long "
        "sequence and H100's higher ridge point each show up here for their own reason;",
        "- **data-parallel communication** as DeepSpeed runs it: ZeRO-1/2 reductions under the backward beside "
        "them (the last bucket exposed), ZeRO-3's per-layer gathers and reduce-scatters hidden only behind the "
        "neighbouring layer's compute; ring collectives across nodes run one ring per NIC "
        f"(NVLink {catalogue.NVLINK_ACHIEVED:.0%}, InfiniBand/RoCE {catalogue.NETWORK_ACHIEVED:.0%} of peak: "
        "llmspec/spec/catalogue.py cites the nccl-tests measurements);",
        "- the **optimizer step** as its states' bytes over HBM bandwidth.",
        "",
        "A published run whose kernels `run` lacks names them in `cluster.calibration` (a kernel profile, "
        "`catalogue.KERNEL_PROFILES`): Megatron-LM 2021's fused kernels and materialised attention, Llama 3's "
        "Hopper-native attention and fused norms, llm-foundry's Triton FlashAttention. `llmspec measure --steps "
        "--write-calibration` writes the same kind of file from a run on your own GPU.",
        "",
        "## Fitted constants",
        "",
        "Least squares on the log ratio of every point below (a 10% miss weighs the same on each). "
        "`python benchmarks/calibrate.py` refits.",
        "",
        "| constant | fit | catalogue |",
        "|---|---:|---:|",
        f"| ELEMENTWISE_PASSES | {passes:.2f} | {ELEMENTWISE_PASSES:.2f} |",
        *(f"| E[{family}] | {value:.3f} | {catalogue.EFFICIENCY[family]:.3f} |"
          for family, value in sorted(efficiency.items())),
        "",
        "The catalogue keeps E[hopper] 0.02 above the fit: at the fit, Llama 3 405B's 16k layout plans 16% slow, "
        "while the FSDP runs on H100 (llm-foundry 2023, torchtitan 2024) want less; one efficiency per generation "
        "cannot serve both within 15%.",
        "",
        "## Predicted against published",
        "",
        "At the catalogue's constants, and left out: the constants refitted on every other point, then this one "
        "predicted. Speed ratio: predicted over published throughput, or published over predicted GPU-hours; "
        "above 1 the planner is optimistic. Megatron-LM counts FLOPs with recompute and attention over every key "
        "(`published.counted: megatron`); Llama 3's MFU is compared with the plan's (6N + causal attention per "
        "token); FSDP runs report tokens/s per GPU.",
        "",
        "| run | GPU | GPUs | layout | quantity | published | predicted | speed ratio | left out |",
        "|---|---|---:|---|---|---:|---:|---:|---:|",
    ]
    specs = {name: spec for name, spec, *_ in calibration.cases}
    for point in points:
        spec = specs[point.name]
        lines.append(f"| {point.name} | {spec.cluster.device.name} | {spec.cluster.gpus:,} | {_layout(spec)} | "
                     f"{point.quantity} | {point.published:,.0f} | {point.predicted:,.0f} | {point.ratio:.3f} | "
                     f"{held_out[point.name]:.3f} |")
    worst = max(points, key=lambda p: abs(math.log(p.ratio)))
    worst_out = max(held_out, key=lambda n: abs(math.log(held_out[n])))
    rms = math.sqrt(loss(points) / len(points))
    rms_out = math.sqrt(sum(math.log(r) ** 2 for r in held_out.values()) / len(held_out))
    outside = [p.name for p in points if not 0.85 <= p.ratio <= 1.15]
    lines += [
        "",
        f"Residuals: root-mean-square {rms:.1%} (of the log ratio), worst {worst.name} at {worst.ratio:.3f}; left "
        f"out: {rms_out:.1%}, worst {worst_out} at {held_out[worst_out]:.3f}. "
        + (f"Outside ±15%: {', '.join(outside)}." if outside else "Every point is within ±15%."),
        "",
        "## Every GPU's matmul efficiency",
        "",
        "| GPU | matmul efficiency | attention forward / backward | from |",
        "|---|---:|---:|---|",
        *(f"| {gpu.name} | {gpu.efficiency:.2f} | {catalogue.ATTENTION[gpu.family][0]:.2f} / "
          f"{catalogue.ATTENTION[gpu.family][1]:.2f} | {gpu.efficiency_source} |" for gpu in catalogue.CATALOGUE),
        "",
    ]
    return "\n".join(lines)
