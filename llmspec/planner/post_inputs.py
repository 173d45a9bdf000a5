"""The formula inputs of the ``post_training`` section: what a method trains, holds frozen and saves for backward.

Read from each method's traits and declared constants (``llmspec.spec.post_training``), never from its name: a new
method plans once its spec class states them. Pretraining (no section) gives zeros: nothing frozen, an LM head.
"""

from __future__ import annotations

from typing import Any

from llmspec.spec.post_training import PostTrainingBase
from llmspec.spec.schema import Spec

# The models a post-training run holds, by role: the roles spec.loading.role_model takes and `plan --json` prints
POLICY, CRITIC, REWARD, REFERENCE = "policy", "critic", "reward", "reference"
# What pretraining's cross-entropy saves for backward beyond the per-token tensors the activation formulas count,
# in bytes (per token, per example, per micro-batch): its fp32 total weight once per micro-batch. A method's loss
# declares its own (``PostTrainingBase.loss_saved``).
CROSS_ENTROPY_SAVED = (0, 0, 4)


def loss_saved(post: PostTrainingBase | None) -> tuple[int, int, int]:
    """(per token, per example, per micro-batch) bytes the method's compiled loss saves (``loss_saved``)."""
    return CROSS_ENTROPY_SAVED if post is None else post.loss_saved


def sequence_length(spec: Spec) -> int:
    """Tokens per sequence: training.seq_len, or a generating run's prompt + response (what it generates and trains
    on)."""
    post = spec.post_training
    if post is not None and post.generates:
        return post.prompt_len + post.response_len
    return spec.training.seq_len


def policy_loss_saved(spec: Spec, micro_batch: Any) -> Any:
    """Bytes the trained model's loss saves per micro-batch of ``micro_batch`` examples (a number, or the layout
    search's column of them)."""
    per_token, per_example, per_batch = loss_saved(spec.post_training)
    return per_token * micro_batch * sequence_length(spec) + per_example * micro_batch + per_batch


def post_training_inputs(spec: Spec, e: int, role: str = POLICY) -> dict[str, Any]:
    """Formula inputs of the post_training section. ``role``: which model of an RL step they describe. A critic is
    trained as the policy is (same adapter and base storage) under a value head, without a reference; a reward
    model is evaluated as a value-head model (only its stored bytes and forward are used)."""
    post, mo = spec.post_training, spec.model
    policy = role == POLICY
    adapter = post.adapter if post is not None else None
    kind = adapter.type if adapter is not None else "none"
    targets = post.lora_targets(mo.fused_qkv, mo.gated, mo.moe is not None) if post is not None else []
    base = post.base_precision if post is not None else None
    reference = getattr(post, "reference", None)
    uses_reference = post is not None and post.has_reference and reference != "precomputed" and policy
    b, seq = spec.training.micro_batch_size, sequence_length(spec)
    if policy:
        saved = policy_loss_saved(spec, b)
    elif role == CRITIC and kind == "none":
        # the critic embeds the policy's input ids: where embeddings train, both keep that one int64 tensor
        saved = 4 - 8 * b * seq
    else:
        saved = CROSS_ENTROPY_SAVED[2]
    return {
        "adapter": int(kind != "none"), "r": adapter.r if kind == "lora" else 0,
        "lora_dropout": int(kind == "lora" and adapter.dropout > 0), "prefix": int(kind == "prefix"),
        "n_virtual": adapter.n_virtual if kind == "prefix" else 0,
        **{f"lora_{name.removesuffix('_proj')}": int(name in targets)
           for name in ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "down_proj")},
        "value_head": int(not policy or (post is not None and post.value_model)),
        # a pairwise loss on the LM head compares sequence log-probabilities, summed under a bool response mask
        "response_mask": int(post is not None and post.pairwise and not post.value_model and policy),
        "nf4": int(base == "nf4"), "int8": int(base == "int8"), "double_quant": int(bool(post and post.double_quant)),
        "w_frozen": {"fp32": 4, "bf16": 2, "fp16": 2}.get(base, e),
        "reference_copy": int(reference == "copy" and policy),
        "reference_forward": int(uses_reference),
        "reference_in_step": int(uses_reference and post.reference_in_step),
        "loss_saved": saved,
    }
