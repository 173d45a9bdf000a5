"""``llmspec measure``: the compiled model, measured without memory, beside the planner's predictions.

- Parameters: the model built on the meta device, shared tensors counted once.
- FLOPs: one micro-batch forward + backward on the meta device under ``FlopCounterMode``. There SDPA takes the
  math path, which the counter sees, and counts attention in full (every query against every key). The planner
  counts the causal triangle (or the window), so the comparison swaps in full attention on the planner's side;
  recomputed FLOPs (checkpointing) are counted by both.
- Activations: the bytes saved for backward by one micro-batch under ``FakeTensorMode`` on the CPU device, where
  SDPA takes the flash path and saves O(s) statistics as GPU kernels do. Saved-tensor hooks see every saved
  tensor; each storage counts once (by ``untyped_storage()._cdata``), parameters excluded; logits, loss and RoPE
  tables included (``memory.activations`` in shared/design.md).

MoE routing depends on data, which meta and fake tensors do not have: measurement gives every expert an equal
share of the routed tokens (their total, tokens × top_k, is exact), so FLOPs and bytes are those of balanced routing.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from llmspec.compile.loading import model_module
from llmspec.planner.inputs import sequence_length
from llmspec.planner.training import CHECKPOINTING, plan, single_device_env
from llmspec.spec.post_training import RL_METHODS, sequences_per_example
from llmspec.spec.schema import Spec


@dataclass
class Comparison:
    measured: float
    planned: float

    @property
    def ratio(self) -> float:
        """planned / measured: 1.0 is a perfect prediction."""
        return self.planned / self.measured if self.measured else float("nan")

    def to_json(self) -> dict[str, float]:
        return {"measured": self.measured, "planned": self.planned, "ratio": self.ratio}


@dataclass
class Measurement:
    spec: Spec
    params: Comparison
    flops: dict[str, Comparison] = field(default_factory=dict)  # per checkpointing mode, one micro-batch
    activations: dict[str, Comparison] = field(default_factory=dict)  # bytes, per checkpointing mode
    notes: list[str] = field(default_factory=list)
    trainable: Comparison | None = None  # post-training: parameters with gradients
    frozen_bytes: Comparison | None = None  # post-training: the frozen weights as stored

    def to_json(self) -> dict[str, Any]:
        tr = self.spec.training
        extra = {} if self.trainable is None else {"trainable": self.trainable.to_json(),
                                                   "frozen_bytes": self.frozen_bytes.to_json()}
        return {
            "name": self.spec.name,
            "micro_batch": {"sequences": tr.micro_batch_size, "seq_len": sequence_length(self.spec)},
            "params": self.params.to_json(), **extra,
            "flops": {mode: c.to_json() for mode, c in self.flops.items()},
            "activations": {mode: c.to_json() for mode, c in self.activations.items()},
            "notes": self.notes,
        }


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


def _with_checkpointing(spec: Spec, mode: str) -> Spec:
    par = spec.parallelism.model_copy(update={"activation_checkpointing": mode})
    return spec.model_copy(update={"parallelism": par})


def _routing(spec: Spec):
    return BalancedRouting(spec.model.moe.n_experts) if spec.model.moe else nullcontext()


def _batch(spec: Spec, device: str) -> torch.Tensor:
    tr = spec.training
    return torch.zeros((tr.micro_batch_size * sequences_per_example(spec.post_training), sequence_length(spec)),
                       dtype=torch.long, device=device)


def _train_step(spec: Spec, model: torch.nn.Module, module: Any, device: str, backward: bool = True) -> None:
    """One micro-batch of the spec's objective, forward (+ backward): next-token cross-entropy (pretraining, sft),
    Bradley-Terry on each pair's last-token scores (reward), or DPO with its reference (dpo)."""
    idx, targets = _batch(spec, device), _batch(spec, device) + 1  # distinct inputs and targets, as in training
    post = spec.post_training
    method = post.method if post is not None else "pretrain"
    if method == "reward":
        scores = model(idx)[0][:, -1]
        pairs = scores.shape[0] // 2
        loss = module.reward_loss(scores[:pairs], scores[pairs:])
    elif method == "dpo":
        policy = module.sequence_logprobs(model(idx)[0], targets)
        reference = _reference_logprobs(spec, model, module, idx, targets)
        pairs = idx.shape[0] // 2
        loss = module.dpo_loss(policy[:pairs], policy[pairs:], reference[:pairs], reference[pairs:])
    else:
        loss = model(idx, targets)[1]
    if backward:
        loss.backward()


def _reference_logprobs(spec: Spec, model: torch.nn.Module, module: Any, idx: torch.Tensor,
                        targets: torch.Tensor) -> torch.Tensor:
    reference = spec.post_training.reference
    if reference == "precomputed":  # read from the data: nothing runs
        return torch.zeros(idx.shape[0], device=idx.device)
    with torch.no_grad():
        if reference == "adapter_off":
            model.set_adapters(False)
            try:
                return module.sequence_logprobs(model(idx)[0], targets)
            finally:
                model.set_adapters(True)
        with torch.device(idx.device):  # copy: a second model, frozen (its weights do not matter to the count)
            frozen = _build(spec).eval()
        return module.sequence_logprobs(frozen(idx)[0], targets)


