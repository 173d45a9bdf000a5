"""The planner's device inputs: the GPU's peak and achieved FLOP/s, its links, memory and price, for the spec's
cluster or (the layout search) numpy columns of node counts and degrees. What the time model knows of hardware."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from llmspec.errors import Problem, SpecError
from llmspec.planner.inputs import choose, sixteen_bit
from llmspec.spec import catalogue
from llmspec.spec.schema import Spec

# What the time model knows of a GPU's kernels (docs/calibration.md says where each number comes from): its
# generation's matmul efficiency (catalogue.EFFICIENCY, fitted on published runs), its attention kernel's forward and
# backward fractions of peak (catalogue.ATTENTION, FlashAttention-2's published kernel benchmarks), and its HBM
# bandwidth, over which the memory-bound kernels move ELEMENTWISE_PASSES passes of their tensors (fitted with the
# efficiencies by benchmarks/calibrate.py). A calibration file (cluster.calibration, written by `llmspec measure
# --steps --write-calibration`) replaces the constants for the GPU it was measured on.
ELEMENTWISE_PASSES = 12.0
# keys per query at which FlashAttention reaches half its long-context rate: short and causal sequences leave tiles
# partly masked and too few thread blocks per head (FlashAttention-2's causal curves: about 0.65 of the 16k rate at
# 512 tokens, 0.9 at 2k)
ATTENTION_HALF_CONTEXT = 128
# what memory-bound kernels achieve of the data sheet's HBM bandwidth (a device-to-device copy: 1.7 of 2.0 TB/s on
# A100-80GB, 2.9 of 3.35 on H100-SXM)
HBM_ACHIEVED = 0.85


@dataclass(frozen=True)
class KernelRates:
    """A GPU's kernel constants: the catalogue's, or a calibration file's for the GPU it was measured on."""

    matmul: float
    attention_forward: float
    attention_backward: float
    elementwise_passes: float = ELEMENTWISE_PASSES
    attention_materialised: float = 0  # 1: scores materialised (no fused attention kernel)

    @classmethod
    def of(cls, gpu: catalogue.GPU, head_dim: int) -> KernelRates:
        """The catalogue's rates for ``gpu`` at ``head_dim``: FlashAttention's tiles do less work per byte loaded
        at narrower heads (d/(d + 32), relative to head dim 128; no faster above it)."""
        forward, backward = catalogue.ATTENTION[gpu.family]
        narrow = min(1.0, head_dim / (head_dim + 32) / (128 / 160))
        return cls(gpu.efficiency, forward * narrow, backward * narrow,
                   attention_materialised=float(gpu.family == "cpu"))  # torch's math attention on CPU


def kernel_rates(spec: Spec, gpu: catalogue.GPU | None = None) -> KernelRates:
    """The rates a plan uses: the catalogue's for ``gpu`` (default the spec's), replaced by the spec's calibration
    file where it was measured on that GPU, and its matmul efficiency by ``cluster.efficiency``."""
    gpu = gpu or spec.cluster.device
    rates = KernelRates.of(gpu, spec.model.head_dim)
    if spec.cluster.calibration is not None:
        rates = read_calibration(spec.cluster.calibration, gpu, rates)
    if spec.cluster.efficiency:
        rates = replace(rates, matmul=spec.cluster.efficiency)
    return rates


def kernel_inputs(spec: Spec, gpu: catalogue.GPU, rates: KernelRates | None = None) -> dict[str, Any]:
    """The time model's kernel inputs for ``gpu``: matmul, attention and memory-bound rates."""
    rates = rates or kernel_rates(spec, gpu)
    return {"eff": rates.matmul, "attention_fwd_eff": rates.attention_forward,
            "attention_bwd_eff": rates.attention_backward, "attention_half_context": ATTENTION_HALF_CONTEXT,
            "elementwise_passes": rates.elementwise_passes, "attention_materialised": rates.attention_materialised,
            "bw_memory": gpu.hbm_bandwidth * HBM_ACHIEVED}


def _rails(intra: Any, inter: Any, ranks_per_node: Any) -> Any:
    """Per-rank bandwidth of a ring collective across nodes whose GPUs each have a NIC (rail-optimised, as DGX and
    its kin are built): NCCL runs one ring per NIC, so a group with r ranks on each node crosses between nodes r
    times in parallel, up to what NVLink carries within the node."""
    r = choose(ranks_per_node >= 1, ranks_per_node, 1)
    return choose(inter * r < intra, inter * r, intra)


def usable_memory(gpu: catalogue.GPU, spec: Spec) -> int:
    """Bytes per GPU that PyTorch may use: the device's memory less the spec's reserve (CUDA context, NCCL)."""
    return gpu.memory_bytes - int(spec.cluster.memory_reserve_gib * 2**30)


