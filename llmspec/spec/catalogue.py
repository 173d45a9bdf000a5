"""Built-in accelerator catalogue: memory, dense peak FLOP/s per dtype, bandwidths and a dated default price.

Peaks are dense (no 2:4 sparsity) tensor-core numbers from the vendors' data sheets (see shared references); FP8
is twice the 16-bit rate on every GPU that has it (Hopper, Ada, Blackwell, CDNA 3).
Prices are on-demand cloud list prices as of the date below; they change monthly, so every one is a default that
``cluster.price_per_gpu_hour`` overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PRICES_AS_OF = "2026-11"
# Offload paths (per GPU): PCIe 4.0 x16 to host memory, a data-centre NVMe drive; DeepSpeedCPUAdam throughput per
# node (ZeRO-Offload reports about 1-2 B parameters/s on a server CPU).
HOST_LINK_BANDWIDTH = 25e9
NVME_BANDWIDTH = 3e9
CPU_ADAM_RATE = 1.5e9
TERA = 1e12
GIGA = 1e9
# What collectives achieve of a link's one-direction peak (NCCL's bus bandwidth, the figure nccl-tests prints):
# NVLink: 8 x A100-SXM4-80GB all-reduce about 200 GB/s of 300 (NVIDIA/nccl-tests issues #149 and #178: 200-208);
# InfiniBand: three A100 nodes over 4 x HDR 200 Gb/s each, 84.8 GB/s average of 100 (NVIDIA/nccl-tests issue
# #119; 96 at its largest sizes). The spec's bandwidth overrides are peaks too, and take the same factors.
NVLINK_ACHIEVED = 0.67
NETWORK_ACHIEVED = 0.85
# Achieved fraction of peak on a transformer's large matmuls, per GPU family, fitted on published runs by
# benchmarks/calibrate.py (fit and residuals: docs/calibration.md): Ampere on Megatron-LM 2021's weak scaling and
# the Llama 2 model card, Hopper on Llama 3 405B. A GPU without a published run takes the nearest fitted family's
# (its efficiency_source says so); this machine's CPU keeps half its measured matmul rate.
EFFICIENCY = {"ampere": 0.63, "hopper": 0.59, "cpu": 0.5}
# The attention kernel's forward and backward fractions of the 16-bit peak at long context and head dim 128, per
# family: FlashAttention-2 (what torch's scaled_dot_product_attention runs on both). A100: Dao 2023
# (arXiv 2307.08691), Figs. 4-5: forward up to ~73% of peak, backward ~58%. H100: Shah et al. 2024
# (FlashAttention-3, arXiv 2407.08608), Figs. 5-6, FlashAttention-2's curves: ~350-370 TFLOP/s forward, ~300
# backward of 989 (FlashAttention-3 itself reaches ~75% forward: a run with it says so in its calibration file).
# The CPU's attention is matmuls (the math kernel).
ATTENTION = {"ampere": (0.70, 0.58), "hopper": (0.36, 0.30), "cpu": (0.5, 0.5)}
# Kernel profiles a spec names in cluster.calibration instead of a measured file: the kernels a published run used
# that `run` does not, as fractions of peak per family (keys as a calibration file's).
KERNEL_PROFILES: dict[str, dict[str, dict[str, float]]] = {
    # FlashAttention-3 (Shah et al. 2024, arXiv 2407.08608, Figs. 5-6): Hopper-native, ~75% of peak forward and
    # ~55% backward at head dim 128; with fused RMSNorm and RoPE kernels (one read and write per element)
    "fused-flash-attention-3": {"hopper": {"attention_forward": 0.75, "attention_backward": 0.55,
                                           "elementwise_passes": 1.0}},
    # FlashAttention in Triton (2023, what llm-foundry's MPT ran): FlashAttention-2 is 1.3-2.5x faster (Dao 2023,
    # Figs. 4-5): about half FlashAttention-2's rates
    "triton-flash-attention": {"ampere": {"attention_forward": 0.35, "attention_backward": 0.29},
                               "hopper": {"attention_forward": 0.18, "attention_backward": 0.15}},
    # Megatron-LM 2021: fused bias-GeLU and LayerNorm kernels (one read and write per element), and attention before
    # FlashAttention: the scores materialised, through its fused scale-mask-softmax
    "megatron-fused": {family: {"elementwise_passes": 1.0, "attention_materialised": 1.0}
                       for family in ("ampere", "hopper")},
}


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int
    peak_flops: dict[str, float]  # dtype -> dense FLOP/s; a dtype that is absent is unsupported
    hbm_bandwidth: float  # bytes/s
    intra_node_bandwidth: float  # bytes/s per GPU, one direction (NVLink/xGMI/PCIe)
    inter_node_bandwidth: float = 50 * GIGA  # bytes/s per GPU: 400 Gb/s InfiniBand/RoCE NIC per GPU
    price_per_hour: float = 0.0  # USD per GPU-hour
    aliases: tuple[str, ...] = field(default=())
    family: str = "ampere"  # whose fitted matmul efficiency it runs at (EFFICIENCY)
    efficiency_source: str = "Ampere's (a custom GPU)"

    @property
    def efficiency(self) -> float:
        """Achieved fraction of peak on large matmuls (EFFICIENCY)."""
        return EFFICIENCY[self.family]

    @property
    def ridge(self) -> dict[str, float]:
        """FLOPs per byte of HBM traffic at which each dtype's matmuls stop being memory-bound."""
        return {dtype: peak / self.hbm_bandwidth for dtype, peak in self.peak_flops.items()}


