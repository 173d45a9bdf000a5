"""What a run optimises, as the one loop sees it: where its batches come from and what its evaluations add.

Pretraining samples windows of the token stream. Post-training evaluates from step 0 (so the gain is visible):
- sft packs instruction examples with the prompt's targets masked; on the built-in task set it adds
  ``task_accuracy``, the share of held-out prompts whose greedy answer is exactly right;
- reward and dpo run preference pairs (the b chosen, then the b rejected); the reward model adds
  ``reward_accuracy`` (held-out pairs it scores the right way round), DPO ``preference_accuracy`` (held-out pairs
  whose implicit reward β·(log π − log π_ref) prefers the chosen), ``reward_margin`` (its mean margin) and
  ``task_accuracy``;
- ppo and grpo generate their batches (``llmspec.train.rollouts``, ``llmspec.train.ppo``); they add
  ``reward_mean`` and ``kl`` on held-out prompts, and ``task_accuracy``; their step lines add ``rollout_reward``.
A batch is (inputs, targets[, the method's tensors]); each method's loss is ``llmspec.train.losses``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from llmspec.data.chat import ChatTemplate
from llmspec.data.instructions import IGNORE, ExampleBatches, PairBatches, load_examples
from llmspec.data.shards import Batches
from llmspec.spec.post_training import PAIRWISE, RL_METHODS
from llmspec.train.engine import Batch, Engine
from llmspec.train.init_from import initial_model
from llmspec.train.logprobs import compiled, sequence_scores
from llmspec.train.losses import precompute_reference
from llmspec.train.ppo import PPORollouts, policy_of
from llmspec.train.rollouts import Reward, RewardModel, RolloutBatches, sample_responses, verifier_reward

ACCURACY_PROMPTS = 64  # held-out prompts answered at each evaluation
HELD_OUT_PAIRS = 64  # held-out preference pairs scored at each evaluation
EVAL_SAMPLES = 4  # sampled responses per held-out prompt for reward_mean and kl


class BatchSource(Protocol):
    def get(self, step: int, micro: int, rank: int = 0) -> Batch: ...


@dataclass
class Objective:
    train: BatchSource
    val: BatchSource
    eval_at_start: bool = False  # post-training: an eval line at step 0, before any update
    held_out: list[dict[str, str]] = field(default_factory=list)  # {prompt, answer} for task_accuracy
    tokenizer_file: Path | None = None
    method: str = "pretrain"
    beta: float = 0.0  # dpo
    eval_batches: int = 8  # validation micro-batches per val_loss
    passes: int = 1  # optimizer steps per step (PPO: epochs × minibatches)
    minibatches: int = 1  # PPO: a step's rollouts in mini-batches of global_batch_size, one optimizer step each

    def step_metrics(self) -> dict[str, float]:
        """What a step line adds: the rollouts' mean reward since the previous step line (ppo, grpo)."""
        take = getattr(self.train, "step_metrics", None)
        return take() if take else {}

    def metrics(self, engine: Engine) -> dict[str, Any]:
        """What an evaluation adds to val_loss."""
        found: dict[str, Any] = {}
        if self.method in ("reward", "dpo"):
            found.update(pair_metrics(engine, self.val, self.method, self.beta))
        if self.method in RL_METHODS:
            found.update(rollout_metrics(engine, self.val))
        if self.held_out:
            found["task_accuracy"] = task_accuracy(engine, self.held_out[:ACCURACY_PROMPTS], self.tokenizer_file)
        return found


