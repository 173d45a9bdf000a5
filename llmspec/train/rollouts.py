"""RL batches: rollouts the policy generates, scored by a verifier or a trained reward model.

Each rollout batch draws prompts, samples responses (temperature 1, at most ``response_len`` tokens, ending at
end-of-text, through the KV cache) and scores each one. A row is the prompt and response padded to
``prompt_len + response_len``, its targets masked outside the response. Prompts and samples are a pure function of
(seed, step, data-parallel rank), so a resumed run generates what an uninterrupted one did.

- GRPO (Shao et al. 2024): ``group_size`` responses per prompt, each with the advantage (r − mean) / (std + 1e-4)
  within its group; a micro-batch is (inputs, targets, advantages).
- PPO: ``llmspec.train.ppo.PPORollouts`` adds the scoring phase (old log-probs, values, the KL-penalised rewards
  and GAE).
One batch of rollouts per step, as the planner counts it; the loop runs ``epochs`` optimizer steps over it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from llmspec.data.instructions import IGNORE
from llmspec.train.logprobs import sequence_scores
from llmspec.train.sampling import sample

ADVANTAGE_EPS = 1e-4
PHASES = ("generation", "scoring")  # timed here; the rest of a step is training (the planner's three phases)

# (inputs, targets, response texts, records) → one reward per row
Reward = Callable[[torch.Tensor, torch.Tensor, list[str], list[dict[str, str]]], torch.Tensor]


def verify(response: str, answer: str) -> float:
    """The verifier: 1 when the response is exactly the answer (surrounding spaces aside), else 0."""
    return float(response.strip() == answer.strip())


def verifier_reward(inputs: torch.Tensor, targets: torch.Tensor, texts: list[str],
                    records: list[dict[str, str]]) -> torch.Tensor:
    return torch.tensor([verify(text, record["answer"]) for text, record in zip(texts, records, strict=True)])


class RewardModel:
    """A trained reward model's run directory as the reward: its score after each response's last token (where
    it was trained to read it). Frozen, in eval mode, on the policy's device."""

    def __init__(self, run_dir: str | Path, device: str,
                 hold: Callable[[torch.nn.Module], torch.nn.Module] | None = None):
        from llmspec.train.generate import load_run

        _, model, _ = load_run(Path(run_dir))
        model = model.requires_grad_(False).to(device)
        self.model = model if hold is None else hold(model)  # the engine's way of holding a frozen model

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, texts: list[str],
                 records: list[dict[str, str]]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return sequence_scores(self.model(inputs.to(device))[0], targets.to(device)).float().cpu()


def sample_responses(model: torch.nn.Module, prompt: list[int], count: int, max_new_tokens: int, end: int,
                     generator: torch.Generator | None, temperature: float = 1.0) -> list[list[int]]:
    """``count`` responses to one prompt (a batch sharing it, through the KV cache), each cut after its
    end-of-text."""
    idx = torch.tensor([prompt] * count, device=next(model.parameters()).device)
    out = sample(model, idx, max_new_tokens, model.config.max_seq_len, temperature, generator=generator,
                 stop_token=end)
    return [row[: row.index(end) + 1] if end in row else row for row in out[:, len(prompt):].tolist()]


