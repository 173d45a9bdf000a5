"""The ``post_training`` section: what a fine-tune or an alignment run trains, on top of a pretrained base.

Absent, the spec is pretraining. Present, ``method`` names the objective (sft, reward, dpo, ppo, grpo), ``adapter``
what is trained (everything, LoRA adapters or prefix key/values), and ``base_precision`` how the frozen weights are
stored (16/32-bit, or quantised to int8 or NF4 as QLoRA does). Derived fields are filled in by ``Spec``'s validator
(they depend on the training section); cross-field rules live in ``llmspec.spec.rules``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Positive = Annotated[int, Field(gt=0, strict=True)]
Fraction01 = Annotated[float, Field(ge=0, le=1)]

METHODS = ("sft", "reward", "dpo", "ppo", "grpo")
# methods that compare the policy with a frozen reference (a KL term or DPO's log-ratio)
WITH_REFERENCE = ("dpo", "ppo", "grpo")
# methods that train on pairs: a chosen and a rejected sequence per example
PAIRWISE = ("reward", "dpo")
# methods that generate rollouts, then score and train on them
RL_METHODS = ("ppo", "grpo")
# the frozen weights' storage: 16/32-bit as trained, or quantised (only under an adapter: quantised weights
# cannot be trained)
QUANTISED = ("int8", "nf4")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Adapter(_Section):
    """What a post-training run trains: every weight (``none``), low-rank adapters on chosen linears (LoRA, Hu et al.
    2021), or learned key/value prefixes in every attention layer (prefix tuning, Li & Liang 2021)."""

    type: Literal["none", "lora", "prefix"] = "none"
    r: Positive = Field(8, description="LoRA rank")
    alpha: float = Field(16.0, gt=0, description="LoRA scale numerator: updates are scaled by alpha / r "
                                                 "(alpha / sqrt(r) with rslora)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on each LoRA branch's input")
    targets: list[str] | Literal["all-linear"] | None = Field(
        None, description="derived: the attention's query and value projections ([q_proj, v_proj], or [qkv_proj] "
        "where q, k and v are one linear, as PEFT's defaults); the compiled model's linear names (q_proj, k_proj, "
        "v_proj, qkv_proj, o_proj, gate_proj, up_proj, down_proj, router), or all-linear: every linear in the blocks")
    rslora: bool = Field(False, description="rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski 2023)")
    n_virtual: Positive = Field(20, description="prefix tuning: virtual tokens per layer")


class PostTraining(_Section):
    """A post-training run on a pretrained base (``training.init_from``)."""

    method: Literal["sft", "reward", "dpo", "ppo", "grpo"] = "sft"
    adapter: Adapter = Adapter()
    base_precision: Literal["bf16", "fp16", "fp32", "int8", "nf4"] | None = Field(
        None, description="derived: training.precision; storage of the frozen weights (int8 and nf4 quantise "
        "the block linears; embeddings, norms and the LM head stay 16-bit)")
    double_quant: bool = Field(False, description="nf4: quantise the absmax constants to 8 bits too (QLoRA §3)")
    reference: Literal["copy", "adapter_off", "precomputed"] | None = Field(
        None, description="derived for dpo/ppo/grpo: adapter_off under an adapter (the base is the reference), "
        "else copy (a frozen copy of the start); precomputed: dpo scores every pair with the start once, before step "
        "0, and holds no reference while training")
    loss_on: Literal["response", "all"] = Field("response", description="sft: tokens the loss is computed on")
    reward_model: str | None = Field(
        None, description="ppo/grpo: the reward model, a run directory, a named spec or a spec path (its "
        "architecture is planned); `llmspec run` needs a trained reward model's run directory; none: the built-in "
        "task set's verifier rewards (no model, in the plan as in the run)")
    critic_model: str | None = Field(
        None, description="ppo: the critic, a run directory, an import-hf output, a named spec or a spec path (its "
        "architecture is planned); `llmspec run` starts the critic from the weights a run directory or import-hf "
        "output holds (a trained reward model's, as InstructGPT does); default: the policy's base under a new value "
        "head")
    beta: float = Field(0.1, gt=0, description="dpo: strength of the implicit KL constraint")
    loss: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="dpo: the preference loss")
    rpo_alpha: float = Field(0.0, ge=0, description="dpo: weight of the chosen responses' NLL per token added to "
                                                    "the preference loss (RPO, Pang et al. 2024; TRL's rpo_alpha)")
    kl_coef: float = Field(0.05, ge=0, description="ppo/grpo: per-token KL penalty to the reference")
    kl_estimator: Literal["k1", "k3"] = Field(
        "k1", description="ppo: the per-token KL penalty's estimator from the sampled tokens: k1 = log π − log π_ref "
        "(InstructGPT, TRL) or k3 (unbiased, ≥ 0; Schulman 2020); grpo's loss term is k3")
    clip: float = Field(0.2, gt=0, description="ppo/grpo: policy ratio clip")
    value_clip: float = Field(0.2, gt=0, description="ppo: value clip")
    value_coef: float = Field(0.1, gt=0, description="ppo: weight of the critic's value loss (TRL's vf_coef)")
    gamma: Fraction01 = Field(1.0, description="ppo: discount")
    lam: Fraction01 = Field(0.95, description="ppo: GAE lambda")
    epochs: Positive | None = Field(None, description="derived: ppo 4, grpo 1; passes over each batch of rollouts")
    prompt_len: Positive | None = Field(None, description="derived (ppo/grpo): half of training.seq_len")
    response_len: Positive | None = Field(None, description="derived (ppo/grpo): seq_len - prompt_len")
    rollouts_per_step: Positive | None = Field(
        None, description="derived (ppo/grpo): training.global_batch_size; sequences generated per step (a step: "
        "generation, scoring, then epochs passes over them, one optimizer step per mini-batch of "
        "global_batch_size: ppo may generate a multiple of it, grpo exactly it)")
    group_size: Positive = Field(8, description="grpo: samples per prompt, advantages normalised within a group")

    @property
    def trains_adapter(self) -> bool:
        return self.adapter.type != "none"

    def lora_targets(self, fused_qkv: bool, gated: bool, moe: bool) -> list[str]:
        """The linears LoRA adapts, in the model's order (all-linear: every linear in the blocks)."""
        if self.adapter.type != "lora":
            return []
        known = linear_names(fused_qkv, gated, moe)
        chosen = known if self.adapter.targets == "all-linear" else self.adapter.targets
        return [name for name in known if name in chosen]

    @property
    def lora_scale(self) -> float:
        a = self.adapter
        return a.alpha / a.r**0.5 if a.rslora else a.alpha / a.r

    @property
    def value_model(self) -> bool:
        """The trained model ends in a scalar value head instead of the LM head (a reward model)."""
        return self.method == "reward"

    def derive(self, seq_len: int, precision: str, global_batch: int, fused_qkv: bool) -> None:
        """Fill the derived fields from the model and training sections (called by ``Spec`` once all parsed)."""
        if self.adapter.targets is None and self.adapter.type == "lora":
            self.adapter.targets = ["qkv_proj"] if fused_qkv else ["q_proj", "v_proj"]
        if self.base_precision is None:
            self.base_precision = precision  # type: ignore[assignment]
        if self.reference is None and self.method in WITH_REFERENCE:
            self.reference = "adapter_off" if self.trains_adapter else "copy"
        if self.method in RL_METHODS:
            if self.epochs is None:
                self.epochs = 4 if self.method == "ppo" else 1
            if self.prompt_len is None:
                self.prompt_len = max(1, seq_len // 2) if self.response_len is None else max(
                    1, seq_len - self.response_len)
            if self.response_len is None:
                self.response_len = max(1, seq_len - self.prompt_len)
            if self.rollouts_per_step is None:
                self.rollouts_per_step = global_batch


def sequences_per_example(post: PostTraining | None) -> int:
    """Sequences the model runs per example: 2 for pairwise objectives (reward, dpo), else 1."""
    return 2 if post is not None and post.method in PAIRWISE else 1


def linear_names(fused_qkv: bool, gated: bool, moe: bool) -> list[str]:
    """The compiled model's linear layers inside a block, by the names LoRA targets use."""
    names = ["qkv_proj"] if fused_qkv else ["q_proj", "k_proj", "v_proj"]
    names += ["o_proj"] + (["gate_proj"] if gated else []) + ["up_proj", "down_proj"]
    return names + (["router"] if moe else [])
