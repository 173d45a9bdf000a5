"""Supervised fine-tuning: next-token cross-entropy on packed instruction examples, the prompt's targets masked
under ``loss_on: response`` (``llmspec.data.instructions.ExampleBatches``)."""

from __future__ import annotations

import torch

from llmspec.data.instructions import ExampleBatches, load_examples
from llmspec.train.losses import Loss
from llmspec.train.methods.base import PostTrainingMethod
from llmspec.train.methods.pretrain import NextToken
from llmspec.train.objectives import Objective


class SFT(PostTrainingMethod):
    name = "sft"

    def loss(self, model: torch.nn.Module) -> Loss:
        return NextToken()

    def objective(self, job, engine) -> Objective:
        tr, data = self.spec.training, job.run_dir / "data"
        batches = [ExampleBatches(load_examples(data / f"{split}.json"), tr.seq_len, tr.micro_batch_size, tr.seed,
                                  split, self.post.loss_on) for split in ("train", "val")]
        return Objective(*batches, eval_at_start=True, held_out=self.held_out_records(job),
                         tokenizer_file=job.tokenizer_file)