def _gib(n: float) -> int:
    return int(n * 2**30)


def _gb(n: float) -> int:
    return int(n * 1e9)


CATALOGUE: tuple[GPU, ...] = (
    GPU("V100-32GB", _gib(32), {"fp16": 125 * TERA, "fp32": 15.7 * TERA}, 0.9e12, 150 * GIGA, 12.5 * GIGA, 1.50,
        ("v100", "v100-sxm2-32gb"),
        family="ampere", efficiency_source="Ampere's (no published run)"),
    GPU("A100-40GB", _gib(40), {"bf16": 312 * TERA, "fp16": 312 * TERA, "fp32": 19.5 * TERA}, 1.555e12,
        300 * GIGA, 25 * GIGA, 1.30, ("a100-40g", "a100-sxm4-40gb"),
        family="ampere", efficiency_source="fitted: Megatron-LM 2021, Llama 2"),
    GPU("A100-80GB", _gib(80), {"bf16": 312 * TERA, "fp16": 312 * TERA, "fp32": 19.5 * TERA}, 2.039e12,
        300 * GIGA, 25 * GIGA, 1.80, ("a100", "a100-80g", "a100-sxm4-80gb"),
        family="ampere", efficiency_source="fitted: Megatron-LM 2021, Llama 2"),
    GPU("H100-SXM", _gib(80), {"bf16": 989 * TERA, "fp16": 989 * TERA, "fp8": 1979 * TERA, "fp32": 67 * TERA},
        3.35e12, 450 * GIGA, 50 * GIGA, 3.00, ("h100", "h100-80gb", "h100-sxm5"),
        family="hopper", efficiency_source="fitted: Llama 3 405B"),
    # Meta's Grand Teton H100 (torchtitan's benchmarks): 96 GB of HBM2e at 2.4 TB/s,
    # capped at 500 W: its peak is "between SXM and NVL" (torchtitan); a capped part sustains lower clocks than its
    # data sheet's boost, so taken as the NVL's 835 TFLOP/s (a 400 W part)
    GPU("H100-HBM2e", _gb(96), {"bf16": 835 * TERA, "fp16": 835 * TERA, "fp8": 1670 * TERA, "fp32": 60 * TERA},
        2.4e12, 450 * GIGA, 50 * GIGA, 3.00, ("h100-96gb", "h100-hbm2e-96gb"),
        family="hopper", efficiency_source="Hopper's (torchtitan's published runs)"),
    GPU("H100-PCIe", _gib(80), {"bf16": 756 * TERA, "fp16": 756 * TERA, "fp8": 1513 * TERA, "fp32": 51 * TERA},
        2.0e12, 64 * GIGA, 25 * GIGA, 2.50, ("h100pcie",),
        family="hopper", efficiency_source="Hopper's (no published run)"),
    GPU("H200", _gib(141), {"bf16": 989 * TERA, "fp16": 989 * TERA, "fp8": 1979 * TERA, "fp32": 67 * TERA},
        4.8e12, 450 * GIGA, 50 * GIGA, 3.80, ("h200-sxm", "h200-141gb"),
        family="hopper", efficiency_source="Hopper's (no published run)"),
    GPU("B200", _gib(180), {"bf16": 2250 * TERA, "fp16": 2250 * TERA, "fp8": 4500 * TERA, "fp32": 80 * TERA},
        8.0e12, 900 * GIGA, 50 * GIGA, 6.00, ("b200-sxm",),
        family="hopper", efficiency_source="Hopper's (no published run)"),
    GPU("MI300X", _gib(192), {"bf16": 1307 * TERA, "fp16": 1307 * TERA, "fp8": 2615 * TERA, "fp32": 163 * TERA},
        5.3e12, 448 * GIGA, 50 * GIGA, 3.50, ("mi300",),
        family="hopper", efficiency_source="Hopper's (no published run)"),
    GPU("L4", _gib(24), {"bf16": 121 * TERA, "fp16": 121 * TERA, "fp8": 242 * TERA, "fp32": 30 * TERA},
        0.3e12, 32 * GIGA, 12.5 * GIGA, 0.80, (),
        family="ampere", efficiency_source="Ampere's (no published run)"),
    GPU("RTX-4090", _gib(24), {"bf16": 165 * TERA, "fp16": 165 * TERA, "fp8": 330 * TERA, "fp32": 82.6 * TERA},
        1.0e12, 32 * GIGA, 12.5 * GIGA, 0.70, ("4090", "rtx4090", "geforce-rtx-4090"),
        family="ampere", efficiency_source="Ampere's (no published run)"),
    # This machine class: 2 cores, fp32 matmul ~188 GFLOP/s measured; no native bf16; DeepSpeed refuses fp16.
    GPU("cpu", _gib(24), {"fp32": 188 * GIGA, "bf16": 10 * GIGA}, 20e9, 10 * GIGA, 1 * GIGA, 0.0, ("host",),
        family="cpu", efficiency_source="half the measured matmul rate (no published run)"),
)


