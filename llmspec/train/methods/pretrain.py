"""Pretraining: next-token cross-entropy on windows of the token stream (``llmspec.data.shards``)."""

from __future__ import annotations

import torch

from llmspec.data.shards import Batches
from llmspec.train.losses import Loss
from llmspec.train.methods.base import Method
from llmspec.train.objectives import Objective

PROMPTS = ["The", "Return a", "This module"]  # what samples.txt continues after a pretraining run


class NextToken(Loss):
    """Next-token cross-entropy, the compiled model's own (its forward's second output)."""

    def __call__(self, forward, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return forward(inputs, targets)[1]


class Pretrain(Method):
    name = "pretrain"

    def loss(self, model: torch.nn.Module) -> Loss:
        return NextToken()

    def objective(self, job, engine) -> Objective:
        tr = self.spec.training
        return Objective(*(Batches(job.shards.load(split), tr.seq_len, tr.micro_batch_size, tr.seed, split)
                           for split in ("train", "val")))

    def sample_prompts(self, job) -> list[str]:
        return PROMPTS
