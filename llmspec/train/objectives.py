"""What a run optimises, as the one loop sees it: where its batches come from, how it steps over them, and the
held-out prompts its evaluations answer. Each method builds its own (``llmspec.train.methods``: ``objective``).

A batch is (inputs, targets[, the method's tensors]). Post-training evaluates from step 0 (so the gain is visible);
the instruction-tuned policies add ``task_accuracy``, the share of held-out prompts whose greedy answer is exactly
right.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from llmspec.data.chat import ChatTemplate
from llmspec.train.engine import Batch, Engine
from llmspec.train.ppo import policy_of
from llmspec.train.rollouts import sample_responses

ACCURACY_PROMPTS = 64  # held-out prompts answered at each evaluation


class BatchSource(Protocol):
    def get(self, step: int, micro: int, rank: int = 0) -> Batch: ...


@dataclass
class Objective:
    train: BatchSource
    val: BatchSource
    eval_at_start: bool = False  # post-training: an eval line at step 0, before any update
    held_out: list[dict[str, str]] = field(default_factory=list)  # {prompt, answer} for task_accuracy
    tokenizer_file: Path | None = None
    eval_batches: int = 8  # validation micro-batches per val_loss
    passes: int = 1  # optimizer steps per step (PPO: epochs × minibatches)
    minibatches: int = 1  # PPO: a step's rollouts in mini-batches of global_batch_size, one optimizer step each

    def step_metrics(self) -> dict[str, float]:
        """What a step line adds: the rollouts' mean reward since the previous step line (ppo, grpo)."""
        take = getattr(self.train, "step_metrics", None)
        return take() if take else {}


@torch.no_grad()
def task_accuracy(engine: Engine, records: list[dict[str, str]], tokenizer_file: Path) -> float:
    """Greedy answers to held-out prompts, exactly right (up to surrounding spaces) or not."""
    from tokenizers import Tokenizer

    tokenizer, template = Tokenizer.from_file(str(tokenizer_file)), ChatTemplate.beside(tokenizer_file)
    end = tokenizer.token_to_id(template.end)
    longest = max(len(tokenizer.encode(r["answer"]).ids) for r in records) + 2
    right = 0
    for record in records:
        ids = tokenizer.encode(template.prompt(record), add_special_tokens=False).ids
        answer = sample_responses(policy_of(engine.model), ids, 1, longest, end, generator=None, temperature=0)[0]
        right += tokenizer.decode([t for t in answer if t != end]).strip() == record["answer"].strip()
    return right / len(records)