class RolloutBatches:
    """GRPO's batch source: ``get(step, micro, rank)`` generates (once per rollout batch and rank) and slices."""

    def __init__(self, policy: torch.nn.Module, records: list[dict[str, str]], tokenizer, template, spec, dp: int,
                 reward: Reward = verifier_reward, group: int | None = None):
        post, tr = spec.post_training, spec.training
        self.policy, self.records, self.tokenizer, self.reward = policy, records, tokenizer, reward
        self.template = template  # the chat template the prompts are rendered with (llmspec.data.chat)
        self.group = post.group_size if group is None else group
        self.seed = tr.seed
        self.prompt_len, self.response_len = post.prompt_len, post.response_len
        self.per_rank = post.rollouts_per_step // dp  # rollouts each data-parallel rank generates per batch
        self.micro = tr.micro_batch_size
        self.end = tokenizer.token_to_id(template.end)
        # per data-parallel rank, its latest batch of rollouts: (batch number, tensors); the torch engine computes
        # every replica's micro-batches in one process, in turn
        self.cached: dict[int, tuple[int, tuple[torch.Tensor, ...]]] = {}
        self.rewards: list[float] = []  # each generated batch's mean reward, until the next step line reads them
        self.seconds = dict.fromkeys(PHASES, 0.0)  # generating and scoring, until the next step line reads them

    def step_metrics(self) -> dict[str, float]:
        """For the step line: this process's mean rollout reward, and its seconds generating and scoring, since
        the previous step line."""
        rewards, self.rewards = self.rewards, []
        seconds, self.seconds = self.seconds, dict.fromkeys(PHASES, 0.0)
        if not rewards:
            return {}
        return {"rollout_reward": sum(rewards) / len(rewards), **{f"{k}_seconds": v for k, v in seconds.items()}}

    def reset(self) -> None:
        """Forget the generated batches (a new evaluation samples from the policy as it is now)."""
        self.cached.clear()

    def get(self, step: int, micro: int, rank: int = 0) -> tuple[torch.Tensor, ...]:
        if rank not in self.cached or self.cached[rank][0] != step:
            self.cached[rank] = (step, self._rollouts(step, rank))
        rows = slice(micro * self.micro, (micro + 1) * self.micro)
        return tuple(tensor[rows] for tensor in self.cached[rank][1])

    def _rollouts(self, step: int, rank: int) -> tuple[torch.Tensor, ...]:
        rng = np.random.default_rng([self.seed, 2, step, rank])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        records = [self.records[int(i)] for i in rng.integers(len(self.records), size=self.per_rank // self.group)]
        inputs, targets, rewards = self.scored(records, self.group, generator)
        self.rewards.append(rewards.float().mean().item())
        start = time.perf_counter()
        try:
            return self.finish(inputs, targets, rewards)
        finally:
            self.seconds["scoring"] += time.perf_counter() - start

    def finish(self, inputs: torch.Tensor, targets: torch.Tensor, rewards: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """GRPO: each response's advantage within its group."""
        grouped = rewards.view(-1, self.group)
        std = grouped.std(dim=1, keepdim=True) if self.group > 1 else torch.zeros_like(grouped)
        advantages = ((grouped - grouped.mean(dim=1, keepdim=True)) / (std + ADVANTAGE_EPS)).flatten()
        return inputs, targets, advantages

    def scored(self, records: list[dict[str, str]], group: int, generator: torch.Generator,
               temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``group`` sampled responses to each record's prompt as padded (inputs, targets) rows, and the reward of
        each."""
        rows, learn, texts = [], [], []
        start = time.perf_counter()
        for record in records:
            prompt = self.tokenizer.encode(self.template.prompt(record), add_special_tokens=False).ids
            prompt = prompt[-self.prompt_len:]
            for response in sample_responses(self.policy, prompt, group, self.response_len, self.end, generator,
                                             temperature):
                rows.append(prompt + response)
                learn.append([False] * len(prompt) + [True] * len(response))
                texts.append(self.tokenizer.decode([t for t in response if t != self.end]))
        length = self.prompt_len + self.response_len + 1
        tokens = torch.tensor([r + [self.end] * (length - len(r)) for r in rows])
        keep = torch.tensor([m + [False] * (length - len(m)) for m in learn])
        inputs, targets = tokens[:, :-1], tokens[:, 1:].masked_fill(~keep[:, 1:], IGNORE)
        scoring = time.perf_counter()
        rewards = self.reward(inputs, targets, texts, [r for r in records for _ in range(group)])
        self.seconds["generation"] += scoring - start
        self.seconds["scoring"] += time.perf_counter() - scoring
        return inputs, targets, rewards
