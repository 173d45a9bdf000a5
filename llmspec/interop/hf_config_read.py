"""transformers ``config.json`` → the spec's ``model`` section, for the families llmspec compiles exactly.

Families: GPT-2, Llama (1/2/3), Mistral, Mixtral, Qwen2, Qwen3, Gemma 2, Gemma 3 (text), OLMo 2, Phi-3/Phi-4, SmolLM3
and GPT-NeoX (Pythia). Both the transformers 4 keys (``rope_theta``, ``rope_scaling``) and the 5 keys
(``rope_parameters``) are read, as transformers 5 reads them (``hf_rope``); a key the config leaves out takes the
family's default (transformers' config class). Every key that changes what the model computes becomes a spec field,
or is refused with its name: nothing is dropped silently. The way back is ``hf_config``.
"""

from __future__ import annotations

import json
from typing import Any

from llmspec.interop.hf_layers import layers_from_hf, nope_from_hf
from llmspec.interop.hf_rope import ROPE_KEYS, ConfigError, rope_from_hf, rope_key

__all__ = ["ConfigError", "FAMILIES", "family_of", "model_from_hf", "config_key", "language_model_config"]

FAMILIES = ("gpt2", "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma2", "gemma3_text", "olmo2", "phi3",
            "smollm3", "gpt_neox")
GEMMA = ("gemma2", "gemma3_text")
_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
GATED_ACTIVATIONS = {"silu": "swiglu", "gelu": "geglu", "gelu_pytorch_tanh": "geglu_tanh"}
NEOX_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
# A key a config leaves out takes the default of the family's transformers config class (a test compares): released
# configs rely on it (Gemma 3's text_config names little more than its sizes).
_SHAPES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "max_position_embeddings")
DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen3": {**dict(zip(_SHAPES, (151936, 4096, 22016, 32, 32, 32, 32768), strict=True)), "head_dim": 128,
              "tie_word_embeddings": False, "rms_norm_eps": 1e-6, "max_window_layers": 28, "sliding_window": 4096},
    "gemma2": {**dict(zip(_SHAPES, (256000, 2304, 9216, 26, 8, 4, 8192), strict=True)), "head_dim": 256,
               "tie_word_embeddings": True, "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 256,
               "sliding_window": 4096, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
               "hidden_activation": "gelu_pytorch_tanh"},
    "gemma3_text": {**dict(zip(_SHAPES, (262208, 2304, 9216, 26, 8, 4, 131072), strict=True)), "head_dim": 256,
                    "tie_word_embeddings": True, "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 256,
                    "sliding_window": 4096, "final_logit_softcapping": None, "attn_logit_softcapping": None,
                    "hidden_activation": "gelu_pytorch_tanh"},
    "olmo2": {**dict(zip(_SHAPES, (50304, 4096, 11008, 32, 32, None, 2048), strict=True)),
              "tie_word_embeddings": False, "rms_norm_eps": 1e-5},
    "phi3": {**dict(zip(_SHAPES, (32064, 3072, 8192, 32, 32, None, 4096), strict=True)),
             "original_max_position_embeddings": 4096, "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
             "sliding_window": None},
    "smollm3": {**dict(zip(_SHAPES, (128256, 2048, 11008, 36, 16, 4, 32768), strict=True)),
                "tie_word_embeddings": True, "rms_norm_eps": 1e-6, "sliding_window": None},
    "gpt_neox": {**dict(zip(_SHAPES[:5] + _SHAPES[6:], (50432, 6144, 24576, 44, 64, 2048), strict=True)),
                 "tie_word_embeddings": False, "layer_norm_eps": 1e-5, "use_parallel_residual": True,
                 "attention_bias": True, "hidden_act": "gelu"},
}


# multimodal families whose language model is one of the families above: its config is their text_config, but for
# the tying of its head, which the multimodal config decides (transformers' default: tied)
LANGUAGE_MODELS = {"gemma3": "gemma3_text"}


