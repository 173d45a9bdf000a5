"""The planner's device inputs: the GPU's peak and achieved FLOP/s, its links, memory and price, for the spec's
cluster or (the layout search) numpy columns of node counts and degrees. What the time model knows of hardware."""

from __future__ import annotations

from typing import Any

from llmspec.planner.inputs import choose, sixteen_bit
from llmspec.spec import catalogue
from llmspec.spec.schema import Spec

# The achieved fraction of peak for the FLOPs a GPU executes (recompute included), before exposed communication
# and pipeline bubbles, which the time model adds separately: the GPU generation's fitted matmul efficiency,
# lowered by the memory-bound kernels (norms, activations, residual adds, dropout) that run between the matmuls.
# Their time per token grows with the width they sweep (h, or h/t under sequence parallelism), the matmuls' with h²/t;
# so their share of a block's time is ELEMENTWISE·R/w, with w = h/t (h under sequence parallelism: both split) and R
# the GPU's ridge point in FLOPs per HBM byte. ELEMENTWISE (bytes those kernels move per unit of matmul work) is
# fitted with the generations' efficiencies by benchmarks/calibrate.py; docs/calibration.md has the fit and its
# residuals. Megatron-LM 2021 saw exactly this: "GPU utilization improves as the models get larger (larger matrix
# multiplications)".
ELEMENTWISE = 0.05


def achieved_efficiency(gpu: catalogue.GPU, spec: Spec, tensor: Any, matmul: float | None = None,
                        elementwise: float = ELEMENTWISE) -> Any:
    """The fraction of peak a block's FLOPs run at on ``gpu`` (``tensor`` may be a numpy column: the search);
    ``matmul`` and ``elementwise`` replace the fitted constants (the calibration tries others)."""
    width = spec.model.d_model / (1 if spec.parallelism.sequence_parallel else tensor)
    ridge = gpu.ridge[spec.training.precision]
    return (gpu.efficiency if matmul is None else matmul) * width / (width + elementwise * ridge)


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
        "eff": cl.efficiency or achieved_efficiency(gpu, spec, t),
        "bw_dp": choose(nodes == 1, intra, inter),
        "bw_tp": choose(t <= within, intra, inter),
        "bw_ep": choose(t * ep <= within, intra, inter),  # expert groups are consecutive ranks
        "bw_pp": choose(t * p <= within, intra, inter),
        "bw_cp": choose(t * c <= within, intra, inter),  # context groups: consecutive ranks after tensor
        "cpu_adam_rate": catalogue.CPU_ADAM_RATE,
        "price": cl.price_per_gpu_hour if cl.price_per_gpu_hour is not None else gpu.price_per_hour,
    }
