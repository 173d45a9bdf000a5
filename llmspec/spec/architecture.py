"""The architecture vocabulary: every structural choice of a ``model`` section, stated once, per layer where layers
differ.

``architecture_of(model)`` resolves what the section leaves implicit (defaults, repeating patterns, intervals,
which RoPE base and scaling a layer uses) into one frozen value. The compiled model's template, the planner's
inputs, Hugging Face interop, ``measure`` and the tests' generators read this value, not the raw fields, so a new
feature is decided here once (docs/architecture.md, "Adding an architecture feature").
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmspec.spec.model import ModelSpec, MoE, RopeScaling

# what a non-gated MLP's activation is called in the compiled model, by the spec's mlp
ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_tanh", "relu": "relu", "swiglu": "silu", "geglu": "gelu",
               "geglu_tanh": "gelu_tanh"}


@dataclass(frozen=True)
class Layer:
    """One block's attention: which keys a query sees, and how positions enter it."""

    attention: str  # full | sliding | chunked
    span: int | None  # keys a sliding layer sees (its window), the block a chunked one attends within; None: full
    rope: bool  # RoPE rotates this layer's queries and keys (False: learned positions, or a NoPE layer)
    local_rope: bool  # its RoPE uses the local base (rope_local_theta), unscaled

    @property
    def kind(self) -> tuple[str, int | None]:
        """What decides the keys a query sees (the planner's per-kind attention FLOPs and masks)."""
        return self.attention, self.span


@dataclass(frozen=True)
class Architecture:
    """A model's structure, resolved. Sizes as in the spec; every flag and per-layer choice explicit."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    max_seq_len: int
    # attention
    fused_qkv: bool  # one q/k/v projection (GPT-2's layout) or three (Llama's)
    qkv_bias: bool
    bias: bool  # biases on every linear and LayerNorm
    qk_norm: str  # none | head | full
    query_scale: float | None  # None: SDPA's head_dim^-0.5
    attn_softcap: float | None
    # positions
    position: str  # learned | rope
    rotary_dim: int  # dims of each head RoPE rotates (0 with learned positions)
    rope_theta: float
    rope_local_theta: float | None
    rope_scaling: RopeScaling | None
    # the block
    norm: str  # layernorm | rmsnorm
    norm_eps: float
    norm_placement: str  # pre | post | sandwich
    parallel_residual: bool
    mlp: str  # the spec's name
    gated: bool
    activation: str  # gelu | gelu_tanh | relu | silu
    moe: MoE | None
    # the ends
    embed_scale: float | None
    final_softcap: float | None
    tie_embeddings: bool
    dropout: float
    init_std: float
    layers: tuple[Layer, ...]

    @property
    def kinds(self) -> Counter[tuple[str, int | None]]:
        """Layers per attention kind ((full, None), (sliding, window), (chunked, chunk))."""
        return Counter(layer.kind for layer in self.layers)

    @property
    def uniform(self) -> bool:
        """Every layer attends and rotates alike (one mask, one RoPE table for the whole stack)."""
        return len(set(self.layers)) == 1

    @property
    def rope(self) -> bool:
        return self.position == "rope"

    @property
    def partial_rotary(self) -> bool:
        return self.rope and self.rotary_dim < self.head_dim

    @property
    def nope(self) -> bool:
        """Some RoPE model's layers take no RoPE (SmolLM3)."""
        return self.rope and not all(layer.rope for layer in self.layers)

    @property
    def local_rope(self) -> bool:
        """Sliding or chunked layers rotate with a RoPE base of their own (Gemma 3)."""
        return any(layer.local_rope for layer in self.layers)

    @property
    def rope_attention_factor(self) -> float | None:
        """What YaRN and LongRoPE multiply cos and sin by: the spec's, else transformers' default (YaRN:
        0.1·ln(factor) + 1; LongRoPE: sqrt(1 + ln(factor)/ln(original context)), its factor max_seq_len / original
        context unless given). None for other RoPE."""
        scaling = self.rope_scaling
        if scaling is None or scaling.type not in ("yarn", "longrope"):
            return None
        if scaling.attention_factor is not None:
            return float(scaling.attention_factor)
        if scaling.type == "yarn":
            factor = scaling.factor
            return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0
        factor = scaling.factor if "factor" in scaling.model_fields_set else \
            self.max_seq_len / scaling.original_max_seq_len
        return 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(scaling.original_max_seq_len))

    @property
    def norms_per_block(self) -> int:
        return 4 if self.norm_placement == "sandwich" else 2

    @property
    def qk_norm_width(self) -> tuple[int, int]:
        """Weights of the q and k norms of one block: head_dim each (shared by the heads), the whole projections'
        widths (full), or none."""
        if self.qk_norm == "head":
            return self.head_dim, self.head_dim
        if self.qk_norm == "full":
            return self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        return 0, 0


def layer_types(model: ModelSpec) -> list[str]:
    """Each layer's attention: the spec's list, its pattern repeated, or the default (Mistral's sliding_window
    applies to every layer)."""
    if model.layer_types:
        pattern = model.layer_types
        return [pattern[index % len(pattern)] for index in range(model.n_layers)]
    return ["sliding" if model.sliding_window is not None else "full"] * model.n_layers


def nope_indices(model: ModelSpec) -> set[int]:
    """The layers without RoPE: those listed, or every n-th (n - 1, 2n - 1, …)."""
    nope = model.nope_layers
    if nope is None:
        return set()
    if isinstance(nope, int):
        return {index for index in range(model.n_layers) if (index + 1) % nope == 0}
    return set(nope)


def architecture_of(model: ModelSpec) -> Architecture:
    """The architecture of a validated ``model`` section."""
    rope = model.position == "rope"
    nope = nope_indices(model)
    spans = {"full": None, "sliding": model.sliding_window, "chunked": model.attention_chunk_size}
    local_theta = rope and model.rope_local_theta is not None
    layers = tuple(
        Layer(attention=kind, span=spans[kind], rope=rope and index not in nope,
              local_rope=local_theta and kind != "full" and index not in nope)
        for index, kind in enumerate(layer_types(model)))
    return Architecture(
        vocab_size=model.vocab_size, d_model=model.d_model, n_layers=model.n_layers, n_heads=model.n_heads,
        n_kv_heads=model.n_kv_heads, head_dim=model.head_dim, d_ff=model.d_ff, max_seq_len=model.max_seq_len,
        fused_qkv=model.fused_qkv, qkv_bias=model.bias or model.qkv_bias, bias=model.bias, qk_norm=model.qk_norm,
        query_scale=model.query_scale, attn_softcap=model.attn_softcap, position=model.position,
        rotary_dim=int(model.head_dim * model.partial_rotary) if rope else 0, rope_theta=model.rope_theta,
        rope_local_theta=model.rope_local_theta if rope else None,
        rope_scaling=model.rope_scaling if rope else None, norm=model.norm, norm_eps=model.norm_eps,
        norm_placement=model.norm_placement, parallel_residual=model.parallel_residual, mlp=model.mlp,
        gated=model.gated, activation=ACTIVATIONS[model.mlp], moe=model.moe, embed_scale=model.embed_scale,
        final_softcap=model.final_softcap, tie_embeddings=model.tie_embeddings, dropout=model.dropout,
        init_std=model.init_std, layers=layers,
    )
