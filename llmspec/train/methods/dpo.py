"""DPO (Rafailov et al. 2023): the policy's and the reference's summed response log-probabilities on preference
pairs. The reference is the base with the adapters off (``adapter_off``), a frozen copy of the starting model
(``copy``), or the start's scores of every pair computed once before step 0 (``precomputed``). With ``rpo_alpha``
the chosen responses' NLL per token is added (RPO, Pang et al. 2024), which keeps DPO from unlearning how to stop.
Its evaluations add ``preference_accuracy`` (held-out pairs whose implicit reward β·(log π − log π_ref) prefers the
chosen), ``reward_margin`` (its mean margin) and ``task_accuracy``."""

from __future__ import annotations

from typing import Any

import torch

from llmspec.data.instructions import IGNORE, PairBatches
from llmspec.train.engine import Engine
from llmspec.train.init_from import initial_model
from llmspec.train.logprobs import compiled
from llmspec.train.losses import Loss, Reference
from llmspec.train.methods.pairwise import HELD_OUT_PAIRS, Pairwise, held_out_pairs
from llmspec.train.objectives import Objective


class DPOLoss(Loss):
    def __init__(self, post, model: torch.nn.Module):
        self.post, self.module = post, compiled(model)
        self.reference = Reference(post.reference, model)

    def __call__(self, forward, inputs: torch.Tensor, targets: torch.Tensor,
                 precomputed: torch.Tensor | None = None) -> torch.Tensor:
        module, post = self.module, self.post
        policy = module.sequence_logprobs(forward(inputs)[0], targets)
        ref = self.reference.logprobs(inputs, targets) if precomputed is None else precomputed.to(policy.device)
        (policy_chosen, policy_rejected), (ref_chosen, ref_rejected) = policy.chunk(2), ref.chunk(2)
        loss = module.dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
        if post.rpo_alpha:  # + the chosen responses' NLL per token (RPO, Pang et al. 2024; TRL's rpo_alpha)
            chosen_tokens = (targets.chunk(2)[0] != IGNORE).sum().clamp(min=1)
            loss = loss - post.rpo_alpha * policy_chosen.sum() / chosen_tokens
        return loss


@torch.no_grad()
def precompute_reference(model: torch.nn.Module, pairs: PairBatches, device: str) -> torch.Tensor:
    """``reference: precomputed``: every pair's (chosen, rejected) summed response log-probabilities under
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


class DPO(Pairwise):
    name = "dpo"
    token_cross_entropy = False  # its val_loss is the method's loss: no perplexity

    def loss(self, model: torch.nn.Module) -> Loss:
        return DPOLoss(self.post, model)

    def objective(self, job, engine: Engine) -> Objective:
        objective = super().objective(job, engine)
        if self.post.reference == "precomputed":  # the start scores every pair once; no reference is held after
            start = initial_model(job)
            for pairs in (objective.train, objective.val):
                pairs.reference = precompute_reference(start, pairs, engine.device)
            del start
        return objective

    @torch.no_grad()
    def metrics(self, engine: Engine, objective: Objective) -> dict[str, Any]:
        pairs = objective.val
        inputs, targets = held_out_pairs(engine, pairs)
        policy = compiled(engine.model).sequence_logprobs(engine.model(inputs)[0], targets)
        if pairs.reference is not None:  # precomputed: the held-out pairs' (chosen, rejected) scores of the start
            reference = pairs.reference_rows(slice(HELD_OUT_PAIRS)).to(policy.device)
        else:
            reference = engine.loss.reference.logprobs(inputs, targets)
        chosen, rejected = (self.post.beta * (policy - reference)).chunk(2)
        return {"preference_accuracy": (chosen > rejected).float().mean().item(),
                "reward_margin": (chosen - rejected).mean().item(), **super().metrics(engine, objective)}
