"""What the methods trained on preference pairs (reward, dpo) share: records {prompt, chosen, rejected}, batches of
the b chosen then the b rejected sequences (``llmspec.data.instructions.PairBatches``), and the held-out pairs each
evaluation scores."""

from __future__ import annotations

from pathlib import Path

import torch

from llmspec.data.chat import ChatTemplate
from llmspec.data.instructions import PairBatches, load_examples, read_records, tokenise_pairs
from llmspec.train.engine import Engine
from llmspec.train.methods.base import PostTrainingMethod
from llmspec.train.objectives import Objective

HELD_OUT_PAIRS = 64  # held-out preference pairs scored at each evaluation


class Pairwise(PostTrainingMethod):
    def read_records(self, path: Path) -> list[dict[str, str]]:
        return read_records(path, pairs=True)

    def tokenise(self, records: list[dict], tokenizer, source: str, template: ChatTemplate) -> list:
        return tokenise_pairs(records, tokenizer, self.spec.training.seq_len, source, template)

    def pair_batches(self, job) -> list[PairBatches]:
        tr, data = self.spec.training, job.run_dir / "data"
        return [PairBatches(load_examples(data / f"{split}.json"), tr.seq_len, tr.micro_batch_size, tr.seed, split)
                for split in ("train", "val")]

    def objective(self, job, engine: Engine) -> Objective:
        return Objective(*self.pair_batches(job), eval_at_start=True, held_out=self.held_out_records(job),
                         tokenizer_file=job.tokenizer_file)


def held_out_pairs(engine: Engine, pairs: PairBatches) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out pairs every evaluation scores (the same ones each time) as (inputs, targets) on the engine's
    device: the chosen, then the rejected."""
    held_out = pairs.pairs[:HELD_OUT_PAIRS]
    inputs, targets = pairs.rows([c for c, _ in held_out] + [r for _, r in held_out])
    return inputs.to(engine.device), targets.to(engine.device)