def _key(name: str) -> str:
    return name.lower().replace("_", "-").replace(" ", "-")


_BY_NAME: dict[str, GPU] = {}
for _gpu in CATALOGUE:
    for _alias in (_gpu.name, *_gpu.aliases):
        _BY_NAME[_key(_alias)] = _gpu
        _BY_NAME[_key(_alias).replace("-", "")] = _gpu


def lookup(name: str) -> GPU | None:
    """Case-insensitive lookup by name or alias (``h100``, ``A100_80GB`` and ``a10080gb`` all work)."""
    key = _key(name)
    return _BY_NAME.get(key) or _BY_NAME.get(key.replace("-", ""))


# Names that more than one catalogue GPU answers to. Each is taken as the GPU its alias belongs to (the common case:
# an "H100" in a cluster is an SXM board, an "A100" the 80 GB one), and the commands say which in a notice rather
# than refusing the name: specs that say `gpu: H100` keep working, and the plan's numbers (989 or 756 TFLOP/s,
# NVLink or PCIe) are never silently someone else's.
SHARED_NAMES = {"h100": ("H100-PCIe",), "h10080gb": ("H100-PCIe",), "a100": ("A100-40GB",)}


def choice_notice(name: str) -> str | None:
    """One line saying which GPU a shared name was taken as and what else it could mean; None for an exact name."""
    others = SHARED_NAMES.get(_key(name).replace("-", ""))
    chosen = lookup(name)
    if not others or chosen is None:
        return None
    return (f"cluster.gpu '{name}' is taken as {chosen.name} (it could also mean {', '.join(others)}: name the one "
            "you have)")


def names() -> list[str]:
    return [gpu.name for gpu in CATALOGUE]
