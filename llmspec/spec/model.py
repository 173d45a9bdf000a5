"""The ``model`` section: the architecture."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, model_validator

from llmspec.spec.section import Positive, Section


class RopeScaling(Section):
    """Rotary-embedding frequency scaling (Llama 3.1 style, or plain linear position interpolation)."""

    type: Literal["llama3", "linear"] = "llama3"
    factor: float = Field(8.0, gt=0)
    low_freq_factor: float = Field(1.0, gt=0)
    high_freq_factor: float = Field(4.0, gt=0)
    original_max_seq_len: Positive = 8192


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
    mlp: Literal["gelu", "gelu_tanh", "relu", "swiglu", "geglu"] = "gelu"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = Field(1e-5, gt=0)
    position: Literal["learned", "rope"] = "learned"
    rope_theta: float = Field(10000.0, gt=0)
    rope_scaling: RopeScaling | None = None
    max_seq_len: Positive
    tie_embeddings: StrictBool = False
    bias: StrictBool = Field(False, description="biases in every linear layer and LayerNorm (GPT-2)")
    qkv_bias: StrictBool = Field(False, description="biases on the q, k, v projections only (Qwen2)")
    sliding_window: Positive | None = Field(None, description="attend to at most this many past tokens (Mistral)")
    moe: MoE | None = None
    dropout: float = Field(0.0, ge=0, lt=1)
    init_std: float = Field(0.02, gt=0)

    @property
    def gated(self) -> bool:
        return self.mlp in ("swiglu", "geglu")

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