def language_model_config(config: dict[str, Any], source: str = "config.json") -> dict[str, Any]:
    """The config of the language model of a multimodal checkpoint (Gemma 3 4B and up: its text_config, with the
    family's model_type); any other config as it is."""
    family = config.get("model_type")
    if family not in LANGUAGE_MODELS:
        return config
    text = config.get("text_config")
    if not isinstance(text, dict):
        raise ConfigError(f"{source}: a {family} config needs a text_config object (its language model)")
    if text.get("final_logit_softcapping") is not None:  # Gemma3ForCausalLM caps, the multimodal class does not
        raise ConfigError(f"{source}: text_config.final_logit_softcapping={text['final_logit_softcapping']}: "
                          f"transformers' {family} model does not cap its logits, its text model does; set it to null")
    tied = config.get("tie_word_embeddings", True)
    return {**text, "model_type": LANGUAGE_MODELS[family], "tie_word_embeddings": tied}


def family_of(config: dict[str, Any], source: str = "config.json") -> str:
    family = config.get("model_type")
    if family not in FAMILIES:
        raise ConfigError(f"{source}: model_type {family!r} is not supported; supported families: "
                          f"{', '.join(FAMILIES)}")
    return family


class _Config:
    """A config.json read with its family's defaults; a missing key that has none is one line naming it."""

    def __init__(self, config: dict[str, Any], family: str, source: str):
        # a key written as null is null, as transformers reads it (Gemma 2's final_logit_softcapping: null: no cap)
        self.config, self.family, self.source = {**DEFAULTS.get(family, {}), **config}, family, source

    def get(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)

    def need(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise ConfigError(f"{self.source}: {key} is missing (needed for a {self.family} config)")
        return value

    def refuse(self, key: str, why: str) -> None:
        raise ConfigError(f"{self.source}: {key}={json.dumps(self.get(key))} {why}")


def model_from_hf(config: dict[str, Any], source: str = "config.json") -> dict[str, Any]:
    """The spec's ``model`` section (plain data) for a transformers config."""
    family = family_of(config, source)
    c = _Config(config, family, source)
    config = c.config  # with the family's defaults
    if family == "gpt2":
        return _gpt2(c)
    if family == "gpt_neox":
        return _neox(c)
    model = _decoder(c)
    if family == "llama":
        model["bias"] = _both_biases(c)
    elif family == "qwen2":
        if config.get("use_sliding_window"):
            c.refuse("use_sliding_window", "(Qwen2's per-layer windows) is not supported")
        model["qkv_bias"] = True
    elif family in ("mistral", "mixtral", "phi3") and config.get("sliding_window"):
        model["sliding_window"] = config["sliding_window"]
    if family == "mixtral":
        model["moe"] = {"n_experts": c.need("num_local_experts"), "top_k": c.need("num_experts_per_tok")}
    if family in ("qwen3", "gemma2", "gemma3_text", "olmo2"):
        _no_attention_bias(c)
    if family in ("qwen3", "gemma3_text"):
        model["qk_norm"] = "head"
    if family == "qwen3":
        window = c.get("sliding_window") if config.get("use_sliding_window") else None
        model.update(layers_from_hf(config, family, model["n_layers"], window, source))
    if family in GEMMA:
        model.update(_gemma(c, model))
    if family == "olmo2":
        model.update(qk_norm="full", norm_placement="post")
    if family == "phi3" and c.get("resid_pdrop", 0.0):  # (embd_pdrop: transformers 5's Phi-3 reads none)
        c.refuse("resid_pdrop", "(dropout on the sub-blocks' outputs but not the embeddings) is not modelled: "
                                "llmspec's dropout does both; set it to 0")
    if family == "smollm3":
        model["bias"] = _both_biases(c)
        window = c.get("sliding_window") if config.get("use_sliding_window") else None
        model.update(layers_from_hf(config, family, model["n_layers"], window, source))
        nope = nope_from_hf(config, model["n_layers"], source)
        if nope is not None:
            model["nope_layers"] = nope
    return model


def _gpt2(c: _Config) -> dict[str, Any]:
    config = c.config
    activation = config.get("activation_function", "gelu_new")
    if activation not in _GPT2_ACTIVATIONS:
        raise ConfigError(f"{c.source}: activation_function {activation!r} is not supported "
                          f"(one of {', '.join(_GPT2_ACTIVATIONS)})")
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if config.get(key):
            raise ConfigError(f"{c.source}: {key}=true changes attention; llmspec's GPT-2 does not model it")
    if config.get("scale_attn_weights") is False:
        raise ConfigError(f"{c.source}: scale_attn_weights=false is not supported")
    # llmspec's one dropout rate is GPT-2's residual and embedding dropout (transformers' defaults: 0.1 each);
    # dropout on the attention probabilities (attn_pdrop) is not modelled and is not carried over.
    dropout = config.get("resid_pdrop", 0.1)
    if config.get("embd_pdrop", 0.1) != dropout:
        raise ConfigError(f"{c.source}: embd_pdrop {config.get('embd_pdrop', 0.1)} differs from resid_pdrop "
                          f"{dropout}; llmspec has one dropout rate for both")
    return {
        "vocab_size": c.need("vocab_size"), "d_model": c.need("n_embd"), "n_layers": c.need("n_layer"),
        "n_heads": c.need("n_head"), "d_ff": config.get("n_inner") or 4 * config["n_embd"],
        "mlp": _GPT2_ACTIVATIONS[activation], "norm": "layernorm",
        "norm_eps": config.get("layer_norm_epsilon", 1e-5), "position": "learned",
        "max_seq_len": c.need("n_positions"), "tie_embeddings": config.get("tie_word_embeddings", True),
        "bias": True, "init_std": config.get("initializer_range", 0.02), "dropout": dropout,
    }


def _decoder(c: _Config) -> dict[str, Any]:
    """What the Llama-like families share: RMSNorm, a gated MLP, RoPE."""
    key = "hidden_activation" if c.family in GEMMA else "hidden_act"
    activation = c.get(key, "silu")
    if activation not in GATED_ACTIVATIONS:
        raise ConfigError(f"{c.source}: {key} {activation!r} is not supported ({', '.join(GATED_ACTIVATIONS)})")
    if c.get("attention_dropout", 0.0):
        c.refuse("attention_dropout", "(dropout on the attention probabilities) is not modelled; set it to 0")
    model: dict[str, Any] = {
        "vocab_size": c.need("vocab_size"), "d_model": c.need("hidden_size"), "n_layers": c.need("num_hidden_layers"),
        "n_heads": c.need("num_attention_heads"),
        "n_kv_heads": c.get("num_key_value_heads") or c.need("num_attention_heads"),
        "d_ff": c.need("intermediate_size"), "mlp": GATED_ACTIVATIONS[activation], "norm": "rmsnorm",
        "norm_eps": c.get("rms_norm_eps", 1e-6), "position": "rope", "max_seq_len": c.need("max_position_embeddings"),
        "tie_embeddings": c.get("tie_word_embeddings", False), "init_std": c.get("initializer_range", 0.02),
    }
    if c.get("head_dim"):
        model["head_dim"] = c.get("head_dim")
    model.update(rope_from_hf(c.config, c.family, c.source))
    return model


def _both_biases(c: _Config) -> bool:
    attention_bias, mlp_bias = bool(c.get("attention_bias")), bool(c.get("mlp_bias"))
    if attention_bias != mlp_bias:
        raise ConfigError(f"{c.source}: attention_bias={attention_bias} with mlp_bias={mlp_bias} is not "
                          "supported (llmspec has biases everywhere, on q/k/v only, or nowhere)")
    return attention_bias


def _no_attention_bias(c: _Config) -> None:
    if c.get("attention_bias"):
        c.refuse("attention_bias", f"(biases on q, k, v and o, none in the MLP) is not supported for {c.family}")


def _gemma(c: _Config, model: dict[str, Any]) -> dict[str, Any]:
    """Gemma 2 and 3: sandwich norms, √d-scaled embeddings, query_pre_attn_scalar, soft-capping, local layers."""
    if c.get("use_bidirectional_attention"):
        c.refuse("use_bidirectional_attention", "(attention to later tokens) is not supported")
    out: dict[str, Any] = {"norm_placement": "sandwich", "embed_scale": model["d_model"] ** 0.5,
                           "query_scale": c.get("query_pre_attn_scalar") ** -0.5}
    if c.family == "gemma3_text" and c.get("attn_logit_softcapping") is not None:
        c.refuse("attn_logit_softcapping", "is not applied by transformers' Gemma 3 (its attention never caps): "
                                           "say which model is meant by setting it to null")
    for key, field in (("attn_logit_softcapping", "attn_softcap"), ("final_logit_softcapping", "final_softcap")):
        if c.get(key) is not None:
            out[field] = c.get(key)
    layers = layers_from_hf(c.config, c.family, model["n_layers"], c.get("sliding_window"), c.source)
    out.update(layers)
    if "rope_local_theta" in model and "layer_types" not in layers:
        # one kind of layer: one RoPE, the local one (unscaled) where every layer is sliding
        local = model.pop("rope_local_theta")
        if layers:
            model["rope_theta"] = local
            model.pop("rope_scaling", None)
    return out


def _neox(c: _Config) -> dict[str, Any]:
    """GPT-NeoX (Pythia): LayerNorm with biases everywhere, a GELU MLP, partial RoPE, a parallel residual."""
    activation = c.get("hidden_act")
    if activation not in NEOX_ACTIVATIONS:
        raise ConfigError(f"{c.source}: hidden_act {activation!r} is not supported ({', '.join(NEOX_ACTIVATIONS)})")
    if not c.get("attention_bias"):
        c.refuse("attention_bias", "(no attention biases, yet biases in the MLP and norms) is not supported")
    if c.get("attention_dropout", 0.0):
        c.refuse("attention_dropout", "(dropout on the attention probabilities) is not modelled; set it to 0")
    model: dict[str, Any] = {
        "vocab_size": c.need("vocab_size"), "d_model": c.need("hidden_size"), "n_layers": c.need("num_hidden_layers"),
        "n_heads": c.need("num_attention_heads"), "d_ff": c.need("intermediate_size"),
        "mlp": NEOX_ACTIVATIONS[activation], "norm": "layernorm", "norm_eps": c.get("layer_norm_eps"),
        "position": "rope", "max_seq_len": c.need("max_position_embeddings"), "bias": True,
        "parallel_residual": bool(c.get("use_parallel_residual")),
        "tie_embeddings": c.get("tie_word_embeddings"), "init_std": c.get("initializer_range", 0.02),
    }
    model.update(rope_from_hf(c.config, c.family, c.source))
    if c.get("hidden_dropout", 0.0):
        model["dropout"] = c.get("hidden_dropout")
    return model


# spec field → the transformers key it is read from (rope fields: ``config_key``), per family where it differs
_GPT2_KEYS = {"vocab_size": "vocab_size", "d_model": "n_embd", "n_layers": "n_layer", "n_heads": "n_head",
              "d_ff": "n_inner", "max_seq_len": "n_positions", "norm_eps": "layer_norm_epsilon",
              "tie_embeddings": "tie_word_embeddings", "init_std": "initializer_range", "dropout": "resid_pdrop"}
_KEYS = {"vocab_size": "vocab_size", "d_model": "hidden_size", "n_layers": "num_hidden_layers",
         "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
         "d_ff": "intermediate_size", "max_seq_len": "max_position_embeddings", "norm_eps": "rms_norm_eps",
         "tie_embeddings": "tie_word_embeddings", "init_std": "initializer_range", "sliding_window": "sliding_window",
         "moe.n_experts": "num_local_experts", "moe.top_k": "num_experts_per_tok", "bias": "attention_bias",
         "layer_types": "layer_types", "attn_softcap": "attn_logit_softcapping",
         "final_softcap": "final_logit_softcapping", "query_scale": "query_pre_attn_scalar",
         "nope_layers": "no_rope_layers", "dropout": "resid_pdrop", "rope_local_theta": "rope_local_base_freq",
         "partial_rotary": "partial_rotary_factor"}
_NEOX_KEYS = {**_KEYS, "norm_eps": "layer_norm_eps", "dropout": "hidden_dropout", "partial_rotary": "rotary_pct",
              "parallel_residual": "use_parallel_residual"}


def config_key(field: str, config: dict[str, Any]) -> str | None:
    """The config.json key a spec field of an imported config was read from (``model.d_model`` → hidden_size), so
    that a problem is named as the user wrote it; None for a field no key gives."""
    field = {"training.seq_len": "model.max_seq_len"}.get(field, field)  # the placeholder seq_len is the context's
    if not field.startswith("model."):
        return None
    field = field.removeprefix("model.")
    family = config.get("model_type")
    if field == "rope_theta":
        where = rope_key(config)
        legacy = "rotary_emb_base" if family == "gpt_neox" else "rope_theta"
        return f"{where}.rope_theta" if "rope_theta" in (config.get(where) or {}) else legacy
    if field.startswith("rope_scaling"):
        leaf = field.removeprefix("rope_scaling").lstrip(".")
        return f"{rope_key(config)}.{ROPE_KEYS[leaf]}" if leaf in ROPE_KEYS else rope_key(config)
    keys = {"gpt2": _GPT2_KEYS, "gpt_neox": _NEOX_KEYS}.get(family, _KEYS)
    return keys.get(field)
