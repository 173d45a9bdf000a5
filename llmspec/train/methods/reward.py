"""A reward model: Bradley-Terry on the value head's score after each sequence's last response token, trained on
preference pairs; its evaluations add ``reward_accuracy`` (held-out pairs it scores the right way round)."""

from __future__ import annotations

from typing import Any

import torch

from llmspec.data.chat import ChatTemplate
from llmspec.data.tasks import task_records
from llmspec.train.engine import Engine
from llmspec.train.logprobs import compiled, sequence_scores
from llmspec.train.losses import Loss
from llmspec.train.methods.pairwise import Pairwise, held_out_pairs
from llmspec.train.objectives import Objective


class BradleyTerry(Loss):
    def __init__(self, model: torch.nn.Module):
        self.module = compiled(model)  # the generated objectives.py: its reward_loss

    def __call__(self, forward, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        chosen, rejected = sequence_scores(forward(inputs)[0], targets).chunk(2)
        return self.module.reward_loss(chosen, rejected)


class Reward(Pairwise):
    name = "reward"
    token_cross_entropy = False  # its val_loss is the method's loss: no perplexity

    def held_out(self, val: list[dict[str, str]], builtin: bool) -> list[dict[str, str]]:
        return []  # the reward model scores; it answers nothing

    def loss(self, model: torch.nn.Module) -> Loss:
        return BradleyTerry(model)

    @torch.no_grad()
    def metrics(self, engine: Engine, objective: Objective) -> dict[str, Any]:
        inputs, targets = held_out_pairs(engine, objective.val)
        chosen, rejected = sequence_scores(engine.model(inputs)[0], targets).float().chunk(2)
        return {"reward_accuracy": (chosen > rejected).float().mean().item()}

    def sample_prompts(self, job) -> list[str]:
        """Scored: held-out prompts, each with its right and its wrong answer."""
        template = ChatTemplate.beside(job.tokenizer_file)
        pairs = [({"prompt": r["prompt"]}, r[answer]) for r in task_records("held_out")[:2]
                 for answer in ("chosen", "rejected")]
        return [template.prompt(record) + template.response(record, answer).removesuffix(template.end)
                for record, answer in pairs]
