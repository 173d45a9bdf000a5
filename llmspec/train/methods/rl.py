"""What the methods that generate their batches (ppo, grpo) share: prompt records, rewarded by the verifier
(prompts with answers) or by a trained reward model's run of the same tokenizer; one batch of rollouts per step
(``llmspec.train.rollouts``), ``epochs`` passes over it; evaluations add ``reward_mean`` and ``kl`` on held-out
prompts and ``task_accuracy``; step lines add ``rollout_reward``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from llmspec.data.chat import ChatTemplate
from llmspec.data.instructions import IGNORE, read_records
from llmspec.errors import LLMSpecError
from llmspec.planner.inputs import sequence_length
from llmspec.spec.schema import Spec
from llmspec.train.engine import Engine
from llmspec.train.logprobs import compiled
from llmspec.train.methods.base import PostTrainingMethod
from llmspec.train.objectives import ACCURACY_PROMPTS, Objective
from llmspec.train.ppo import policy_of
from llmspec.train.rollouts import Reward, RewardModel, RolloutBatches, verifier_reward

EVAL_SAMPLES = 4  # sampled responses per held-out prompt for reward_mean and kl


class RL(PostTrainingMethod):
    token_cross_entropy = False  # its val_loss is the method's loss: no perplexity

    def check_runnable(self) -> None:
        post, tr = self.post, self.spec.training
        if post.rollouts_per_step % tr.global_batch_size:
            raise LLMSpecError(f"post_training.rollouts_per_step {post.rollouts_per_step}: ppo trains on mini-batches "
                               f"of training.global_batch_size {tr.global_batch_size}; make it a multiple")
        if post.reward_model is not None:
            check_reward_run(Path(post.reward_model).expanduser(), self.spec)

    def read_records(self, path: Path) -> list[dict[str, str]]:
        # the verifier needs every prompt's answer
        return read_records(path, prompts=True, answers=self.post.reward_model is None)

    def held_out(self, val: list[dict[str, str]], builtin: bool) -> list[dict[str, str]]:
        """Held-out prompts with answers (a prompt set may have none, under a reward model)."""
        return super().held_out(val, builtin) if builtin else [r for r in val if "answer" in r]

    def data_files(self, train: list[dict], val: list[dict], held_out: list[dict], tokenizer, template: ChatTemplate,
                   source: str, data: Path) -> dict[str, list]:
        """Prompts (and answers): the rollouts are generated as it trains."""
        def prompt(record: dict) -> dict:
            return {key: record[key] for key in ("prompt", "answer", "messages") if key in record}
        return {"train.json": [prompt(r) for r in train], "val.json": [prompt(r) for r in val],
                "held_out.json": [prompt(r) for r in held_out]}

    def rollouts(self, engine: Engine, records: list[dict[str, str]], tokenizer, template: ChatTemplate,
                 reward: Reward) -> RolloutBatches:
        """The batch source of ``records``' prompts."""
        raise NotImplementedError

    def objective(self, job, engine: Engine) -> Objective:
        from tokenizers import Tokenizer

        post, tr, data = self.post, self.spec.training, job.run_dir / "data"
        reward = verifier_reward if post.reward_model is None else \
            RewardModel(post.reward_model, engine.device, engine.frozen)
        tokenizer, template = Tokenizer.from_file(str(job.tokenizer_file)), ChatTemplate.beside(job.tokenizer_file)
        train, val = (self.rollouts(engine, json.loads((data / f"{split}.json").read_text()), tokenizer, template,
                                    reward) for split in ("train", "val"))
        minibatches = post.rollouts_per_step // tr.global_batch_size
        return Objective(train, val, eval_at_start=True, held_out=self.held_out_records(job),
                         tokenizer_file=job.tokenizer_file, eval_batches=max(1, train.per_rank // tr.micro_batch_size),
                         passes=post.epochs * minibatches, minibatches=minibatches)

    def metrics(self, engine: Engine, objective: Objective) -> dict[str, Any]:
        return {**rollout_metrics(engine, objective.val), **super().metrics(engine, objective)}

    def tokens_per_step(self) -> int:
        """A step trains on its rollouts (prompt + response), as the planner counts them."""
        return self.post.rollouts_per_step * sequence_length(self.spec)


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


def same_tokenizer(label: str, theirs: Path | None, spec: Spec) -> None:
    """A model beside the policy (reward model, critic) must read the policy's token ids."""
    init = spec.training.init_from
    ours = Path(init).expanduser() / "tokenizer.json" if init else None
    if ours is not None and ours.is_file() and theirs is not None and theirs.is_file() and \
            theirs.read_bytes() != ours.read_bytes():
        raise LLMSpecError(f"{label}: its tokenizer differs from training.init_from's; it must read the policy's "
                           "token ids")


def check_reward_run(run_dir: Path, spec: Spec) -> None:
    """To run, ``reward_model`` names a trained reward model's run directory whose tokenizer is the policy's."""
    from llmspec.spec.loading import named_specs, parse_spec
    from llmspec.train.checkpoint import latest_checkpoint

    label = f"post_training.reward_model {run_dir}"
    hint = f" (train it first: `llmspec run {run_dir.name}`)" if run_dir.name in named_specs() else ""
    if not (run_dir / "spec.yaml").is_file() or latest_checkpoint(run_dir / "checkpoints") is None:
        raise LLMSpecError(f"{label}: not a run directory with a checkpoint{hint}; to run, name a trained reward "
                           "model's run")
    saved = parse_spec((run_dir / "spec.yaml").read_text(), source=str(run_dir / "spec.yaml"))
    if saved.post_training is None or not saved.post_training.value_model:
        raise LLMSpecError(f"{label}: that run is not a reward model (post_training.method reward)")
    same_tokenizer(label, run_dir / "tokenizer.json", spec)
