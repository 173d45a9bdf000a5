"""A LoRA run for other tools: the adapters merged into the base (a plain model transformers loads), and the
adapters alone in PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``), which
``peft.PeftModel.from_pretrained`` loads onto the base the run started from. The adapter's
``base_model_name_or_path`` names that base where it is a Hugging Face checkpoint (the run started from an
``import-hf`` folder, which records it), else the export's merged folder; a README beside it says which, and
whether the adapter was trained against a quantised (NF4 or int8) base.

Merging follows LoRA's definition, W' = W + (alpha / r) · B·A (alpha / sqrt(r) with rsLoRA), in fp32. PEFT names
an adapter tensor by the transformers module it adapts under ``base_model.model.``; the compiled model's linears
already carry transformers' Llama names (q_proj … down_proj), so the mapping is the model's own (``hf_name``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llmspec.errors import LLMSpecError
from llmspec.interop.hf_config import hf_family
from llmspec.interop.hf_weights import hf_name
from llmspec.interop.output import Content, Tensors, write_output
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


def write_adapter(state: dict[str, torch.Tensor], spec: Spec, out: Path, base: str | None = None) -> list[Path]:
    """``adapter_files`` written into ``out``."""
    return write_output(out, adapter_files(state, spec, base or str(spec.training.init_from or "")), "export-hf")


def adapter_files(state: dict[str, torch.Tensor], spec: Spec, base: str, merged: Path | None = None,
                  ) -> dict[str, Content]:
    """adapter_config.json + adapter_model.safetensors (PEFT's layout, for a Llama-family model) and README.md,
    for the adapter of a model whose base is ``base`` (a Hugging Face name or folder); ``merged``: the folder the
    merged model is exported to, when ``base`` is that folder (the run started from no Hugging Face model)."""
    post, model = spec.post_training, spec.model
    family = hf_family(spec)
    if model.fused_qkv or family in ("phi3", "gpt_neox"):
        raise LLMSpecError(f"export-hf: a PEFT adapter is written for models whose transformers family keeps q, k "
                           f"and v apart ({family} fuses them); this model's merged weights are written, its adapter "
                           "is not")
    tensors = {f"base_model.model.{hf_name(name, family)}": tensor.detach().contiguous()
               for name, tensor in state.items() if any(part in name for part in LORA_PARTS)}
    targets = post.lora_targets(model.fused_qkv, model.gated, model.moe is not None)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": post.adapter.r, "lora_alpha": post.adapter.alpha,
              "lora_dropout": post.adapter.dropout, "target_modules": targets, "use_rslora": post.adapter.rslora,
              "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
              "base_model_name_or_path": base}
    return {"adapter_config.json": json.dumps(config, indent=2) + "\n",
            "adapter_model.safetensors": Tensors(tensors, {"format": "pt"}),
            "README.md": _readme(spec, base, merged)}


def _readme(spec: Spec, base: str, merged: Path | None) -> str:
    """What the adapter applies to: the note a user reads before ``PeftModel.from_pretrained``."""
    post = spec.post_training
    lines = ["# LoRA adapter (PEFT format), exported by `llmspec export-hf`", ""]
    if merged is None:
        lines.append(f"Trained on the base `{base}` (`base_model_name_or_path`): load that model, then "
                     "`PeftModel.from_pretrained(model, THIS_FOLDER)`.")
    else:
        lines += [f"The run started from `{spec.training.init_from}`, which is not a Hugging Face checkpoint, so "
                  f"`base_model_name_or_path` names the merged export `{base}`, which already holds this adapter: "
                  "load it as it is. To apply the adapter yourself, export the starting run (`llmspec export-hf "
                  f"{spec.training.init_from} -o BASE`) and load it onto that."]
    if post.base_precision in ("nf4", "int8"):
        quant = "int8"
        if post.base_precision == "nf4":
            quant = "NF4 (QLoRA, double-quantised constants)" if post.double_quant else "NF4 (QLoRA)"
        lines += ["", f"Trained against a quantised base: the frozen weights were stored as {quant} and dequantised "
                  "in each product. On the base in full precision this adapter's logits differ from the run's by "
                  "that quantisation error; the merged model beside it holds the base as the run dequantised it."]
    return "\n".join(lines) + "\n"
