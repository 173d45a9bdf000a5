"""Parameter names between transformers checkpoints and the compiled model.

Every name of the compiled model maps to exactly one transformers name, by a short list of rules per family; the
compiled model's own ``state_dict`` (built on the meta device) is the list of names to fill. Three families store
tensors differently, and are converted both ways:

- GPT-2's Conv1D keeps its weights transposed;
- Phi-3 fuses q, k and v into one ``qkv_proj`` (stacked) and gate and up into ``gate_up_proj``; GPT-NeoX fuses q, k
  and v into ``query_key_value`` interleaved per head ([q, k, v] of head 0, then head 1, …): the compiled model keeps
  them apart, as Llama does, so that tensor parallelism shards them head by head;
- Gemma's RMSNorm scales by (1 + w): the compiled model's norm scales by its weight, so it holds w + 1 (in fp32,
  where Gemma computes 1 + w: the same number), and export writes it back less 1.
"""

from __future__ import annotations

import re

import torch

from llmspec.errors import LLMSpecError
from llmspec.spec.model import ModelSpec

_GPT2 = [(r"^embed\.", "transformer.wte."), (r"^pos_embed\.", "transformer.wpe."), (r"^norm\.", "transformer.ln_f."),
         (r"^blocks\.(\d+)\.", r"transformer.h.\1."), (r"\.attn_norm\.", ".ln_1."), (r"\.mlp_norm\.", ".ln_2."),
         (r"\.attn\.qkv_proj\.", ".attn.c_attn."), (r"\.attn\.o_proj\.", ".attn.c_proj."),
         (r"\.mlp\.up_proj\.", ".mlp.c_fc."), (r"\.mlp\.down_proj\.", ".mlp.c_proj.")]
_DECODER = [(r"^embed\.", "model.embed_tokens."), (r"^norm\.", "model.norm."),
            (r"^blocks\.(\d+)\.", r"model.layers.\1."), (r"\.attn\.", ".self_attn."),
            (r"\.mlp\.router\.", ".block_sparse_moe.gate."),
            (r"\.mlp\.experts\.(\d+)\.gate_proj\.", r".block_sparse_moe.experts.\1.w1."),
            (r"\.mlp\.experts\.(\d+)\.up_proj\.", r".block_sparse_moe.experts.\1.w3."),
            (r"\.mlp\.experts\.(\d+)\.down_proj\.", r".block_sparse_moe.experts.\1.w2.")]
_PRE_NORMS = [(r"\.attn_norm\.", ".input_layernorm."), (r"\.mlp_norm\.", ".post_attention_layernorm.")]
# OLMo 2 normalises each sub-block's output; Gemma normalises both its input and its output
_POST_NORMS = [(r"\.attn_post_norm\.", ".post_attention_layernorm."),
               (r"\.mlp_post_norm\.", ".post_feedforward_layernorm.")]
_SANDWICH_NORMS = [(r"\.attn_norm\.", ".input_layernorm."), (r"\.mlp_norm\.", ".pre_feedforward_layernorm."),
                   *_POST_NORMS]
_NEOX = [(r"^embed\.", "gpt_neox.embed_in."), (r"^norm\.", "gpt_neox.final_layer_norm."), (r"^lm_head\.", "embed_out."),
         (r"^blocks\.(\d+)\.", r"gpt_neox.layers.\1."), *_PRE_NORMS, (r"\.attn\.o_proj\.", ".attention.dense."),
         (r"\.attn\.", ".attention."), (r"\.mlp\.up_proj\.", ".mlp.dense_h_to_4h."),
         (r"\.mlp\.down_proj\.", ".mlp.dense_4h_to_h.")]
RULES = {"gpt2": _GPT2, "gpt_neox": _NEOX, "olmo2": _POST_NORMS + _DECODER, "gemma2": _SANDWICH_NORMS + _DECODER,
         "gemma3_text": _SANDWICH_NORMS + _DECODER}
GEMMA = ("gemma2", "gemma3_text")
# Checkpoint entries that are buffers, not parameters (old GPT-2 and GPT-NeoX causal masks, rotary frequencies).
_IGNORED = re.compile(r"(\.attn\.bias|\.attn\.masked_bias|\.attention\.bias|\.attention\.masked_bias|"
                      r"rotary_emb\.inv_freq)$")
_GPT2_CONV1D = re.compile(r"\.(c_attn|c_proj|c_fc)\.weight$")
_NORM_WEIGHT = re.compile(r"(^|\.)\w*norm\.weight$")


# A multimodal checkpoint's language model, by its transformers 5 and 4 names; the vision tower and projector stay
_LANGUAGE_MODEL = [(r"^model\.language_model\.", "model."), (r"^language_model\.model\.", "model."),
                   (r"^language_model\.lm_head\.", "lm_head.")]
_VISION = re.compile(r"^(model\.)?(vision_tower|multi_modal_projector)\.")


