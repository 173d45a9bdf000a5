"""Per-layer attention between a transformers config and the spec: ``layer_types`` (as the family derives it when the
config names none), the sliding window, and SmolLM3's layers without RoPE.

The spec writes a list of layer kinds as its shortest repeating pattern (Gemma 3's five sliding layers and one full),
leaves it out where every layer is alike (all sliding: Mistral's ``sliding_window`` alone), and an interval where
the NoPE layers are every n-th.
"""

from __future__ import annotations

from typing import Any

from llmspec.interop.hf_rope import ConfigError

_KINDS = {"full_attention": "full", "sliding_attention": "sliding", "chunked_attention": "chunked"}
HF_KINDS = {kind: name for name, kind in _KINDS.items()}


def hf_layer_types(config: dict[str, Any], family: str, n_layers: int) -> list[str]:
    """transformers' layer_types of a config: the config's own, or what the family's config class derives."""
    if config.get("layer_types") is not None:
        return list(config["layer_types"])
    if family == "qwen3":
        windowed = config.get("use_sliding_window", False) and config.get("sliding_window", 4096) is not None
        first = config.get("max_window_layers", 28)
        return ["sliding_attention" if windowed and index >= first else "full_attention" for index in range(n_layers)]
    if family == "gemma2":
        return ["sliding_attention" if (index + 1) % 2 else "full_attention" for index in range(n_layers)]
    if family == "gemma3_text":
        every = config.get("sliding_window_pattern", 6)
        return ["sliding_attention" if (index + 1) % every else "full_attention" for index in range(n_layers)]
    if family == "smollm3":
        windowed = config.get("use_sliding_window", False) and config.get("sliding_window") is not None
        rope = smollm3_rope_layers(config, n_layers)
        return ["sliding_attention" if windowed and not rope[index] else "full_attention" for index in range(n_layers)]
    raise AssertionError(family)


def smollm3_rope_layers(config: dict[str, Any], n_layers: int) -> list[int]:
    """SmolLM3's no_rope_layers: 1 where a layer rotates (despite the name), 0 where it does not."""
    if config.get("no_rope_layers") is not None:
        return list(config["no_rope_layers"])
    every = config.get("no_rope_layer_interval", 4)
    return [int((index + 1) % every != 0) for index in range(n_layers)]


def layers_from_hf(config: dict[str, Any], family: str, n_layers: int, window: int | None,
                   source: str) -> dict[str, Any]:
    """The spec's layer_types and sliding_window for a family with per-layer attention."""
    names = hf_layer_types(config, family, n_layers)
    if len(names) != n_layers:
        raise ConfigError(f"{source}: layer_types has {len(names)} entries for num_hidden_layers {n_layers}")
    kinds = []
    for index, name in enumerate(names):
        if _KINDS.get(name) not in ("full", "sliding"):
            raise ConfigError(f"{source}: layer_types[{index}] {name!r} is not supported by {family} in llmspec "
                              "(full_attention or sliding_attention)")
        kinds.append(_KINDS[name])
    if "sliding" not in kinds:
        return {}
    if window is None:
        key = "use_sliding_window" if family in ("qwen3", "smollm3") else "sliding_window"
        raise ConfigError(f"{source}: {key}: layer_types has sliding_attention layers but no window is set")
    if set(kinds) == {"sliding"}:
        return {"sliding_window": window}
    return {"layer_types": shortest_pattern(kinds), "sliding_window": window}


def shortest_pattern(items: list[Any]) -> list[Any]:
    """The shortest prefix that, repeated, gives ``items`` (the list itself when none does)."""
    for length in range(1, len(items)):
        if all(item == items[index % length] for index, item in enumerate(items)):
            return items[:length]
    return items


def nope_from_hf(config: dict[str, Any], n_layers: int, source: str) -> int | list[int] | None:
    """The spec's nope_layers for SmolLM3: the interval where the NoPE layers are every n-th, else their indices."""
    rope = smollm3_rope_layers(config, n_layers)
    if len(rope) != n_layers:
        raise ConfigError(f"{source}: no_rope_layers has {len(rope)} entries for num_hidden_layers {n_layers}")
    nope = [index for index, rotates in enumerate(rope) if not rotates]
    if not nope:
        return None
    every = nope[0] + 1
    if nope == [index for index in range(n_layers) if (index + 1) % every == 0]:
        return every
    return nope
