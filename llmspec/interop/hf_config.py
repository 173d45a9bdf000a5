"""The spec's ``model`` section → a transformers ``config.json``: the family that computes exactly this model, and its
config (transformers 4 keys, which 5 reads too).

A family is picked by the feature only it has (sandwich norms: Gemma; a post-norm: OLMo 2; per-head QK-norm: Qwen3;
NoPE layers: SmolLM3; partial RoPE: Phi-3; LayerNorm with RoPE: GPT-NeoX; experts: Mixtral; a sliding window:
Mistral; q/k/v biases: Qwen2; else Llama); a feature the family lacks, or one it always has that the spec leaves
out, is one line naming both.
"""

from __future__ import annotations

from typing import Any

from llmspec.interop.hf_config_read import GATED_ACTIVATIONS, ConfigError
from llmspec.interop.hf_layers import HF_KINDS
from llmspec.interop.hf_rope import rope_to_hf
from llmspec.spec.architecture import layer_types, nope_indices
from llmspec.spec.schema import Spec

_HF_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
_HF_GATED = {mlp: name for name, mlp in GATED_ACTIVATIONS.items()}
_HF_NEOX = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "mixtral": "MixtralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "gemma2": "Gemma2ForCausalLM",
                 "gemma3_text": "Gemma3ForCausalLM", "olmo2": "Olmo2ForCausalLM", "phi3": "Phi3ForCausalLM",
                 "smollm3": "SmolLM3ForCausalLM", "gpt_neox": "GPTNeoXForCausalLM"}
_GEMMA = {"norm_placement sandwich", "embed_scale", "query_scale", "sliding_window", "layer_types", "attn_softcap",
          "final_softcap"}
# the features each RoPE family computes, and those it always has
SUPPORTS = {"llama": {"bias"}, "qwen2": {"qkv_bias"}, "mistral": {"sliding_window"},
            "mixtral": {"moe", "sliding_window"}, "qwen3": {"qk_norm head", "sliding_window", "layer_types"},
            "gemma2": _GEMMA, "gemma3_text": (_GEMMA - {"attn_softcap"}) | {"qk_norm head", "rope_local_theta"},
            "olmo2": {"qk_norm full", "norm_placement post"}, "phi3": {"partial_rotary", "sliding_window"},
            "smollm3": {"bias", "nope_layers", "sliding_window", "layer_types"},
            "gpt_neox": {"bias", "parallel_residual", "partial_rotary"}}
REQUIRES = {"gemma2": {"norm_placement sandwich", "embed_scale"},
            "gemma3_text": {"norm_placement sandwich", "embed_scale", "qk_norm head"},
            "olmo2": {"qk_norm full", "norm_placement post"}, "gpt_neox": {"bias"}}


def features(spec: Spec) -> set[str]:
    """The structural choices of a RoPE model that not every transformers family computes."""
    mo = spec.model
    used = {
        "moe": mo.moe is not None, "bias": mo.bias, "qkv_bias": mo.qkv_bias and not mo.bias,
        "sliding_window": mo.sliding_window is not None, "layer_types": mo.layer_types is not None,
        "attention_chunk_size": mo.attention_chunk_size is not None, f"qk_norm {mo.qk_norm}": mo.qk_norm != "none",
        f"norm_placement {mo.norm_placement}": mo.norm_placement != "pre", "parallel_residual": mo.parallel_residual,
        "partial_rotary": mo.partial_rotary != 1, "nope_layers": bool(nope_indices(mo)),
        "rope_local_theta": mo.rope_local_theta is not None, "attn_softcap": mo.attn_softcap is not None,
        "final_softcap": mo.final_softcap is not None, "embed_scale": mo.embed_scale is not None,
        "query_scale": mo.query_scale is not None}
    return {name for name, on in used.items() if on}


