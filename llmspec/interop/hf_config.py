"""transformers ``config.json`` ↔ the spec's ``model`` section, for the families llmspec compiles exactly.

Families: GPT-2, Llama (1/2/3, tied or not, llama3/linear RoPE scaling), Mistral (sliding window), Mixtral, Qwen2.
Both the transformers 4 keys (``rope_theta``, ``rope_scaling``) and the 5 keys (``rope_parameters``) are read, as
transformers 5 reads them: a legacy ``rope_scaling`` replaces ``rope_parameters`` whole.
Anything the compiled model would compute differently is refused with the key that makes the difference.
"""

from __future__ import annotations

from typing import Any

from llmspec.errors import LLMSpecError
from llmspec.spec.schema import Spec

FAMILIES = ("gpt2", "llama", "mistral", "mixtral", "qwen2")
_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
_GATED_ACTIVATIONS = {"silu": "swiglu", "gelu": "geglu"}
_HF_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}


class ConfigError(LLMSpecError):
    pass


def family_of(config: dict[str, Any], source: str = "config.json") -> str:
    family = config.get("model_type")
    if family not in FAMILIES:
        raise ConfigError(f"{source}: model_type {family!r} is not supported; supported families: "
                          f"{', '.join(FAMILIES)}")
    return family


def model_from_hf(config: dict[str, Any], source: str = "config.json") -> dict[str, Any]:
    """The spec's ``model`` section (plain data) for a transformers config."""
    family = family_of(config, source)

    def need(key: str) -> Any:
        if config.get(key) is None:
            raise ConfigError(f"{source}: {key} is missing (needed for a {family} config)")
        return config[key]

    if family == "gpt2":
        activation = config.get("activation_function", "gelu_new")
        if activation not in _GPT2_ACTIVATIONS:
            raise ConfigError(f"{source}: activation_function {activation!r} is not supported "
                              f"(one of {', '.join(_GPT2_ACTIVATIONS)})")
        for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if config.get(key):
                raise ConfigError(f"{source}: {key}=true changes attention; llmspec's GPT-2 does not model it")
        if config.get("scale_attn_weights") is False:
            raise ConfigError(f"{source}: scale_attn_weights=false is not supported")
        # llmspec's one dropout rate is GPT-2's residual and embedding dropout (transformers' defaults: 0.1 each);
        # dropout on the attention probabilities (attn_pdrop) is not modelled and is not carried over.
        dropout = config.get("resid_pdrop", 0.1)
        if config.get("embd_pdrop", 0.1) != dropout:
            raise ConfigError(f"{source}: embd_pdrop {config.get('embd_pdrop', 0.1)} differs from resid_pdrop "
                              f"{dropout}; llmspec has one dropout rate for both")
        return {
            "vocab_size": need("vocab_size"), "d_model": need("n_embd"), "n_layers": need("n_layer"),
            "n_heads": need("n_head"), "d_ff": config.get("n_inner") or 4 * config["n_embd"],
            "mlp": _GPT2_ACTIVATIONS[activation], "norm": "layernorm",
            "norm_eps": config.get("layer_norm_epsilon", 1e-5), "position": "learned",
            "max_seq_len": need("n_positions"), "tie_embeddings": config.get("tie_word_embeddings", True),
            "bias": True, "init_std": config.get("initializer_range", 0.02), "dropout": dropout,
        }

    activation = config.get("hidden_act", "silu")
    if activation not in _GATED_ACTIVATIONS:
        raise ConfigError(f"{source}: hidden_act {activation!r} is not supported (silu or gelu)")
    model: dict[str, Any] = {
        "vocab_size": need("vocab_size"), "d_model": need("hidden_size"), "n_layers": need("num_hidden_layers"),
        "n_heads": need("num_attention_heads"),
        "n_kv_heads": config.get("num_key_value_heads") or config["num_attention_heads"],
        "d_ff": need("intermediate_size"), "mlp": _GATED_ACTIVATIONS[activation], "norm": "rmsnorm",
        "norm_eps": config.get("rms_norm_eps", 1e-6), "position": "rope",
        "max_seq_len": need("max_position_embeddings"), "tie_embeddings": config.get("tie_word_embeddings", False),
        "init_std": config.get("initializer_range", 0.02),
    }
    if config.get("head_dim"):
        model["head_dim"] = config["head_dim"]
    model.update(_rope_from_hf(config, source))
    if family == "llama":
        attention_bias, mlp_bias = bool(config.get("attention_bias")), bool(config.get("mlp_bias"))
        if attention_bias != mlp_bias:
            raise ConfigError(f"{source}: attention_bias={attention_bias} with mlp_bias={mlp_bias} is not "
                              "supported (llmspec has biases everywhere, on q/k/v only, or nowhere)")
        model["bias"] = attention_bias
    if family == "qwen2":
        if config.get("use_sliding_window"):
            raise ConfigError(f"{source}: use_sliding_window=true (Qwen2's per-layer windows) is not supported")
        model["qkv_bias"] = True
    if family in ("mistral", "mixtral") and config.get("sliding_window"):
        model["sliding_window"] = config["sliding_window"]
    if family == "mixtral":
        model["moe"] = {"n_experts": need("num_local_experts"), "top_k": need("num_experts_per_tok")}
    return model


