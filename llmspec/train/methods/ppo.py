"""PPO (``llmspec.train.ppo``: rollouts scored by the policy, critic and reference, GAE, the clipped policy and
value losses): the policy and its critic train as one module (``PolicyAndCritic``). The critic starts from the
policy's base under a new value head, or from the weights ``post_training.critic_model`` names (InstructGPT starts
it from the reward model)."""

from __future__ import annotations

from pathlib import Path

import torch

from llmspec.data.chat import ChatTemplate
from llmspec.errors import LLMSpecError
from llmspec.spec.loading import value_model_spec
from llmspec.spec.schema import Spec
from llmspec.train.engine import Engine
from llmspec.train.init_from import (
    InitSource,
    added_tensor,
    check_shapes,
    expected_shapes,
    initial_model,
    load_initial_weights,
    resolve,
    tensor_shapes,
)
from llmspec.train.logprobs import compiled
from llmspec.train.losses import Loss, Reference
from llmspec.train.methods.rl import RL, same_tokenizer
from llmspec.train.ppo import PolicyAndCritic, PPORollouts
from llmspec.train.rollouts import Reward, RolloutBatches


class PPOLoss(Loss):
    """The clipped policy loss plus ``value_coef`` × the clipped value loss on scored rollouts (model.py's
    ``ppo_loss``); the reference scores the rollouts when they are generated (``PPORollouts``)."""

    def __init__(self, post, model: PolicyAndCritic):
        self.post, self.module = post, compiled(model.policy)
        self.reference = Reference(post.reference, model.policy)

    def __call__(self, forward, inputs: torch.Tensor, targets: torch.Tensor, old_logprobs: torch.Tensor,
                 old_values: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
        post = self.post
        logits, values = forward(inputs)
        return self.module.ppo_loss(logits, values, targets, old_logprobs, old_values, advantages, returns, post.clip,
                                    post.value_clip, post.value_coef)


class PPO(RL):
    name = "ppo"

    def check_runnable(self) -> None:
        if self.post.critic_model is not None:  # the weights it names, read by the policy's token ids
            source = critic_source(self.spec)
            same_tokenizer(f"post_training.critic_model {self.post.critic_model}", source.tokenizer, self.spec)
        super().check_runnable()

    def model(self, job, module=None) -> torch.nn.Module:
        return with_critic(job, initial_model(job, module))

    def loss(self, model: torch.nn.Module) -> Loss:
        return PPOLoss(self.post, model)

    def rollouts(self, engine: Engine, records: list[dict[str, str]], tokenizer, template: ChatTemplate,
                 reward: Reward) -> RolloutBatches:
        return PPORollouts(engine.model, engine.loss.reference, records, tokenizer, template, self.spec,
                           self.spec.parallelism.data_parallel, reward)


def critic_source(spec: Spec) -> InitSource:
    """The weights ``post_training.critic_model`` names for PPO's critic, checked against its architecture: a
    base (its LM head left out) or a fully trained reward model (its value head kept). A spec names an
    architecture only: enough to plan, not to run."""
    label = f"post_training.critic_model {spec.post_training.critic_model}"
    path = Path(spec.post_training.critic_model).expanduser()
    if not path.is_dir() and not path.is_file():
        raise LLMSpecError(f"{label}: names an architecture, not weights; to run, name a run directory or an "
                           "import-hf output for the critic to start from (a trained reward model, as InstructGPT "
                           "starts it), or leave it unset (the policy's base under a new value head)")
    source = resolve(path, "post_training.critic_model")
    found = tensor_shapes(source.weights, "post_training.critic_model")
    if any(added_tensor(name) and "value_head" not in name for name in found):
        raise LLMSpecError(f"{label}: holds adapters, not a whole model; name a fully trained run (or export-hf "
                           "the adapted one, merged)")
    expected = expected_shapes(value_model_spec(spec))  # the critic's base: its architecture, no value head
    expected.update({name: shape for name, shape in found.items() if name.startswith("value_head.")})
    for name in [n for n in expected if n.startswith("lm_head.") and n not in found]:
        del expected[name]  # a reward model's run: no LM head
    check_shapes(source, expected, "post_training.critic_model", found)
    return source


def with_critic(job, policy: torch.nn.Module) -> PolicyAndCritic:
    """The policy and its critic: by default the policy's base under a new value head (a small reward model's
    scores before the last token are noise, and so were the first advantages: on the tiny chain the policy lost
    accuracy before the critic caught up); with ``post_training.critic_model``, the weights it names (InstructGPT
    starts the critic from the reward model)."""
    from llmspec.compile.loading import model_module

    critic = model_module(value_model_spec(job.spec)).Model()
    weights = job.init_weights
    if job.spec.post_training.critic_model is not None:
        weights = critic_source(job.spec).weights
    if weights is not None:
        load_initial_weights(critic, weights)
    return PolicyAndCritic(policy, critic)