def _pick(spec: Spec, used: set[str]) -> str:
    mo = spec.model
    if mo.norm == "layernorm":
        return "gpt_neox"
    for feature, family in (("norm_placement sandwich", "gemma2"), ("norm_placement post", "olmo2"),
                            ("qk_norm full", "olmo2"), ("qk_norm head", "qwen3"), ("nope_layers", "smollm3"),
                            ("partial_rotary", "phi3"), ("parallel_residual", "gpt_neox"), ("moe", "mixtral"),
                            ("layer_types", "smollm3"), ("sliding_window", "mistral"), ("qkv_bias", "qwen2")):
        if feature in used:
            if family == "gemma2" and used & {"qk_norm head", "rope_local_theta"}:
                return "gemma3_text"
            return family
    return "llama"


def hf_family(spec: Spec) -> str:
    """The transformers family that computes exactly this spec's model, or a one-line reason there is none."""
    mo = spec.model
    if mo.position == "learned":
        problems = [text for bad, text in [
            (mo.norm != "layernorm", "norm layernorm"), (not mo.bias, "bias true"),
            (mo.gated, "a non-gated MLP"), (mo.n_kv_heads != mo.n_heads, "n_kv_heads = n_heads"),
            (mo.head_dim * mo.n_heads != mo.d_model, "head_dim = d_model / n_heads"),
            (mo.moe is not None, "no moe"), (mo.sliding_window is not None, "no sliding_window")] if bad]
        if problems:
            raise ConfigError(f"{spec.name}: transformers' GPT-2 (learned positions) needs {', '.join(problems)}")
        return "gpt2"
    used = features(spec)
    family = _pick(spec, used)
    if family == "gpt_neox":
        problems = [text for bad, text in [
            (mo.norm != "layernorm", "norm layernorm"), (mo.gated, "a non-gated MLP"),
            (mo.n_kv_heads != mo.n_heads, "n_kv_heads = n_heads"),
            (mo.head_dim * mo.n_heads != mo.d_model, "head_dim = d_model / n_heads")] if bad]
        if problems:
            raise ConfigError(f"{spec.name}: transformers' GPT-NeoX (RoPE with LayerNorm or a parallel residual) "
                              f"needs {', '.join(problems)}")
    elif mo.norm != "rmsnorm" or not mo.gated:
        raise ConfigError(f"{spec.name}: transformers' RoPE families with RMSNorm ({', '.join(ARCHITECTURES)}) "
                          "need norm rmsnorm and a gated mlp (swiglu, geglu or geglu_tanh)")
    extra, missing = sorted(used - SUPPORTS[family]), sorted(REQUIRES.get(family, set()) - used)
    if extra or missing:
        said = [f"has no {', '.join(extra)}"] if extra else []
        said += [f"needs {', '.join(missing)}"] if missing else []
        raise ConfigError(f"{spec.name}: transformers' {family} (the family with {_reason(family, used)}) "
                          f"{' and '.join(said)}")
    if family == "gemma3_text" and mo.rope_scaling and mo.rope_local_theta is None and "full" in layer_types(mo) and (
            set(layer_types(mo)) != {"full"}):
        raise ConfigError(f"{spec.name}: transformers' Gemma 3 scales the RoPE of its full layers only: set "
                          "rope_local_theta (the sliding layers' base) to say so")
    if family in ("gemma2", "gemma3_text") and abs(mo.embed_scale - mo.d_model ** 0.5) > 1e-9 * mo.d_model ** 0.5:
        raise ConfigError(f"{spec.name}: transformers' Gemma scales embeddings by sqrt(d_model) = "
                          f"{mo.d_model ** 0.5:g}, not embed_scale {mo.embed_scale:g}")
    return family


def _reason(family: str, used: set[str]) -> str:
    marks = sorted((SUPPORTS[family] | REQUIRES.get(family, set())) & used)
    return ", ".join(marks) or "none of the other families' features"