def _rope_key(config: dict[str, Any]) -> str:
    """The key transformers 5 reads the RoPE parameters from (``convert_rope_params_to_dict``): a legacy
    ``rope_scaling``, when set, replaces ``rope_parameters`` whole."""
    return "rope_scaling" if config.get("rope_scaling") else "rope_parameters"


def _rope_from_hf(config: dict[str, Any], source: str) -> dict[str, Any]:
    where = _rope_key(config)
    params = config.get(where) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{source}: {where} must be an object, got {params!r}")
    # transformers: the dict's own rope_theta, else the top-level key, else 10000 (rope_parameters' rope_theta is
    # not read when rope_scaling replaces it)
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) not in (1.0, None):
        raise ConfigError(f"{source}: partial_rotary_factor is not supported")
    out: dict[str, Any] = {"rope_theta": theta}
    if kind == "default":
        return out

    def need(key: str) -> Any:
        if params.get(key) is None:
            raise ConfigError(f"{source}: {where}.{key} is missing (needed for rope type {kind!r})")
        return params[key]

    if kind == "linear":
        out["rope_scaling"] = {"type": "linear", "factor": need("factor")}
    elif kind == "llama3":
        out["rope_scaling"] = {
            "type": "llama3", "factor": need("factor"), "low_freq_factor": need("low_freq_factor"),
            "high_freq_factor": need("high_freq_factor"),  # transformers' default: the model's context
            "original_max_seq_len": params.get("original_max_position_embeddings",
                                               config.get("max_position_embeddings"))}
    else:
        over = " (transformers reads it over rope_parameters)" if where == "rope_scaling" and config.get(
            "rope_parameters") else ""
        raise ConfigError(f"{source}: {where}: rope type {kind!r}{over} is not supported (default, linear or "
                          "llama3)")
    return out


# spec field → the transformers key it is read from, per family (rope fields: ``config_key``)
_GPT2_KEYS = {"vocab_size": "vocab_size", "d_model": "n_embd", "n_layers": "n_layer", "n_heads": "n_head",
              "d_ff": "n_inner", "max_seq_len": "n_positions", "norm_eps": "layer_norm_epsilon",
              "tie_embeddings": "tie_word_embeddings", "init_std": "initializer_range", "dropout": "resid_pdrop"}
_KEYS = {"vocab_size": "vocab_size", "d_model": "hidden_size", "n_layers": "num_hidden_layers",
         "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
         "d_ff": "intermediate_size", "max_seq_len": "max_position_embeddings", "norm_eps": "rms_norm_eps",
         "tie_embeddings": "tie_word_embeddings", "init_std": "initializer_range", "sliding_window": "sliding_window",
         "moe.n_experts": "num_local_experts", "moe.top_k": "num_experts_per_tok", "bias": "attention_bias"}
