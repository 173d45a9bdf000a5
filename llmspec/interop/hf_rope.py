"""RoPE between a transformers ``config.json`` and the spec: the base, the frequency scaling (linear, llama3, yarn,
longrope), the rotated fraction of each head and Gemma 3's second base for its local layers.

transformers 5 reads the RoPE parameters from ``rope_parameters`` or, when set, a legacy ``rope_scaling`` that replaces
it whole (Gemma 3: that merges into its full-attention layers' parameters); a key missing there falls back to the
legacy top-level key (``rope_theta``, GPT-NeoX's ``rotary_emb_base`` and ``rotary_pct``, Gemma 3's
``rope_local_base_freq``), then to the family's default. Export writes the legacy keys, which transformers 4 and 5
both read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from llmspec.errors import LLMSpecError


class ConfigError(LLMSpecError):
    pass


# the families whose attention rotates a fraction of each head (transformers' partial_rotary_factor)
PARTIAL_ROTARY = ("phi3", "gpt_neox")
# each family's RoPE base when the config names none (transformers' default_theta)
DEFAULT_THETA = {"smollm3": 2_000_000.0, "gemma3_text": 1_000_000.0}
_LOCAL_THETA = 10_000.0  # Gemma 3's default rope_local_base_freq
_TYPES = ("default", "linear", "llama3", "yarn", "longrope")


def rope_key(config: dict[str, Any]) -> str:
    """The key transformers 5 reads the RoPE parameters from (``convert_rope_params_to_dict``): a legacy
    ``rope_scaling``, when set, replaces ``rope_parameters`` whole."""
    return "rope_scaling" if config.get("rope_scaling") else "rope_parameters"


def rope_from_hf(config: dict[str, Any], family: str, source: str) -> dict[str, Any]:
    """The spec's RoPE fields (rope_theta, rope_scaling, partial_rotary, rope_local_theta) of a config."""
    if family == "gemma3_text":
        return _gemma3_rope(config, source)
    where = rope_key(config)
    params = _object(config.get(where) or {}, where, source)
    theta = params.get("rope_theta", config.get("rotary_emb_base" if family == "gpt_neox" else "rope_theta"))
    out: dict[str, Any] = {"rope_theta": theta if theta is not None else DEFAULT_THETA.get(family, 10_000.0)}
    legacy = "rotary_pct" if family == "gpt_neox" else "partial_rotary_factor"
    fraction = params.get("partial_rotary_factor", config.get(legacy, 0.25 if family == "gpt_neox" else 1.0))
    if fraction not in (None, 1, 1.0):
        if family not in PARTIAL_ROTARY:
            raise ConfigError(f"{source}: partial_rotary_factor {fraction}: transformers' {family} rotates every "
                              "dim of a head (only Phi-3 and GPT-NeoX read it)")
        out["partial_rotary"] = fraction
    kind = params.get("rope_type", params.get("type", "default"))
    if family == "phi3" and kind in ("su", "yarn"):
        kind = "longrope"  # transformers' Phi-3 reads its older names (su, yarn) as longrope
    if family == "phi3" and config.get("original_max_position_embeddings") is not None:
        params = {**params, "original_max_position_embeddings": config["original_max_position_embeddings"]}
    scaling = _scaling(params, kind, config, fraction or 1.0, f"{source}: {where}", where)
    if scaling is not None:
        out["rope_scaling"] = scaling
    return out