def objective(job, engine: Engine) -> Objective:
    tr, post = job.spec.training, job.spec.post_training
    if post is None:
        return Objective(*(Batches(job.shards.load(split), tr.seq_len, tr.micro_batch_size, tr.seed, split)
                           for split in ("train", "val")))
    data = job.run_dir / "data"
    answers = data / "held_out.json"
    held_out = json.loads(answers.read_text()) if answers.is_file() else []
    if post.method in RL_METHODS:
        reward = verifier_reward if post.reward_model is None else \
            RewardModel(post.reward_model, engine.device, engine.frozen)
        train, val = (rollout_source(job, engine, json.loads((data / f"{split}.json").read_text()), reward)
                      for split in ("train", "val"))
        minibatches = post.rollouts_per_step // tr.global_batch_size
        return Objective(train, val, eval_at_start=True, held_out=held_out, tokenizer_file=job.tokenizer_file,
                         method=post.method, eval_batches=max(1, train.per_rank // tr.micro_batch_size),
                         passes=post.epochs * minibatches, minibatches=minibatches)
    if post.method in PAIRWISE:
        batches = [PairBatches(load_examples(data / f"{split}.json"), tr.seq_len, tr.micro_batch_size, tr.seed,
                               split) for split in ("train", "val")]
        if post.reference == "precomputed":  # the start scores every pair once; no reference is held after
            start = initial_model(job)
            for pairs in batches:
                pairs.reference = precompute_reference(start, pairs, engine.device)
            del start
    else:
        batches = [ExampleBatches(load_examples(data / f"{split}.json"), tr.seq_len, tr.micro_batch_size, tr.seed,
                                  split, post.loss_on) for split in ("train", "val")]
    return Objective(*batches, eval_at_start=True, held_out=held_out, tokenizer_file=job.tokenizer_file,
                     method=post.method, beta=post.beta)


def rollout_source(job, engine: Engine, records: list[dict[str, str]], reward: Reward) -> RolloutBatches:
    """GRPO's or PPO's rollouts of ``records``' prompts."""
    from tokenizers import Tokenizer

    tokenizer, template = Tokenizer.from_file(str(job.tokenizer_file)), ChatTemplate.beside(job.tokenizer_file)
    dp = job.spec.parallelism.data_parallel
    if job.spec.post_training.method == "ppo":
        return PPORollouts(engine.model, engine.loss.reference, records, tokenizer, template, job.spec, dp, reward)
    return RolloutBatches(engine.model, records, tokenizer, template, job.spec, dp, reward)


@torch.no_grad()
def pair_metrics(engine: Engine, pairs: PairBatches, method: str, beta: float) -> dict[str, float]:
    """Held-out preference pairs (the same ones every evaluation): how often the chosen wins, and DPO's margin."""
    held_out = pairs.pairs[:HELD_OUT_PAIRS]
    inputs, targets = pairs.rows([c for c, _ in held_out] + [r for _, r in held_out])
    inputs, targets = inputs.to(engine.device), targets.to(engine.device)
    model = engine.model
    module = compiled(model)
    if method == "reward":
        chosen, rejected = sequence_scores(model(inputs)[0], targets).float().chunk(2)
        return {"reward_accuracy": (chosen > rejected).float().mean().item()}
    policy = module.sequence_logprobs(model(inputs)[0], targets)
    if pairs.reference is not None:  # precomputed: the held-out pairs' (chosen, rejected) scores of the start
        reference = pairs.reference_rows(slice(HELD_OUT_PAIRS)).to(policy.device)
    else:
        reference = engine.loss.reference.logprobs(inputs, targets)
    margin = beta * (policy - reference)
    chosen, rejected = margin.chunk(2)
    return {"preference_accuracy": (chosen > rejected).float().mean().item(),
            "reward_margin": (chosen - rejected).mean().item()}


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


@torch.no_grad()
def rollout_metrics(engine: Engine, rollouts: RolloutBatches) -> dict[str, float]:
    """On held-out prompts, EVAL_SAMPLES sampled responses each (the same seed every evaluation): their mean reward
    (the verifier's or the reward model's), and the policy's mean per-token KL (k3) to the reference on them."""
    generator = torch.Generator().manual_seed(rollouts.seed)
    inputs, targets, rewards = rollouts.scored(rollouts.records[:ACCURACY_PROMPTS], EVAL_SAMPLES, generator)
    inputs, targets = inputs.to(engine.device), targets.to(engine.device)
    policy = policy_of(engine.model)
    module = compiled(policy)
    logprobs = module.token_logprobs(policy(inputs)[0], targets)
    reference = module.token_logprobs(engine.loss.reference.logits(inputs), targets)
    kl = module.masked_mean(module.kl_k3(logprobs, reference), (targets != IGNORE).float()).item()
    return {"reward_mean": rewards.mean().item(), "kl": kl}
