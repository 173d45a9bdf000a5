"""The compiled models as ``llmspec measure`` runs them: built without memory (meta device or fake mode) in the
training precision, with MoE routing made data-independent and, under FP8, linears that save what Transformer
Engine's save.

MoE routing depends on data, which meta and fake tensors do not have: measurement gives every expert an equal
share of the routed tokens (their total, tokens × top_k, is exact), so FLOPs and bytes are those of balanced routing.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from llmspec.compile.loading import model_module
from llmspec.spec.schema import Spec


class BalancedRouting(TorchDispatchMode):
    """Stand-in for data-dependent routing on meta/fake tensors: ``nonzero`` of the i-th expert's mask returns an
    equal share (± 1) of the mask's elements, so the shares over all experts sum to tokens × top_k exactly."""

    def __init__(self, n_experts: int):
        super().__init__()
        self.n_experts, self.calls = n_experts, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.nonzero.default:
            mask = args[0]
            share, extra = divmod(mask.numel(), self.n_experts)
            count = share + (self.calls % self.n_experts < extra)
            self.calls += 1
            return torch.zeros((count, mask.dim()), dtype=torch.long, device=mask.device)
        return func(*args, **(kwargs or {}))


def routing(spec: Spec):
    """Balanced routing for a MoE model; nothing to do for a dense one."""
    return BalancedRouting(spec.model.moe.n_experts) if spec.model.moe else nullcontext()


class _FP8SavedLinear(torch.autograd.Function):
    """A bf16 linear that keeps for backward what Transformer Engine's FP8 linear keeps: the FP8 (E4M3) copy of its
    input it multiplies, and the weight. Measurement only saves; nothing runs backward through it."""

    @staticmethod
    def forward(ctx, x, weight, bias, x_fp8):
        ctx.save_for_backward(x_fp8, weight)
        return torch.nn.functional.linear(x, weight, bias)


def fp8_saved_inputs(spec: Spec, model: torch.nn.Module) -> None:
    """Under Transformer Engine's FP8, the block linears save their input as FP8, cast once per input (fused q/k/v
    and gate/up modules share one copy); the router and the LM head stay in 16 bits."""
    if spec.training.precision != "fp8" or spec.training.fp8_library != "transformer_engine":
        return
    # keyed by the input's storage; the input is held with its copy, so no later tensor can reuse that storage
    casts: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def cast(x: torch.Tensor) -> torch.Tensor:
        key = (x.untyped_storage()._cdata, x.storage_offset(), tuple(x.shape))
        if key not in casts:
            casts[key] = (x, x.detach().to(torch.float8_e4m3fn))
        return casts[key][1]

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] not in ("router", "lm_head"):
            module.forward = lambda x, m=module: _FP8SavedLinear.apply(x, m.weight, m.bias, cast(x))


def dtype_of(spec: Spec) -> torch.dtype:
    # FP8 training keeps activations in bf16 but the inputs of its linears (``fp8_saved_inputs``)
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
            "fp8": torch.bfloat16}[spec.training.precision]


def build(spec: Spec) -> torch.nn.Module:
    """The compiled model in the training precision, on the current device or fake mode (no ``.to()``, which
    fake parameters refuse), in training mode."""
    dtype, default = dtype_of(spec), torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = model_module(spec).Model()
    finally:
        torch.set_default_dtype(default)
    frozen_codes = set(quantised(model))  # they keep their constants in fp32 (their _apply)
    for module in model.modules():  # RoPE tables are computed in fp32; training casts them with the model
        if module in frozen_codes:
            continue
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.is_floating_point():
                module._buffers[name] = buffer.to(dtype)
    return model.train()


def quantised(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The compiled model's quantised linears (their weights are buffers of codes and fp32 constants)."""
    return [module for module in model.modules() if hasattr(module, "dequantised")]
