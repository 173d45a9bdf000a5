"""GRPO (Shao et al. 2024): ``group_size`` sampled responses per prompt, each with its reward's advantage within
its group; the clipped ratio objective plus k3 KL to the reference, inside the step. One pass per batch of
rollouts: its old policy is the policy itself. A group whose responses all earn the same reward has no advantage
to learn from: step lines add ``zero_advantage_fraction`` (the share of such groups), and a step where it is every
group is said (only the KL term moves the policy then)."""

from __future__ import annotations

from typing import Any

import torch

from llmspec.data.chat import ChatTemplate
from llmspec.data.instructions import IGNORE
from llmspec.errors import LLMSpecError
from llmspec.train.engine import Engine
from llmspec.train.logprobs import compiled
from llmspec.train.losses import Loss, Reference
from llmspec.train.methods.rl import RL
from llmspec.train.rollouts import Reward, RolloutBatches


class GRPOLoss(Loss):
    def __init__(self, post, model: torch.nn.Module):
        self.post, self.module = post, compiled(model)
        self.reference = Reference(post.reference, model)

    def __call__(self, forward, inputs: torch.Tensor, targets: torch.Tensor,
                 advantages: torch.Tensor) -> torch.Tensor:
        module, post = self.module, self.post
        mask = (targets != IGNORE).float()
        policy = module.token_logprobs(forward(inputs)[0], targets)
        ref = module.token_logprobs(self.reference.logits(inputs), targets)
        return module.grpo_loss(policy, ref, advantages.to(policy.device), mask, post.clip, post.kl_coef)


class GroupRollouts(RolloutBatches):
    """GRPO's rollouts, counting the groups whose rewards are all equal (advantages all zero)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.flat_groups: list[float] = []  # per generated batch, until the next step line reads them

    def finish(self, inputs: torch.Tensor, targets: torch.Tensor, rewards: torch.Tensor) -> tuple[torch.Tensor, ...]:
        grouped = rewards.view(-1, self.group)
        self.flat_groups.append((grouped == grouped[:, :1]).all(dim=1).float().mean().item())
        return super().finish(inputs, targets, rewards)

    def step_metrics(self) -> dict[str, float]:
        metrics = super().step_metrics()
        flat, self.flat_groups = self.flat_groups, []
        if metrics and flat:
            metrics["zero_advantage_fraction"] = sum(flat) / len(flat)
        return metrics


class GRPO(RL):
    name = "grpo"

    def __init__(self, spec):
        super().__init__(spec)
        self.said_flat = False  # said once until a step line has a signal again

    def step_notice(self, metrics: dict[str, Any]) -> str | None:
        flat = metrics.get("zero_advantage_fraction") == 1.0
        said, self.said_flat = self.said_flat, flat
        if not flat or said:
            return None
        return ("every group's rewards were equal, so every advantage is zero: these steps learn only from the KL "
                "term (raise post_training.group_size, or train on prompts the policy sometimes answers right)")

    def check_runnable(self) -> None:
        post, tr = self.post, self.spec.training
        if post.epochs != 1:
            raise LLMSpecError(f"post_training.epochs {post.epochs}: grpo runs one pass per batch of rollouts")
        if post.rollouts_per_step != tr.global_batch_size:
            raise LLMSpecError(f"post_training.rollouts_per_step {post.rollouts_per_step}: grpo trains on its "
                               "rollouts as one batch (its old policy is the policy itself): set it to "
                               f"training.global_batch_size {tr.global_batch_size}")
        super().check_runnable()

    def loss(self, model: torch.nn.Module) -> Loss:
        return GRPOLoss(self.post, model)

    def rollouts(self, engine: Engine, records: list[dict[str, str]], tokenizer, template: ChatTemplate,
                 reward: Reward) -> RolloutBatches:
        return GroupRollouts(engine.model, records, tokenizer, template, self.spec,
                             self.spec.parallelism.data_parallel, reward)
