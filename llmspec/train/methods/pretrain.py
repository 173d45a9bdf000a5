"""Pretraining: next-token cross-entropy on packed sequences of the prepared token shards (``llmspec.data.packed``),
sources mixed by weight; with ``data.document_masking`` each batch carries its documents' boundaries (segments),
which the compiled model's forward takes."""

from __future__ import annotations

import torch

from llmspec.data.packed import Layout, PackedBatches, Prepared
from llmspec.train.losses import Loss
from llmspec.train.methods.base import Method
from llmspec.train.objectives import Objective

PROMPTS = ["The", "Return a", "This module"]  # what samples.txt continues after a pretraining run


class NextToken(Loss):
    """Next-token cross-entropy, the compiled model's own (its forward's second output); ``segments`` (document
    masking) passed on only when the batch has them, so a model built without masking is called as ever."""

    def __call__(self, forward, inputs: torch.Tensor, targets: torch.Tensor,
                 segments: torch.Tensor | None = None) -> torch.Tensor:
        if segments is None:
            return forward(inputs, targets)[1]
        return forward(inputs, targets, segments=segments)[1]


def pretraining_batches(spec, prepared: Prepared) -> tuple[PackedBatches, PackedBatches]:
    """The (train, val) batches of a pretraining run on its prepared data (``Job.shards``): what the loop draws."""
    tr, data = spec.training, spec.data
    weights = [s["weight"] for s in prepared.sources]
    labels = [f"{s['label']} ({s['path']})" for s in prepared.sources]
    layout = Layout(tr.micro_batch_size, tr.gradient_accumulation_steps, spec.parallelism.data_parallel)
    train = PackedBatches(prepared.streams("train"), weights, tr.seq_len, layout, tr.seed, "train",
                          data.document_masking, data.sampler, labels=labels)
    # validation: the same held-out sequences at every evaluation (the loop asks for step 0's micro-batches)
    val = PackedBatches(prepared.streams("val"), weights, tr.seq_len, Layout(tr.micro_batch_size), tr.seed, "val",
                        data.document_masking, labels=labels)
    return train, val


class Pretrain(Method):
    name = "pretrain"

    def loss(self, model: torch.nn.Module) -> Loss:
        return NextToken()

    def objective(self, job, engine) -> Objective:
        return Objective(*pretraining_batches(self.spec, job.shards))

    def sample_prompts(self, job) -> list[str]:
        return PROMPTS
