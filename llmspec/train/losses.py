"""Each method's loss on one micro-batch, as an engine computes it: ``loss(forward, inputs, targets)``.

The formulas are the compiled model's own (``model.py``: ``cross_entropy``, ``reward_loss``, ``sequence_logprobs``,
``dpo_loss``, ``token_logprobs``, ``grpo_loss``, ``ppo_loss``), so what ``measure`` counts is what trains.
Pairwise batches hold the b chosen sequences, then the b rejected (``llmspec.data.instructions.PairBatches``).

- pretraining, sft: next-token cross-entropy (the prompt's targets are -100 under ``loss_on: response``);
- reward: Bradley-Terry on the value head's score after each sequence's last response token;
- grpo: the clipped ratio objective on verifier-scored rollouts with group-normalised advantages, plus k3 KL to
  the reference (batches: ``llmspec.train.rollouts``);
- ppo: the clipped policy and value losses on scored rollouts (``llmspec.train.ppo``);
- dpo: the policy's and the reference's summed response log-probabilities; the reference is the base with the
  adapters off (``adapter_off``) or a frozen copy of the starting model (``copy``); with ``rpo_alpha`` the chosen
  responses' NLL per token is added (RPO, Pang et al. 2024), which keeps DPO from unlearning how to stop.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from llmspec.data.instructions import IGNORE
from llmspec.spec.schema import Spec
from llmspec.train.logprobs import compiled, sequence_scores
from llmspec.train.ppo import policy_of

# (forward, inputs, targets, *the method's per-row or per-token tensors) → the loss
Loss = Callable[..., torch.Tensor]


class Reference:
    """DPO's reference log-probabilities, without gradients: the model with its adapters off, or a frozen copy of
    the model as it starts (taken when the engine is built, after the base's weights are loaded); ``precomputed``
    holds nothing (the batches carry the start's log-probabilities: ``precompute_reference``)."""

    def __init__(self, kind: str, model: torch.nn.Module):
        self.model = model
        self.frozen = copy.deepcopy(model).eval().requires_grad_(False) if kind == "copy" else None

    @torch.no_grad()
    def logprobs(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed response log-probabilities per sequence."""
        return compiled(self.model).sequence_logprobs(self.logits(inputs), targets)

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.frozen is not None:
            return self.frozen(inputs)[0]
        self.model.set_adapters(False)
        try:
            return self.model(inputs)[0]
        finally:
            self.model.set_adapters(True)


@torch.no_grad()
def precompute_reference(model: torch.nn.Module, pairs, device: str) -> torch.Tensor:
    """DPO's ``reference: precomputed``: every pair's (chosen, rejected) summed response log-probabilities under
    ``model`` (the run's start, in eval mode), computed once before step 0 so that no reference is held while
    training (TRL's precompute_ref_log_probs)."""
    module = compiled(model)
    model = model.to(device).eval()
    out = []
    for start in range(0, len(pairs.pairs), pairs.batch):
        chunk = pairs.pairs[start : start + pairs.batch]
        inputs, targets = pairs.rows([c for c, _ in chunk] + [r for _, r in chunk])
        scores = module.sequence_logprobs(model(inputs.to(device))[0], targets.to(device)).float().cpu()
        out.append(scores.view(2, -1).T)  # (pairs in the chunk, [chosen, rejected])
    return torch.cat(out)


def loss_for(spec: Spec, model: torch.nn.Module) -> Loss:
    """The loss of ``spec``'s method for ``model`` (the engine's module; ``forward`` may be its compiled or
    DeepSpeed-wrapped callable)."""
    post = spec.post_training
    method = post.method if post is not None else "pretrain"
    module = compiled(policy_of(model))  # the compiled model.py (PPO's: its policy's)
    if method in ("pretrain", "sft"):
        return lambda forward, inputs, targets: forward(inputs, targets)[1]
    if method == "reward":
        def reward(forward, inputs, targets):
            chosen, rejected = sequence_scores(forward(inputs)[0], targets).chunk(2)
            return module.reward_loss(chosen, rejected)
        return reward
    if method == "dpo":
        reference = Reference(post.reference, model)

        def dpo(forward, inputs, targets, precomputed=None):
            policy = module.sequence_logprobs(forward(inputs)[0], targets)
            ref = reference.logprobs(inputs, targets) if precomputed is None else precomputed.to(policy.device)
            (policy_chosen, policy_rejected), (ref_chosen, ref_rejected) = policy.chunk(2), ref.chunk(2)
            loss = module.dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
            if post.rpo_alpha:  # + the chosen responses' NLL per token (RPO, Pang et al. 2024; TRL's rpo_alpha)
                chosen_tokens = (targets.chunk(2)[0] != IGNORE).sum().clamp(min=1)
                loss = loss - post.rpo_alpha * policy_chosen.sum() / chosen_tokens
            return loss
        dpo.reference = reference  # the metrics read the same reference
        return dpo
    if method == "grpo":
        reference = Reference(post.reference, model)

        def grpo(forward, inputs, targets, advantages):
            mask = (targets != IGNORE).float()
            policy = module.token_logprobs(forward(inputs)[0], targets)
            ref = module.token_logprobs(reference.logits(inputs), targets)
            return module.grpo_loss(policy, ref, advantages.to(policy.device), mask, post.clip, post.kl_coef)
        grpo.reference = reference
        return grpo
    if method == "ppo":
        reference = Reference(post.reference, model.policy)  # model: the policy and its critic

        def ppo(forward, inputs, targets, old_logprobs, old_values, advantages, returns):
            logits, values = forward(inputs)
            return module.ppo_loss(logits, values, targets, old_logprobs, old_values, advantages, returns, post.clip,
                                   post.value_clip, post.value_coef)
        ppo.reference = reference
        return ppo
    raise ValueError(f"post_training.method {method}: not run yet")
