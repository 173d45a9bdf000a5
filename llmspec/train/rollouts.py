"""GRPO's batches: rollouts the policy generates, scored by a verifier, with group-normalised advantages.

Each optimizer step draws ``rollouts_per_step / group_size`` prompts, samples ``group_size`` responses to each
(temperature 1, at most ``response_len`` tokens, ending at end-of-text), scores every response 1 if it is exactly
the prompt's answer, else 0, and gives each response the advantage (r − mean) / (std + 1e-4) within its group
(Shao et al. 2024). A micro-batch is (inputs, targets, advantages): the prompt and response padded to
``prompt_len + response_len``, the targets masked outside the response. Prompts and samples are a pure function of
(seed, step, data-parallel rank), so a resumed run generates what an uninterrupted one did.
"""

from __future__ import annotations

import numpy as np
import torch

from llmspec.data.instructions import IGNORE, prompt_text
from llmspec.data.tokenizer import END_OF_TEXT

ADVANTAGE_EPS = 1e-4


def verify(response: str, answer: str) -> float:
    """The verifier: 1 when the response is exactly the answer (surrounding spaces aside), else 0."""
    return float(response.strip() == answer.strip())


@torch.no_grad()
def sample_responses(model: torch.nn.Module, prompt: list[int], count: int, max_new_tokens: int, end: int,
                     generator: torch.Generator, temperature: float = 1.0) -> list[list[int]]:
    """``count`` responses to one prompt (a batch sharing it), each cut after its end-of-text; the model's
    train/eval mode is left as it was (no dropout while sampling)."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        idx = torch.tensor([prompt] * count, device=device)
        done = torch.zeros(count, dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            logits = model(idx[:, -model.config.max_seq_len:])[0][:, -1].float()
            if temperature == 0:
                token = logits.argmax(dim=-1)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                token = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(device)
            token = torch.where(done, torch.full_like(token, end), token)
            idx = torch.cat([idx, token[:, None]], dim=1)
            done |= token == end
            if done.all():
                break
    finally:
        model.train(was_training)
    responses = []
    for row in idx[:, len(prompt):].tolist():
        responses.append(row[: row.index(end) + 1] if end in row else row)
    return responses


class RolloutBatches:
    """GRPO's batch source: ``get(step, micro, rank)`` generates (once per step and rank) and slices."""

    def __init__(self, model: torch.nn.Module, records: list[dict[str, str]], tokenizer, spec, dp: int):
        post, tr = spec.post_training, spec.training
        self.model, self.records, self.tokenizer = model, records, tokenizer
        self.group, self.seed = post.group_size, tr.seed
        self.prompt_len, self.response_len = post.prompt_len, post.response_len
        self.per_rank = post.rollouts_per_step // dp  # rollouts each data-parallel rank generates per step
        self.micro = tr.micro_batch_size
        self.end = tokenizer.token_to_id(END_OF_TEXT)
        self.cached: tuple[tuple[int, int], tuple[torch.Tensor, ...], dict[str, float]] | None = None

    def get(self, step: int, micro: int, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.cached is None or self.cached[0] != (step, rank):
            self.cached = ((step, rank), *self._rollouts(step, rank))
        inputs, targets, advantages = self.cached[1]
        rows = slice(micro * self.micro, (micro + 1) * self.micro)
        return inputs[rows], targets[rows], advantages[rows]

    def _rollouts(self, step: int, rank: int) -> tuple[tuple[torch.Tensor, ...], dict[str, float]]:
        rng = np.random.default_rng([self.seed, 2, step, rank])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        records = [self.records[int(i)] for i in rng.integers(len(self.records), size=self.per_rank // self.group)]
        inputs, targets, rewards = self.scored(records, self.group, generator)
        grouped = rewards.view(-1, self.group)
        std = grouped.std(dim=1, keepdim=True) if self.group > 1 else torch.zeros_like(grouped)
        advantages = ((grouped - grouped.mean(dim=1, keepdim=True)) / (std + ADVANTAGE_EPS)).flatten()
        return (inputs, targets, advantages), {"reward_mean": rewards.mean().item()}

    def scored(self, records: list[dict[str, str]], group: int, generator: torch.Generator,
               temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``group`` sampled responses to each record's prompt as padded (inputs, targets) rows, and the
        verifier's reward of each."""
        rows, learn, rewards = [], [], []
        for record in records:
            prompt = self.tokenizer.encode(prompt_text(record["prompt"]), add_special_tokens=False).ids
            prompt = prompt[-self.prompt_len:]
            for response in sample_responses(self.model, prompt, group, self.response_len, self.end, generator,
                                             temperature):
                rows.append(prompt + response)
                learn.append([False] * len(prompt) + [True] * len(response))
                rewards.append(verify(self.tokenizer.decode([t for t in response if t != self.end]),
                                      record["answer"]))
        length = self.prompt_len + self.response_len + 1
        tokens = torch.tensor([r + [self.end] * (length - len(r)) for r in rows])
        keep = torch.tensor([m + [False] * (length - len(m)) for m in learn])
        targets = tokens[:, 1:].masked_fill(~keep[:, 1:], IGNORE)
        return tokens[:, :-1], targets, torch.tensor(rewards)