def device_inputs(spec: Spec, gpu: catalogue.GPU | None = None, nodes: Any = None, gpus_per_node: Any = None,
                  tensor: Any = None, pipeline: Any = None, context: Any = None, expert: Any = None) -> dict[str, Any]:
    """Device, link and price inputs: the spec's cluster, or (the layout search) another GPU and numpy columns of
    node counts and degrees. Bandwidth overrides in the spec apply to any GPU."""
    cl, par = spec.cluster, spec.parallelism
    gpu = gpu or cl.device
    nodes = cl.nodes if nodes is None else nodes
    within = cl.gpus_per_node if gpus_per_node is None else gpus_per_node
    t = par.tensor if tensor is None else tensor
    p = par.pipeline if pipeline is None else pipeline
    c = par.context if context is None else context
    ep = par.expert if expert is None else expert
    # links at what collectives achieve of their peak (catalogue.NVLINK_ACHIEVED, NETWORK_ACHIEVED)
    intra = (cl.intra_node_bandwidth * 1e9 if cl.intra_node_bandwidth else gpu.intra_node_bandwidth) \
        * catalogue.NVLINK_ACHIEVED
    inter = (cl.inter_node_bandwidth * 1e9 if cl.inter_node_bandwidth else gpu.inter_node_bandwidth) \
        * catalogue.NETWORK_ACHIEVED
    return {
        "F_peak": gpu.peak_flops[sixteen_bit(spec.training.precision)],
        "F_matmul": gpu.peak_flops[spec.training.precision],
        **kernel_inputs(spec, gpu),
        # the last gradient bucket DeepSpeed reduces after the backward that fills it
        "reduce_bucket_bytes": par.reduce_bucket_size * (4 if par.byte_regime == "megatron" else
                                                         (4 if spec.training.precision == "fp32" else 2)),
        "bw_dp": choose(nodes == 1, intra, _rails(intra, inter, within / (t * p * c))),
        "bw_tp": choose(t <= within, intra, inter),
        "bw_ep": choose(t * ep <= within, intra, inter),  # expert groups are consecutive ranks
        "bw_pp": choose(t * p <= within, intra, inter),
        "bw_cp": choose(t * c <= within, intra, inter),  # context groups: consecutive ranks after tensor
        "cpu_adam_rate": catalogue.CPU_ADAM_RATE,
        "price": cl.price_per_gpu_hour if cl.price_per_gpu_hour is not None else gpu.price_per_hour,
    }


# ---- calibration files and kernel profiles (cluster.calibration) ----
CALIBRATION_KEYS = ("matmul", "attention_forward", "attention_backward", "elementwise_passes",
                    "attention_materialised")
CALIBRATED_INPUTS = {"eff": "matmul"}  # formula input -> calibration key, where they differ


def calibration_values(source: str, gpu: catalogue.GPU) -> dict[str, float]:
    """The rates a calibration names for ``gpu``: a kernel profile's (catalogue.KERNEL_PROFILES, for its family),
    or a measured file's where it was measured on ``gpu`` (a file from another GPU gives nothing). A missing or
    malformed file is a SpecError naming cluster.calibration."""
    import yaml

    if source in catalogue.KERNEL_PROFILES:
        return dict(catalogue.KERNEL_PROFILES[source].get(gpu.family, {}))

    def bad(message: str) -> SpecError:
        return SpecError([Problem("cluster.calibration", message, source=source)])

    try:
        data = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    except OSError as err:
        raise bad(f"cannot read: {err.strerror or err} (a file from `llmspec measure --steps --write-calibration`, "
                  f"or a kernel profile: {', '.join(catalogue.KERNEL_PROFILES)})") from None
    except yaml.YAMLError:
        raise bad("not YAML or JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("gpu"), str):
        raise bad("expected a mapping with 'gpu' and the measured rates (llmspec measure --write-calibration)")
    unknown = sorted(set(data) - {"gpu", "measured", "source", *CALIBRATION_KEYS})
    if unknown:
        raise bad(f"unknown key '{unknown[0]}' (expected gpu, {', '.join(CALIBRATION_KEYS)}, measured, source)")
    found = catalogue.lookup(data["gpu"])
    if (found.name if found else data["gpu"]) != gpu.name:  # a custom GPU goes by its own name
        return {}
    values = {}
    for key in CALIBRATION_KEYS:
        value = data.get(key)
        if value is None:
            continue
        if key == "attention_materialised":
            if value not in (0, 1) or isinstance(value, bool):
                raise bad(f"{key} must be 0 or 1, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise bad(f"{key} must be a positive number, got {value!r}")
        values[key] = float(value)
    return values


def read_calibration(source: str, gpu: catalogue.GPU, rates: KernelRates) -> KernelRates:
    """``rates`` with what the calibration ``source`` (a file or a kernel profile) gives for ``gpu``."""
    return replace(rates, **calibration_values(source, gpu))


def calibration_text(gpu: str, rates: KernelRates, measured: dict, source: str) -> str:
    """A calibration file's text (YAML is a superset of this JSON)."""
    body = {"gpu": gpu, **{key: round(getattr(rates, key), 4) for key in CALIBRATION_KEYS}, "source": source,
            "measured": measured}
    return json.dumps(body, indent=2) + "\n"
