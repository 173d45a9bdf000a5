"""Parameter names between transformers checkpoints and the compiled model (and GPT-2's transposed Conv1D).

Every name of the compiled model maps to exactly one transformers name, by a short list of rules per family;
the compiled model's own ``state_dict`` (built on the meta device) is the list of names to fill.
"""

from __future__ import annotations

import re

import torch

from llmspec.errors import LLMSpecError

_GPT2 = [(r"^embed\.", "transformer.wte."), (r"^pos_embed\.", "transformer.wpe."), (r"^norm\.", "transformer.ln_f."),
         (r"^blocks\.(\d+)\.", r"transformer.h.\1."), (r"\.attn_norm\.", ".ln_1."), (r"\.mlp_norm\.", ".ln_2."),
         (r"\.attn\.qkv_proj\.", ".attn.c_attn."), (r"\.attn\.o_proj\.", ".attn.c_proj."),
         (r"\.mlp\.up_proj\.", ".mlp.c_fc."), (r"\.mlp\.down_proj\.", ".mlp.c_proj.")]
_LLAMA = [(r"^embed\.", "model.embed_tokens."), (r"^norm\.", "model.norm."),
          (r"^blocks\.(\d+)\.", r"model.layers.\1."), (r"\.attn_norm\.", ".input_layernorm."),
          (r"\.mlp_norm\.", ".post_attention_layernorm."), (r"\.attn\.", ".self_attn."),
          (r"\.mlp\.router\.", ".block_sparse_moe.gate."),
          (r"\.mlp\.experts\.(\d+)\.gate_proj\.", r".block_sparse_moe.experts.\1.w1."),
          (r"\.mlp\.experts\.(\d+)\.up_proj\.", r".block_sparse_moe.experts.\1.w3."),
          (r"\.mlp\.experts\.(\d+)\.down_proj\.", r".block_sparse_moe.experts.\1.w2.")]
# Checkpoint entries that are buffers, not parameters (old GPT-2 causal masks, rotary frequencies).
_IGNORED = re.compile(r"(\.attn\.bias|\.attn\.masked_bias|rotary_emb\.inv_freq)$")
_GPT2_CONV1D = re.compile(r"\.(c_attn|c_proj|c_fc)\.weight$")


def hf_name(name: str, family: str) -> str:
    for pattern, replacement in _GPT2 if family == "gpt2" else _LLAMA:
        name = re.sub(pattern, replacement, name)
    return name


def _unfuse_experts(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5 keeps Mixtral experts fused (mlp.experts.gate_up_proj, down_proj): split them per expert."""
    out = {}
    for name, tensor in tensors.items():
        match = re.match(r"^(model\.layers\.\d+)\.mlp\.(experts\.gate_up_proj|experts\.down_proj|gate\.weight)$", name)
        if not match:
            out[name] = tensor
            continue
        layer, kind = match.groups()
        if kind == "gate.weight":
            out[f"{layer}.block_sparse_moe.gate.weight"] = tensor
            continue
        for j, expert in enumerate(tensor):
            if kind == "experts.down_proj":
                out[f"{layer}.block_sparse_moe.experts.{j}.w2.weight"] = expert
            else:
                gate, up = expert.chunk(2, dim=0)
                out[f"{layer}.block_sparse_moe.experts.{j}.w1.weight"] = gate
                out[f"{layer}.block_sparse_moe.experts.{j}.w3.weight"] = up
    return out


def from_hf(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], family: str, tied: bool,
            source: str) -> dict[str, torch.Tensor]:
    """The compiled model's state dict (names and shapes of ``expected``) filled from a transformers checkpoint."""
    tensors = _unfuse_experts({n: t for n, t in tensors.items() if not _IGNORED.search(n)})
    out, used = {}, set()
    for name, like in expected.items():
        if tied and name == "lm_head.weight":
            continue  # filled from the embedding below
        key = hf_name(name, family)
        if key not in tensors:
            raise LLMSpecError(f"{source}: missing tensor {key} (for {name})")
        tensor = tensors[key]
        if family == "gpt2" and _GPT2_CONV1D.search(key):
            tensor = tensor.t()
        if tuple(tensor.shape) != tuple(like.shape):
            raise LLMSpecError(f"{source}: {key} has shape {tuple(tensor.shape)}, the config implies "
                               f"{tuple(like.shape)}")
        out[name] = tensor.contiguous()
        used.add(key)
    if tied:
        out["lm_head.weight"] = out["embed.weight"]
        used.add("lm_head.weight")
    unused = sorted(set(tensors) - used)
    if unused:
        raise LLMSpecError(f"{source}: {len(unused)} tensor(s) the config does not account for, e.g. {unused[0]}")
    return out


def to_hf(state: dict[str, torch.Tensor], family: str, tied: bool) -> dict[str, torch.Tensor]:
    """A transformers state dict from the compiled model's (tied heads left out: transformers re-ties them)."""
    out = {}
    for name, tensor in state.items():
        if tied and name == "lm_head.weight":
            continue
        key = hf_name(name, family)
        if family == "gpt2" and _GPT2_CONV1D.search(key):
            tensor = tensor.t()
        out[key] = tensor.detach().contiguous()
    return out