def _dtype(spec: Spec) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[spec.training.precision]


def _build(spec: Spec) -> torch.nn.Module:
    """The compiled model in the training precision, on the current device or fake mode (no ``.to()``, which
    fake parameters refuse), in training mode."""
    dtype, default = _dtype(spec), torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = model_module(spec).Model()
    finally:
        torch.set_default_dtype(default)
    quantised = set(_quantised(model))  # they keep their constants in fp32 (their _apply)
    for module in model.modules():  # RoPE tables are computed in fp32; training casts them with the model
        if module in quantised:
            continue
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.is_floating_point():
                module._buffers[name] = buffer.to(dtype)
    return model.train()


def _quantised(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The compiled model's quantised linears (their weights are buffers of codes and fp32 constants)."""
    return [module for module in model.modules() if hasattr(module, "dequantised")]


def count_params(spec: Spec) -> tuple[int, int]:
    """(trainable, frozen) parameters of the compiled model; a quantised linear counts its weights as frozen
    parameters (they are stored as buffers of codes and constants)."""
    with torch.device("meta"):
        model = model_module(spec).Model()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # a tied tensor counts once
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    frozen += sum(m.in_features * m.out_features for m in _quantised(model))
    return trainable, frozen


def frozen_bytes(spec: Spec) -> int:
    """Bytes of the compiled model's frozen weights as stored: parameters that do not train, and the codes and
    constants of quantised linears."""
    with torch.device("meta"):
        model = _build(spec)
    held = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    return held + sum(b.numel() * b.element_size() for m in _quantised(model) for b in m.buffers(recurse=False))


def count_flops(spec: Spec) -> int:
    """FLOPs of one micro-batch forward + backward (recompute included) on the meta device."""
    with torch.device("meta"):
        model = _build(spec)
        module = model_module(spec)
    with _routing(spec), FlopCounterMode(display=False) as counter:
        _train_step(spec, model, module, "meta")
    return counter.get_total_flops()


def count_saved_bytes(spec: Spec) -> int:
    """Bytes saved for backward by one micro-batch (FakeTensorMode on the CPU device: SDPA's flash path)."""
    with FakeTensorMode():
        model = _build(spec)
        parameters = {p.untyped_storage()._cdata for p in model.parameters()}
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage._cdata not in parameters:
                saved[storage._cdata] = storage.nbytes()
            return tensor

        with _routing(spec), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            _train_step(spec, model, model_module(spec), "cpu", backward=False)
    return sum(saved.values())


def measure(spec: Spec, modes: tuple[str, ...] = CHECKPOINTING) -> Measurement:
    """Measure the compiled model of ``spec`` for each checkpointing mode and compare with the planner."""
    planned = plan(spec, alternatives=False)
    trainable, frozen = count_params(spec)
    result = Measurement(spec, Comparison(trainable + frozen, planned.params["trainable"] + planned.params["frozen"]))
    if spec.post_training is not None:
        result.trainable = Comparison(trainable, planned.params["trainable"])
        result.frozen_bytes = Comparison(frozen_bytes(spec), planned.env["bytes_frozen"])
    for mode in modes:
        variant = _with_checkpointing(spec, mode)
        # fake tensors follow the CPU kernels; FlopCounterMode counts every key of SDPA
        env = single_device_env(spec, mode, cpu_kernels=True, full_attention=True)
        tokens = env["b"] * env["s"]
        result.flops[mode] = Comparison(count_flops(variant), env["flops_per_token_hardware"] * tokens)
        result.activations[mode] = Comparison(count_saved_bytes(variant), float(env["memory_activations"]))
    result.notes.append("FLOPs: one micro-batch forward + backward (+ recompute); attention counted in full "
                        "(FlopCounterMode's convention) on both sides")
    result.notes.append("activations: one micro-batch on one device (no tensor/pipeline split), planned as CPU kernels "
                        "save them (LayerNorm keeps mean/rstd in the input dtype there, fp32 on GPUs)")
    if spec.post_training is not None:
        result.notes.append(f"{spec.post_training.method}: its objective's step (pairs run as 2 sequences each); "
                            "frozen weights as stored (quantisation codes and constants)")
    if spec.post_training is not None and spec.post_training.method in RL_METHODS:
        result.notes.append(f"{spec.post_training.method}: the policy's training step on rollout-length sequences, "
                            "next-token cross-entropy standing in for the clipped objective (the RL phases are "
                            "planned, not measured here)")
    if spec.model.moe:
        result.notes.append("MoE: balanced routing (each expert gets tokens × top_k / n_experts)")
    return result