def hf_config(spec: Spec, dtype: str = "float32") -> dict[str, Any]:
    """config.json for the transformers family of this spec; ``dtype`` is that of the saved weights, which
    ``from_pretrained`` keeps."""
    mo = spec.model
    family = hf_family(spec)
    if family == "gpt2":
        return {
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": mo.vocab_size,
            "n_embd": mo.d_model, "n_layer": mo.n_layers, "n_head": mo.n_heads, "n_inner": mo.d_ff,
            "n_positions": mo.max_seq_len, "n_ctx": mo.max_seq_len, "activation_function": _HF_ACTIVATION[mo.mlp],
            "layer_norm_epsilon": mo.norm_eps, "tie_word_embeddings": mo.tie_embeddings,
            "initializer_range": mo.init_std, "resid_pdrop": mo.dropout, "embd_pdrop": mo.dropout,
            "attn_pdrop": 0.0, "torch_dtype": dtype,
        }
    config: dict[str, Any] = {
        "model_type": family, "architectures": [ARCHITECTURES[family]], "vocab_size": mo.vocab_size,
        "hidden_size": mo.d_model, "num_hidden_layers": mo.n_layers, "num_attention_heads": mo.n_heads,
        "intermediate_size": mo.d_ff, "max_position_embeddings": mo.max_seq_len,
        "tie_word_embeddings": mo.tie_embeddings, "initializer_range": mo.init_std, "attention_dropout": 0.0,
        "torch_dtype": dtype, **rope_to_hf(mo, family),
        # not the family's defaults (Gemma's pad 0, SmolLM3's 128004 …): the ids are the tokenizer's, added by export
        "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if family == "gpt_neox":
        return {**config, "hidden_act": _HF_NEOX[mo.mlp], "layer_norm_eps": mo.norm_eps,
                "use_parallel_residual": mo.parallel_residual, "attention_bias": True, "hidden_dropout": mo.dropout}
    config.update(num_key_value_heads=mo.n_kv_heads, head_dim=mo.head_dim, rms_norm_eps=mo.norm_eps)
    config["hidden_activation" if family in ("gemma2", "gemma3_text") else "hidden_act"] = _HF_GATED[mo.mlp]
    config.update(_layers(spec, family))
    if family in ("llama", "smollm3"):
        config.update(attention_bias=mo.bias, mlp_bias=mo.bias)
    if family in ("qwen3", "gemma2", "gemma3_text", "olmo2"):
        config["attention_bias"] = False
    if family == "qwen2":
        config.update(use_sliding_window=False, sliding_window=None)
    if family == "mixtral":
        config.update(num_local_experts=mo.moe.n_experts, num_experts_per_tok=mo.moe.top_k,  # type: ignore[union-attr]
                      router_jitter_noise=0.0, output_router_logits=False)
    if family in ("gemma2", "gemma3_text"):
        config.update(query_pre_attn_scalar=_pre_attn_scalar(mo.query_scale, mo.head_dim),
                      attn_logit_softcapping=mo.attn_softcap, final_logit_softcapping=mo.final_softcap,
                      use_bidirectional_attention=False)
    if family == "phi3":  # (transformers 5's Phi-3 drops no embeddings: a run's dropout is llmspec's own)
        config.update(resid_pdrop=mo.dropout, embd_pdrop=mo.dropout)
    if family == "smollm3":
        nope = nope_indices(mo)
        config["no_rope_layers"] = [int(index not in nope) for index in range(mo.n_layers)]
    return config


def _layers(spec: Spec, family: str) -> dict[str, Any]:
    """The sliding window, and each layer's attention where the family has per-layer kinds."""
    mo = spec.model
    if family in ("mistral", "mixtral", "phi3"):
        return {"sliding_window": mo.sliding_window}
    if family not in ("qwen3", "gemma2", "gemma3_text", "smollm3"):
        return {}
    kinds = [HF_KINDS[kind] for kind in layer_types(mo)]
    out: dict[str, Any] = {"layer_types": kinds, "sliding_window": mo.sliding_window}
    if family in ("qwen3", "smollm3"):
        out.update(use_sliding_window=mo.sliding_window is not None, max_window_layers=mo.n_layers)
    if mo.sliding_window is None and family in ("gemma2", "gemma3_text"):
        out["sliding_window"] = 4096  # unused (no sliding layer); transformers' Gemma needs a number
    return out


def _pre_attn_scalar(query_scale: float | None, head_dim: int) -> float | int:
    """Gemma's query_pre_attn_scalar s for a query scale s^-0.5 (a whole number where it is one)."""
    if query_scale is None:
        return head_dim
    scalar = query_scale ** -2
    return round(scalar) if abs(scalar - round(scalar)) < 1e-6 * scalar else scalar
