"""``llmspec measure`` for PPO and GRPO: the phases of an RL step that are not a training step, measured on the
compiled models (meta device, FlopCounterMode) beside the planner's "Post-training: RL phases".

- generation: one GPU's rollouts (``rollouts_per_step / data_parallel``) decoded as the sampler runs them through
  the KV cache — the prompts at once (``prompt_len`` tokens; logits at the last position only), then one token per
  call, ``response_len`` tokens in all (no rollout stopping early: the planner's worst case) — and the bytes of
  the cache it allocates;
- scoring: the no-grad forwards over those rollouts at full length: with a critic (PPO) the policy (old
  log-probs) and the critic (old values); the reference unless its forward is in the training step (GRPO's is,
  which ``measure`` measures as every method's); the reward model, if any.
Rows do not change what the counter sees per row, so all of a GPU's rollouts run as one batch (the sampler runs
each prompt's group in turn, the scorer ``micro_batch_size`` rows at a time: the same FLOPs).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from llmspec.compile.measured_models import build, routing
from llmspec.planner.post_inputs import REWARD
from llmspec.spec.loading import value_model_spec
from llmspec.spec.schema import Spec


def rollouts_per_gpu(spec: Spec) -> int:
    return spec.post_training.rollouts_per_step // spec.parallelism.data_parallel


def count_generation(spec: Spec) -> tuple[int, int]:
    """(FLOPs, KV-cache bytes) of generating one GPU's rollouts."""
    post = spec.post_training
    with torch.device("meta"):
        policy = build(spec).eval()
        prompts = torch.zeros((rollouts_per_gpu(spec), post.prompt_len), dtype=torch.long)
        tokens = torch.zeros((rollouts_per_gpu(spec), 1), dtype=torch.long)
    policy.start_cache(post.prompt_len + post.response_len)
    try:
        with torch.no_grad(), routing(spec), FlopCounterMode(display=False) as counter:
            policy(prompts)  # the prompts, and the first response token's logits
            for _ in range(post.response_len - 1):
                policy(tokens)
        cache = sum(tensor.nbytes for block in policy.blocks
                    for tensor in (block.attn.kv_cache.keys, block.attn.kv_cache.values))
    finally:
        policy.stop_cache()
    return counter.get_total_flops(), cache


def count_scoring(spec: Spec) -> int:
    """FLOPs of the no-grad forwards that score one GPU's rollouts."""
    post = spec.post_training
    models = []
    with torch.device("meta"):
        if post.trains_critic:  # the old log-probs and values the clipped losses start from
            models += [build(spec), build(value_model_spec(spec))]
        if not post.reference_in_step:  # the reference's log-probs: a copy, or the policy without adapters
            models.append(build(spec))
            if post.reference == "adapter_off":
                models[-1].set_adapters(False)
        if getattr(post, "reward_model", None) is not None:  # else the verifier: no model
            models.append(build(value_model_spec(spec, REWARD)))
        rows = torch.zeros((rollouts_per_gpu(spec), post.prompt_len + post.response_len), dtype=torch.long)
    with torch.no_grad(), routing(spec), FlopCounterMode(display=False) as counter:
        for model in models:
            model.eval()(rows)
    return counter.get_total_flops()