def _object(value: Any, where: str, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {where} must be an object, got {value!r}")
    return value


def _scaling(params: dict[str, Any], kind: str, config: dict[str, Any], fraction: float, where: str,
             key: str) -> dict[str, Any] | None:
    """The spec's rope_scaling for one set of transformers RoPE parameters (None: unscaled)."""
    if kind == "default":
        return None
    if kind not in _TYPES:
        over = " (transformers reads it over rope_parameters)" if key == "rope_scaling" and config.get(
            "rope_parameters") else ""
        raise ConfigError(f"{where}: rope type {kind!r}{over} is not supported ({', '.join(_TYPES)})")

    def need(name: str) -> Any:
        if params.get(name) is None:
            raise ConfigError(f"{where}.{name} is missing (needed for rope type {kind!r})")
        return params[name]

    # transformers: the pretraining context defaults to the model's
    original = params.get("original_max_position_embeddings", config.get("max_position_embeddings"))
    if kind == "linear":
        return {"type": "linear", "factor": need("factor")}
    if kind == "llama3":
        return {"type": "llama3", "factor": need("factor"), "low_freq_factor": need("low_freq_factor"),
                "high_freq_factor": need("high_freq_factor"), "original_max_seq_len": original}
    factor = params.get("factor") or config["max_position_embeddings"] / original  # transformers derives it so
    if kind == "yarn":
        attention = params.get("attention_factor")
        mscale, mscale_all = params.get("mscale"), params.get("mscale_all_dim")
        if attention is None:  # transformers' yarn_get_mscale, over the (optional) DeepSeek pair
            attention = _mscale(factor, mscale) / _mscale(factor, mscale_all) if mscale and mscale_all else (
                _mscale(factor))
        return {"type": "yarn", "factor": factor, "original_max_seq_len": original,
                "beta_fast": params.get("beta_fast") or 32.0, "beta_slow": params.get("beta_slow") or 1.0,
                "truncate": bool(params.get("truncate", True)), "attention_factor": attention}
    attention = params.get("attention_factor")
    if attention is None:  # the LongRoPE paper's, as transformers sets it
        attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    return {"type": "longrope", "factor": factor, "original_max_seq_len": original, "attention_factor": attention,
            "short_factor": need("short_factor"), "long_factor": need("long_factor")}


def _mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _gemma3_rope(config: dict[str, Any], source: str) -> dict[str, Any]:
    """Gemma 3's two RoPEs: ``rope_parameters`` per layer type (a legacy ``rope_scaling`` merged into the full
    layers'), the local base from ``rope_local_base_freq`` where the sliding layers' parameters name none."""
    params = _object(config.get("rope_parameters") or {}, "rope_parameters", source)
    if params and not {"full_attention", "sliding_attention"} & set(params):
        params = {"full_attention": params}  # one flat set: the full layers' (as a legacy rope_scaling is)
    full = dict(_object(params.get("full_attention") or {}, "rope_parameters.full_attention", source))
    full.update(_object(config.get("rope_scaling") or {}, "rope_scaling", source))
    local = _object(params.get("sliding_attention") or {}, "rope_parameters.sliding_attention", source)
    local_kind = local.get("rope_type", local.get("type", "default"))
    if local_kind != "default":
        raise ConfigError(f"{source}: rope_parameters.sliding_attention: rope type {local_kind!r}: llmspec's local "
                          "layers rotate unscaled (default)")
    out: dict[str, Any] = {
        "rope_theta": full.get("rope_theta", config.get("rope_theta", DEFAULT_THETA["gemma3_text"])),
        "rope_local_theta": local.get("rope_theta", config.get("rope_local_base_freq", _LOCAL_THETA))}
    if full.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) not in (None, 1, 1.0):
        raise ConfigError(f"{source}: partial_rotary_factor: transformers' gemma3_text rotates every dim of a head")
    kind = full.get("rope_type", full.get("type", "default"))
    scaling = _scaling(full, kind, config, 1.0, f"{source}: rope_parameters.full_attention", "rope_parameters")
    if scaling is not None:
        out["rope_scaling"] = scaling
    return out


def rope_to_hf(model: Any, family: str) -> dict[str, Any]:
    """The legacy RoPE keys of a config for the spec's ``model`` section (transformers 4 and 5 read them)."""
    config: dict[str, Any] = {"rotary_emb_base" if family == "gpt_neox" else "rope_theta": model.rope_theta}
    if family == "gpt_neox":
        config["rotary_pct"] = model.partial_rotary
    elif model.partial_rotary != 1:
        config["partial_rotary_factor"] = model.partial_rotary
    if family == "gemma3_text":  # its sliding layers' base (the only one, where every layer slides)
        config["rope_local_base_freq"] = model.rope_local_theta or model.rope_theta
    scaling = model.rope_scaling
    if scaling is None:
        return config
    keys: dict[str, Callable[[Any], Any]] = {"factor": lambda s: s.factor}
    if scaling.type == "llama3":
        keys.update(low_freq_factor=lambda s: s.low_freq_factor, high_freq_factor=lambda s: s.high_freq_factor,
                    original_max_position_embeddings=lambda s: s.original_max_seq_len)
    if scaling.type in ("yarn", "longrope"):
        keys.update(original_max_position_embeddings=lambda s: s.original_max_seq_len)
    if scaling.type == "yarn":
        keys.update(beta_fast=lambda s: s.beta_fast, beta_slow=lambda s: s.beta_slow, truncate=lambda s: s.truncate)
    if scaling.type == "longrope":
        keys.update(short_factor=lambda s: s.short_factor, long_factor=lambda s: s.long_factor)
    out = {"rope_type": scaling.type, **{key: read(scaling) for key, read in keys.items()}}
    if scaling.type in ("yarn", "longrope") and scaling.attention_factor is not None:
        out["attention_factor"] = scaling.attention_factor
    config["rope_scaling"] = out
    if family == "phi3" and scaling.type == "longrope":
        # transformers' Phi-3 reads the pretraining context from the top-level key, over the scaling's own
        config["original_max_position_embeddings"] = scaling.original_max_seq_len
    return config


# spec field under rope_scaling → transformers' key
ROPE_KEYS = {"type": "rope_type", "factor": "factor", "low_freq_factor": "low_freq_factor",
             "high_freq_factor": "high_freq_factor", "original_max_seq_len": "original_max_position_embeddings",
             "beta_fast": "beta_fast", "beta_slow": "beta_slow", "truncate": "truncate",
             "attention_factor": "attention_factor", "short_factor": "short_factor", "long_factor": "long_factor"}
