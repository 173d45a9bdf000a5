"""The ``post_training`` section: what a fine-tune or an alignment run trains, on top of a pretrained base.

Absent, the spec is pretraining. Present, ``method`` names the objective and picks the section's class: each
method's class holds the knobs that method reads, so a knob another method reads is refused by name. Every
method has ``adapter`` (what is trained: everything, LoRA adapters or prefix key/values) and ``base_precision``
(how the frozen weights are stored: 16/32-bit, or quantised to int8 or NF4 as QLoRA does).

The classes also state, as traits, what the rest of llmspec needs to know of a method (pairs or rollouts, a
reference, a value head, a critic): the planner, the compiler and the engines read the traits and never compare
method names, so a new method is its class here plus its module in ``llmspec.train.methods``.

Derived fields are filled in by ``Spec``'s validator (they depend on the training section); cross-field rules live
in ``llmspec.spec.rules``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BeforeValidator, Field, StrictBool

from llmspec.spec.section import Positive, Section

Fraction01 = Annotated[float, Field(ge=0, le=1)]

# the frozen weights' storage: 16/32-bit as trained, or quantised (only under an adapter: quantised weights
# cannot be trained)
QUANTISED = ("int8", "nf4")


class Adapter(Section):
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
    rslora: StrictBool = Field(False, description="rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski 2023)")
    n_virtual: Positive = Field(20, description="prefix tuning: virtual tokens per layer")


class PostTrainingBase(Section):
    """What every method has: the adapter and the frozen weights' storage. A subclass per method adds its knobs
    and sets its traits."""

    method: str = Field(description="the objective, which picks the section's knobs: sft (the default), reward, "
                        "dpo, ppo or grpo")
    adapter: Adapter = Adapter()
    base_precision: Literal["bf16", "fp16", "fp32", "int8", "nf4"] | None = Field(
        None, description="derived: training.precision; storage of the frozen weights (int8 and nf4 quantise "
        "the block linears; embeddings, norms and the LM head stay 16-bit)")
    double_quant: StrictBool = Field(False, description="nf4: quantise the absmax constants to 8 bits too (QLoRA §3)")

    #: trains on (chosen, rejected) pairs: each example is two sequences
    pairwise: ClassVar[bool] = False
    #: generates its batches: samples rollouts, scores them, then trains on them (a step has three phases)
    generates: ClassVar[bool] = False
    #: compares the policy with a frozen reference (a KL term or DPO's log-ratio)
    has_reference: ClassVar[bool] = False
    #: the reference's forward is part of the training step (else of a scoring phase before it)
    reference_in_step: ClassVar[bool] = False
    #: the trained model ends in a scalar value head instead of the LM head
    value_model: ClassVar[bool] = False
    #: a critic (a value model) trains beside the policy
    trains_critic: ClassVar[bool] = False
    #: bytes the compiled loss saves for backward beyond the per-token tensors the activation formulas count:
    #: (per token, per example — a pair or a sequence —, per micro-batch); cross-entropy keeps its fp32 total
    #: weight once per micro-batch (measured on the compiled model: tests/test_measure.py)
    loss_saved: ClassVar[tuple[int, int, int]] = (0, 0, 4)

    @property
    def trains_adapter(self) -> bool:
        return self.adapter.type != "none"

    @property
    def sequences_per_example(self) -> int:
        return 2 if self.pairwise else 1

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

    def derive(self, seq_len: int, precision: str, global_batch: int, fused_qkv: bool) -> None:
        """Fill the derived fields from the model and training sections (called by ``Spec`` once all parsed)."""
        if self.adapter.targets is None and self.adapter.type == "lora":
            self.adapter.targets = ["qkv_proj"] if fused_qkv else ["q_proj", "v_proj"]
        if self.base_precision is None:
            self.base_precision = precision  # type: ignore[assignment]


class _WithReference(PostTrainingBase):
    has_reference: ClassVar[bool] = True

    def derive(self, seq_len: int, precision: str, global_batch: int, fused_qkv: bool) -> None:
        super().derive(seq_len, precision, global_batch, fused_qkv)
        if self.reference is None:
            self.reference = "adapter_off" if self.trains_adapter else "copy"


class SFT(PostTrainingBase):
    """Supervised fine-tuning: next-token cross-entropy on instruction examples."""

    method: Literal["sft"] = "sft"
    loss_on: Literal["response", "all"] = Field("response", description="sft: tokens the loss is computed on")


class Reward(PostTrainingBase):
    """A reward model: the base under a value head, trained Bradley-Terry on preference pairs."""

    method: Literal["reward"]
    pairwise: ClassVar[bool] = True
    value_model: ClassVar[bool] = True
    loss_saved: ClassVar[tuple[int, int, int]] = (0, 8, 0)  # the margin's log-sigmoid: fp32 input + a buffer, per pair


class DPO(_WithReference):
    """Direct preference optimisation (Rafailov et al. 2023) on preference pairs, against a frozen reference."""

    method: Literal["dpo"]
    reference: Literal["copy", "adapter_off", "precomputed"] | None = Field(
        None, description="derived: adapter_off under an adapter (the base is the reference), else copy (a frozen "
        "copy of the start); precomputed: score every pair with the start once, before step 0, and hold no "
        "reference while training")
    beta: float = Field(0.1, gt=0, description="dpo: strength of the implicit KL constraint")
    loss: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="dpo: the preference loss")
    rpo_alpha: float = Field(0.0, ge=0, description="dpo: weight of the chosen responses' NLL per token added to "
                                                    "the preference loss (RPO, Pang et al. 2024; TRL's rpo_alpha)")
    pairwise: ClassVar[bool] = True
    reference_in_step: ClassVar[bool] = True
    #: per pair, what each preference loss keeps of its fp32 margin: log-sigmoid its input and a buffer; IPO's
    #: square and the hinge's ReLU one
    margin_saved: ClassVar[dict[str, int]] = {"sigmoid": 8, "ipo": 4, "hinge": 4}

    @property
    def loss_saved(self) -> tuple[int, int, int]:  # type: ignore[override]
        return (0, self.margin_saved[self.loss], 0)


class _RL(_WithReference):
    """What PPO and GRPO share: rollouts of prompt_len + response_len tokens, rewarded by a verifier or a reward
    model, a clipped policy ratio and a KL penalty to the reference."""

    reference: Literal["copy", "adapter_off"] | None = Field(
        None, description="derived: adapter_off under an adapter (the base is the reference), else copy (a frozen "
        "copy of the start)")
    reward_model: str | None = Field(
        None, description="the reward model, a run directory, a named spec or a spec path (its architecture is "
        "planned); `llmspec run` needs a trained reward model's run directory; none: the built-in task set's "
        "verifier rewards (no model, in the plan as in the run)")
    kl_coef: float = Field(0.05, ge=0, description="per-token KL penalty to the reference")
    clip: float = Field(0.2, gt=0, description="policy ratio clip")
    epochs: Positive | None = Field(None, description="derived: ppo 4, grpo 1; passes over each batch of rollouts")
    prompt_len: Positive | None = Field(None, description="derived: half of training.seq_len")
    response_len: Positive | None = Field(None, description="derived: seq_len - prompt_len")
    rollouts_per_step: Positive | None = Field(
        None, description="derived: training.global_batch_size; sequences generated per step (a step: "
        "generation, scoring, then epochs passes over them, one optimizer step per mini-batch of "
        "global_batch_size: ppo may generate a multiple of it, grpo exactly it)")
    generates: ClassVar[bool] = True
    #: passes over each batch of rollouts when ``epochs`` is not given
    default_epochs: ClassVar[int] = 1

    def derive(self, seq_len: int, precision: str, global_batch: int, fused_qkv: bool) -> None:
        super().derive(seq_len, precision, global_batch, fused_qkv)
        if self.epochs is None:
            self.epochs = self.default_epochs
        if self.prompt_len is None:
            self.prompt_len = max(1, seq_len // 2) if self.response_len is None else max(
                1, seq_len - self.response_len)
        if self.response_len is None:
            self.response_len = max(1, seq_len - self.prompt_len)
        if self.rollouts_per_step is None:
            self.rollouts_per_step = global_batch


class PPO(_RL):
    """PPO with a learned critic and GAE (Schulman et al. 2017; InstructGPT's recipe)."""

    method: Literal["ppo"]
    critic_model: str | None = Field(
        None, description="ppo: the critic, a run directory, an import-hf output, a named spec or a spec path (its "
        "architecture is planned); `llmspec run` starts the critic from the weights a run directory or import-hf "
        "output holds (a trained reward model's, as InstructGPT does); default: the policy's base under a new value "
        "head")
    kl_estimator: Literal["k1", "k3"] = Field(
        "k1", description="ppo: the per-token KL penalty's estimator from the sampled tokens: k1 = log π − log π_ref "
        "(InstructGPT, TRL) or k3 (unbiased, ≥ 0; Schulman 2020)")
    value_clip: float = Field(0.2, gt=0, description="ppo: value clip")
    value_coef: float = Field(0.1, gt=0, description="ppo: weight of the critic's value loss (TRL's vf_coef)")
    gamma: Fraction01 = Field(1.0, description="ppo: discount")
    lam: Fraction01 = Field(0.95, description="ppo: GAE lambda")
    trains_critic: ClassVar[bool] = True
    default_epochs: ClassVar[int] = 4
    # per token: the targets' indices and response mask, the ratio, the clamp mask, the min/max side and the value
    # clip's terms; per micro-batch: the masked means
    loss_saved: ClassVar[tuple[int, int, int]] = (45, 0, 4)


class GRPO(_RL):
    """Group relative policy optimisation (Shao et al. 2024): advantages normalised within each prompt's group of
    samples, no critic; its KL term is k3, inside the step."""

    method: Literal["grpo"]
    group_size: Positive = Field(8, description="grpo: samples per prompt, advantages normalised within a group")
    reference_in_step: ClassVar[bool] = True
    # per token: the policy's terms as PPO's + k3's exponent; per sequence: its token count and sum
    loss_saved: ClassVar[tuple[int, int, int]] = (21, 8, 0)


# The spec side's registry of methods: the name a spec writes → its section's class.
METHOD_CLASSES: dict[str, type[PostTrainingBase]] = {cls.model_fields["method"].annotation.__args__[0]: cls
                                                      for cls in (SFT, Reward, DPO, PPO, GRPO)}
METHODS = tuple(METHOD_CLASSES)


def _method_defaults_to_sft(value: Any) -> Any:
    """``method`` may be left out (sft, as before the section had a class per method)."""
    return {"method": "sft", **value} if isinstance(value, dict) and "method" not in value else value


PostTraining = Annotated[Union[SFT, Reward, DPO, PPO, GRPO], Field(discriminator="method"),  # noqa: UP007
                         BeforeValidator(_method_defaults_to_sft)]

# Transitional names (the traits replace them; kept while callers move to the traits).
PAIRWISE = tuple(name for name, cls in METHOD_CLASSES.items() if cls.pairwise)
RL_METHODS = tuple(name for name, cls in METHOD_CLASSES.items() if cls.generates)
WITH_REFERENCE = tuple(name for name, cls in METHOD_CLASSES.items() if cls.has_reference)


def sequences_per_example(post: PostTrainingBase | None) -> int:
    """Sequences the model runs per example: 2 for pairwise objectives (reward, dpo), else 1."""
    return 1 if post is None else post.sequences_per_example


def linear_names(fused_qkv: bool, gated: bool, moe: bool) -> list[str]:
    """The compiled model's linear layers inside a block, by the names LoRA targets use."""
    names = ["qkv_proj"] if fused_qkv else ["q_proj", "k_proj", "v_proj"]
    names += ["o_proj"] + (["gate_proj"] if gated else []) + ["up_proj", "down_proj"]
    return names + (["router"] if moe else [])