_ROPE_KEYS = {"type": "rope_type", "factor": "factor", "low_freq_factor": "low_freq_factor",
              "high_freq_factor": "high_freq_factor", "original_max_seq_len": "original_max_position_embeddings"}


def config_key(field: str, config: dict[str, Any]) -> str | None:
    """The config.json key a spec field of an imported config was read from (``model.d_model`` → hidden_size), so
    that a problem is named as the user wrote it; None for a field no key gives."""
    field = {"training.seq_len": "model.max_seq_len"}.get(field, field)  # the placeholder seq_len is the context's
    if not field.startswith("model."):
        return None
    field = field.removeprefix("model.")
    if field == "rope_theta":
        where = _rope_key(config)
        return f"{where}.rope_theta" if "rope_theta" in (config.get(where) or {}) else "rope_theta"
    if field.startswith("rope_scaling"):
        leaf = field.removeprefix("rope_scaling").lstrip(".")
        return f"{_rope_key(config)}.{_ROPE_KEYS[leaf]}" if leaf in _ROPE_KEYS else _rope_key(config)
    return (_GPT2_KEYS if config.get("model_type") == "gpt2" else _KEYS).get(field)


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
    problems = [text for bad, text in [
        (mo.norm != "rmsnorm", "norm rmsnorm"), (not mo.gated, "mlp swiglu or geglu")] if bad]
    if problems:
        raise ConfigError(f"{spec.name}: transformers' RoPE families (Llama, Mistral, Mixtral, Qwen2) need "
                          f"{', '.join(problems)}")
    if mo.moe:
        if mo.bias or mo.qkv_bias:
            raise ConfigError(f"{spec.name}: transformers' Mixtral has no biases")
        return "mixtral"
    if mo.sliding_window:
        if mo.bias or mo.qkv_bias:
            raise ConfigError(f"{spec.name}: transformers' Mistral (sliding window) has no biases")
        return "mistral"
    if mo.qkv_bias and not mo.bias:
        return "qwen2"
    return "llama"


def hf_config(spec: Spec, dtype: str = "float32") -> dict[str, Any]:
    """config.json for the transformers family of this spec (transformers 4 keys, which 5 reads too);
    ``dtype`` is that of the saved weights, which ``from_pretrained`` keeps."""
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
    architecture = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "mixtral": "MixtralForCausalLM",
                    "qwen2": "Qwen2ForCausalLM"}[family]
    config: dict[str, Any] = {
        "model_type": family, "architectures": [architecture], "vocab_size": mo.vocab_size,
        "hidden_size": mo.d_model, "num_hidden_layers": mo.n_layers, "num_attention_heads": mo.n_heads,
        "num_key_value_heads": mo.n_kv_heads, "head_dim": mo.head_dim, "intermediate_size": mo.d_ff,
        "hidden_act": "silu" if mo.mlp == "swiglu" else "gelu", "rms_norm_eps": mo.norm_eps,
        "max_position_embeddings": mo.max_seq_len, "tie_word_embeddings": mo.tie_embeddings,
        "initializer_range": mo.init_std, "rope_theta": mo.rope_theta, "attention_dropout": 0.0, "torch_dtype": dtype,
    }
    if mo.rope_scaling:
        rs = mo.rope_scaling
        config["rope_scaling"] = ({"rope_type": "linear", "factor": rs.factor} if rs.type == "linear" else {
            "rope_type": "llama3", "factor": rs.factor, "low_freq_factor": rs.low_freq_factor,
            "high_freq_factor": rs.high_freq_factor, "original_max_position_embeddings": rs.original_max_seq_len})
    if family == "llama":
        config.update(attention_bias=mo.bias, mlp_bias=mo.bias)
    if family in ("mistral", "mixtral"):
        config["sliding_window"] = mo.sliding_window
    if family == "qwen2":
        config.update(use_sliding_window=False, sliding_window=None)
    if family == "mixtral":
        config.update(num_local_experts=mo.moe.n_experts, num_experts_per_tok=mo.moe.top_k,  # type: ignore[union-attr]
                      router_jitter_noise=0.0, output_router_logits=False)
    return config
