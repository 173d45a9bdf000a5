"""A LoRA run for other tools: the adapters merged into the base (a plain model transformers loads), and the
adapters alone in PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``), which
``peft.PeftModel.from_pretrained`` loads onto the base the run started from.

Merging follows LoRA's definition, W' = W + (alpha / r) · B·A (alpha / sqrt(r) with rsLoRA), in fp32. PEFT names
an adapter tensor by the transformers module it adapts under ``base_model.model.``; the compiled model's linears
already carry transformers' Llama names (q_proj … down_proj), so the mapping is the model's own (``hf_name``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llmspec.errors import LLMSpecError
from llmspec.files import write_atomic
from llmspec.interop.hf_weights import hf_name
from llmspec.spec.schema import Spec

LORA_PARTS = (".lora_A.", ".lora_B.")


def base_spec(spec: Spec) -> Spec:
    """The plain model a post-training spec adapts (no adapters, no value head)."""
    return spec.model_copy(update={"post_training": None})


def merged_spec(spec: Spec) -> Spec:
    """The spec of a LoRA run's weights once merged: the same model and method (a reward model keeps its value
    head), its base dense in the training precision, no adapter."""
    post = spec.post_training
    merged = post.model_copy(update={"adapter": post.adapter.model_copy(update={"type": "none"}),
                                     "base_precision": spec.training.precision})
    return spec.model_copy(update={"post_training": merged})


def dequantised_state(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The model's state dict with each quantised linear's codes and constants (NF4 or int8) replaced by its
    weight, dequantised as its forward dequantises it, in ``dtype``: the dense base a QLoRA run's adapters merge
    into."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if hasattr(module, "dequantised"):  # the compiled model's quantised linear
            for key in [k for k, _ in module.named_buffers(prefix=name, recurse=False)]:
                del state[key]
            state[f"{name}.weight"] = module.dequantised(dtype)
    return state


def merged_state(state: dict[str, torch.Tensor], spec: Spec) -> dict[str, torch.Tensor]:
    """The base's state dict with every LoRA update folded into the weight it adapts."""
    post = spec.post_training
    scale = post.lora_scale
    merged = {}
    for name, tensor in state.items():
        if any(part in name for part in LORA_PARTS):
            continue
        if ".base_layer." in name:
            module, _, leaf = name.partition(".base_layer.")
            if leaf == "weight":
                update = state[f"{module}.lora_B.weight"].float() @ state[f"{module}.lora_A.weight"].float()
                tensor = (tensor.float() + scale * update).to(tensor.dtype)
            name = f"{module}.{leaf}"
        merged[name] = tensor
    return merged


def write_adapter(state: dict[str, torch.Tensor], spec: Spec, out: Path) -> list[Path]:
    """adapter_config.json + adapter_model.safetensors in ``out`` (PEFT's layout, for a Llama-family model)."""
    from llmspec.interop.hf import _save_atomic

    post, model = spec.post_training, spec.model
    if model.fused_qkv:
        raise LLMSpecError("export-hf: a PEFT adapter is written for Llama-family models (separate q/k/v "
                           "projections); this model's merged weights are written, its adapter is not")
    tensors = {f"base_model.model.{hf_name(name, 'llama')}": tensor.detach().contiguous()
               for name, tensor in state.items() if any(part in name for part in LORA_PARTS)}
    targets = post.lora_targets(model.fused_qkv, model.gated, model.moe is not None)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": post.adapter.r, "lora_alpha": post.adapter.alpha,
              "lora_dropout": post.adapter.dropout, "target_modules": targets, "use_rslora": post.adapter.rslora,
              "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
              "base_model_name_or_path": str(spec.training.init_from or "")}
    out.mkdir(parents=True, exist_ok=True)
    return [write_atomic(out / "adapter_config.json", json.dumps(config, indent=2) + "\n"),
            _save_atomic(tensors, out / "adapter_model.safetensors", {"format": "pt"})]
