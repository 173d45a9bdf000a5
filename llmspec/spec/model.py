"""The ``model`` section: the architecture."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, model_validator

from llmspec.spec.architecture import Architecture, architecture_of
from llmspec.spec.section import Positive, Section


class RopeScaling(Section):
    """Rotary-embedding frequency scaling: Llama 3.1's, linear position interpolation, YaRN (Peng et al. 2023:
    Qwen, DeepSeek) or LongRoPE (Phi-3, Phi-4-mini). Each type reads its own fields; transformers' names in
    brackets."""

    type: Literal["llama3", "linear", "yarn", "longrope"] = "llama3"
    factor: float = Field(8.0, gt=0, description="context extension factor (longrope: derived from "
                          "max_seq_len / original_max_seq_len, as transformers derives it)")
    low_freq_factor: float = Field(1.0, gt=0, description="llama3")
    high_freq_factor: float = Field(4.0, gt=0, description="llama3")
    original_max_seq_len: Positive = Field(8192, description="the context the model was pretrained at "
                                           "[original_max_position_embeddings]")
    beta_fast: float = Field(32.0, gt=0, description="yarn: rotations per context below which a frequency is "
                             "interpolated fully")
    beta_slow: float = Field(1.0, gt=0, description="yarn: rotations per context above which a frequency is kept")
    truncate: StrictBool = Field(True, description="yarn: round the correction range to whole dimensions")
    attention_factor: float | None = Field(
        None, gt=0, description="yarn and longrope: cos and sin multiplied by this (derived: yarn 0.1·ln(factor) + "
        "1; longrope sqrt(1 + ln(factor)/ln(original_max_seq_len)))")
    short_factor: list[Annotated[float, Field(gt=0)]] | None = Field(
        None, description="longrope: per-frequency divisors within the original context (rotary_dim/2 of them)")
    long_factor: list[Annotated[float, Field(gt=0)]] | None = Field(
        None, description="longrope: per-frequency divisors beyond the original context")


class MoE(Section):
    """Mixture of experts replacing every MLP: a linear router picks ``top_k`` of ``n_experts`` (Mixtral)."""

    n_experts: Annotated[int, Field(ge=2, strict=True)]
    top_k: Positive = 2
    capacity_factor: float | None = Field(
        None, gt=0, description="none: every routed token computed (dropless, Mixtral). A number c: in training "
        "each expert computes a fixed ⌈c·T·top_k/n_experts⌉ rows of a micro-batch's T tokens (GShard, Switch): "
        "tokens past it dropped (the residual carries them), empty rows padded")


class ModelSpec(Section):
    """The architecture."""

    vocab_size: Positive
    d_model: Positive
    n_layers: Positive
    n_heads: Positive
    n_kv_heads: Positive | None = Field(None, description="derived: n_heads (MHA); 1 is MQA, between is GQA")
    head_dim: Positive | None = Field(None, description="derived: d_model / n_heads")
    d_ff: Positive | None = Field(
        None, description="derived: 4·d_model, or for gated MLPs 8·d_model/3 rounded up to a multiple of 256"
    )
    mlp: Literal["gelu", "gelu_tanh", "relu", "swiglu", "geglu", "geglu_tanh"] = Field(
        "gelu", description="geglu_tanh: GeGLU with the tanh-approximate GELU (Gemma)")
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = Field(1e-5, gt=0)
    norm_placement: Literal["pre", "post", "sandwich"] = Field(
        "pre", description="pre: x + f(norm(x)) (GPT-2, Llama); post: x + norm(f(x)) (OLMo 2); sandwich: "
        "x + norm(f(norm(x))) (Gemma 2 and 3)")
    parallel_residual: StrictBool = Field(
        False, description="x + attention(norm(x)) + mlp(norm'(x)): both sub-blocks read the block's input "
        "(GPT-NeoX, Pythia)")
    position: Literal["learned", "rope"] = "learned"
    rope_theta: float = Field(10000.0, gt=0)
    rope_scaling: RopeScaling | None = Field(
        None, description="frequency scaling; with rope_local_theta, of the full-attention layers only (Gemma 3)")
    rope_local_theta: float | None = Field(
        None, gt=0, description="RoPE base of the sliding and chunked layers (Gemma 3: 10000), unscaled; absent: "
        "rope_theta")
    partial_rotary: float = Field(
        1.0, gt=0, le=1, description="the fraction of each head's dims RoPE rotates (the first "
        "int(head_dim · fraction)); Pythia 0.25, Phi-4-mini 0.75")
    nope_layers: list[Annotated[int, Field(ge=0, strict=True)]] | Positive | None = Field(
        None, description="layers without RoPE (NoPE): their indices from 0, or n for every n-th layer (layers n-1, "
        "2n-1, …; SmolLM3: 4)")
    max_seq_len: Positive
    tie_embeddings: StrictBool = False
    bias: StrictBool = Field(False, description="biases in every linear layer and LayerNorm (GPT-2)")
    qkv_bias: StrictBool = Field(False, description="biases on the q, k, v projections only (Qwen2)")
    qk_norm: Literal["none", "head", "full"] = Field(
        "none", description="normalise queries and keys before RoPE: head (an RMSNorm over each head's dims, one "
        "weight of head_dim shared by the heads: Qwen3, Gemma 3) or full (over the whole q and k projections: "
        "OLMo 2)")
    layer_types: list[Literal["full", "sliding", "chunked"]] | None = Field(
        None, description="each layer's attention, from layer 0: full (every earlier key), sliding (the last "
        "sliding_window keys), chunked (keys of its own attention_chunk_size block). n_layers of them, or a shorter "
        "pattern repeated (Gemma 3: [sliding, sliding, sliding, sliding, sliding, full]). Absent: every layer "
        "sliding where sliding_window is set (Mistral), else full")
    sliding_window: Positive | None = Field(
        None, description="keys a sliding layer attends to, its own included (Mistral, Gemma)")
    attention_chunk_size: Positive | None = Field(None, description="the block a chunked layer attends within")
    attn_softcap: float | None = Field(
        None, gt=0, description="attention scores capped as c·tanh(score/c) (Gemma 2: 50): SDPA cannot, so the "
        "compiled model materialises the scores")
    final_softcap: float | None = Field(None, gt=0, description="logits capped as c·tanh(logit/c) (Gemma 2: 30)")
    embed_scale: float | None = Field(
        None, gt=0, description="token embeddings multiplied by this (Gemma: sqrt(d_model)); absent: 1")
    query_scale: float | None = Field(
        None, gt=0, description="attention scores are q·k times this; absent: head_dim^-0.5 (Gemma: "
        "query_pre_attn_scalar^-0.5)")
    moe: MoE | None = None
    dropout: float = Field(0.0, ge=0, lt=1)
    init_std: float = Field(0.02, gt=0)

    @property
    def gated(self) -> bool:
        return self.mlp in ("swiglu", "geglu", "geglu_tanh")

    @property
    def fused_qkv(self) -> bool:
        """One q/k/v projection (GPT-2's c_attn, and transformers' GPT-2 layout) for learned-position models;
        three (q_proj, k_proj, v_proj: Llama's layout, which tensor parallelism shards head by head) for RoPE ones.
        The compiler emits it, the planner counts its largest module, the HF mapping names it."""
        return self.position == "learned"

    @model_validator(mode="after")
    def _derive(self) -> ModelSpec:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None and self.d_model % self.n_heads == 0:
            self.head_dim = self.d_model // self.n_heads
        if self.d_ff is None:
            self.d_ff = -(-8 * self.d_model // 3 // 256) * 256 if self.gated else 4 * self.d_model
        return self

    @property
    def architecture(self) -> Architecture:
        """Every structural choice, per layer where layers differ (call on a validated spec)."""
        return architecture_of(self)