def language_model_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a multimodal checkpoint's language model (Gemma 3), under the text model's names."""
    out = {}
    for name, tensor in tensors.items():
        if _VISION.match(name):
            continue
        for pattern, replacement in _LANGUAGE_MODEL:
            name = re.sub(pattern, replacement, name)
        out[name] = tensor
    return out


def hf_name(name: str, family: str) -> str:
    """The transformers name of a compiled model's parameter (Phi-3's and GPT-NeoX's fused projections by the name
    of each part: ``fuse`` joins them)."""
    for pattern, replacement in RULES.get(family, _PRE_NORMS + _DECODER):
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


def unfuse(tensors: dict[str, torch.Tensor], family: str, model: ModelSpec) -> dict[str, torch.Tensor]:
    """A checkpoint's fused projections as their parts, under the names ``hf_name`` gives the parts."""
    if family == "mixtral":
        return _unfuse_experts(tensors)
    if family not in ("phi3", "gpt_neox"):
        return tensors
    sizes = [model.n_heads * model.head_dim, model.n_kv_heads * model.head_dim, model.n_kv_heads * model.head_dim]
    out = {}
    for name, tensor in tensors.items():
        if family == "gpt_neox" and name == "lm_head.weight":
            out["embed_out.weight"] = tensor  # transformers 5's name for it (it reads either)
        elif family == "phi3" and ".self_attn.qkv_proj." in name:
            for part, piece in zip("qkv", tensor.split(sizes), strict=True):
                out[name.replace(".qkv_proj.", f".{part}_proj.")] = piece
        elif family == "phi3" and ".mlp.gate_up_proj." in name:
            gate, up = tensor.chunk(2, dim=0)
            out[name.replace(".gate_up_proj.", ".gate_proj.")] = gate
            out[name.replace(".gate_up_proj.", ".up_proj.")] = up
        elif family == "gpt_neox" and ".attention.query_key_value." in name:
            per_head = tensor.reshape(model.n_heads, 3, model.head_dim, *tensor.shape[1:])
            for index, part in enumerate("qkv"):
                out[name.replace(".query_key_value.", f".{part}_proj.")] = per_head[:, index].reshape(
                    -1, *tensor.shape[1:])
        else:
            out[name] = tensor
    return out


def fuse(tensors: dict[str, torch.Tensor], family: str, model: ModelSpec) -> dict[str, torch.Tensor]:
    """``unfuse`` undone: the parts joined into the family's fused projections."""
    if family not in ("phi3", "gpt_neox"):
        return tensors
    out = {}
    for name, tensor in tensors.items():
        if re.search(r"\.(k|v|up)_proj\.", name):
            continue  # joined with its q (or gate) part below
        if family == "phi3" and ".self_attn.q_proj." in name:
            parts = [tensors[name.replace(".q_proj.", f".{p}_proj.")] for p in "qkv"]
            out[name.replace(".q_proj.", ".qkv_proj.")] = torch.cat(parts)
        elif family == "phi3" and ".mlp.gate_proj." in name:
            out[name.replace(".gate_proj.", ".gate_up_proj.")] = torch.cat(
                [tensor, tensors[name.replace(".gate_proj.", ".up_proj.")]])
        elif family == "gpt_neox" and ".attention.q_proj." in name:
            parts = [tensors[name.replace(".q_proj.", f".{p}_proj.")] for p in "qkv"]
            rest = tensor.shape[1:]
            per_head = torch.stack([p.reshape(model.n_heads, model.head_dim, *rest) for p in parts], dim=1)
            out[name.replace(".q_proj.", ".query_key_value.")] = per_head.reshape(-1, *rest)
        else:
            out[name] = tensor
    return out


def from_hf(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], family: str, model: ModelSpec,
            source: str) -> dict[str, torch.Tensor]:
    """The compiled model's state dict (names and shapes of ``expected``) filled from a transformers checkpoint."""
    tied = model.tie_embeddings
    tensors = unfuse({n: t for n, t in tensors.items() if not _IGNORED.search(n)}, family, model)
    out, used = {}, set()
    for name, like in expected.items():
        if tied and name == "lm_head.weight":
            continue  # filled from the embedding below
        key = hf_name(name, family)
        if key not in tensors:
            raise LLMSpecError(f"{source}: missing tensor {_fused_name(key, family)} (for {name})")
        tensor = tensors[key]
        if family == "gpt2" and _GPT2_CONV1D.search(key):
            tensor = tensor.t()
        if tuple(tensor.shape) != tuple(like.shape):
            raise LLMSpecError(f"{source}: {_fused_name(key, family)} has shape {tuple(tensor.shape)}, the config "
                               f"implies {tuple(like.shape)}")
        if family in GEMMA and _NORM_WEIGHT.search(name):
            tensor = tensor.float() + 1.0  # Gemma's norm scales by 1 + w
        out[name] = tensor.contiguous()
        used.add(key)
    if tied:
        out["lm_head.weight"] = out["embed.weight"]
        used.update(("lm_head.weight", "embed_out.weight"))
    unused = sorted(set(tensors) - used)
    if unused:
        raise LLMSpecError(f"{source}: {len(unused)} tensor(s) the config does not account for, e.g. "
                           f"{_fused_name(unused[0], family)}")
    return out


def _fused_name(key: str, family: str) -> str:
    """A part's name as the checkpoint writes it (the fused tensor holding it)."""
    if family == "phi3":
        return re.sub(r"\.(gate|up)_proj\.", ".gate_up_proj.", re.sub(r"\.self_attn\.[qkv]_proj\.",
                                                                      ".self_attn.qkv_proj.", key))
    if family == "gpt_neox":
        return re.sub(r"\.attention\.[qkv]_proj\.", ".attention.query_key_value.", key)
    return key


def to_hf(state: dict[str, torch.Tensor], family: str, model: ModelSpec) -> dict[str, torch.Tensor]:
    """A transformers state dict from the compiled model's (tied heads left out: transformers re-ties them)."""
    out = {}
    dtype = state["embed.weight"].dtype
    for name, tensor in state.items():
        if model.tie_embeddings and name == "lm_head.weight":
            continue
        key = hf_name(name, family)
        if family == "gpt2" and _GPT2_CONV1D.search(key):
            tensor = tensor.t()
        if family in GEMMA and _NORM_WEIGHT.search(name):
            tensor = (tensor.float() - 1.0).to(dtype)
        out[key] = tensor.detach().contiguous()
    return fuse(out, family, model)
