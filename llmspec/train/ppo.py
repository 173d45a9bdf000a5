"""PPO for language models (Schulman et al. 2017; as RLHF runs it: Ziegler et al. 2019, Ouyang et al. 2022, and
TRL's PPOTrainer), as steps on the one loop.

Every step generates a batch of rollouts (``rollouts_per_step`` prompts, one sampled response each) and scores it,
without gradients, by the models as they are then:
- the policy's log-probability of each response token (the "old" policy of the ratio) and the critic's value
  before each token;
- the reference's log-probabilities; each token's reward is −kl_coef · KL (k1 = log π − log π_ref, or k3), and
  the last response token adds the score (a verifier's 0/1 or a trained reward model's score);
- advantages by GAE(γ, λ) over the response tokens, whitened over the batch; returns = advantages + values.
The loop then runs ``epochs`` optimizer steps over that batch (the planner's step: generation, scoring, ``epochs``
passes), each the clipped policy loss plus ``value_coef`` × the clipped value loss (model.py's ``ppo_loss``). The
critic is the policy's base under a value head, trained as the policy is (``spec.loading.value_model_spec``). The
policy and the critic train as one module under one optimizer (``PolicyAndCritic``; TRL does the same), so the
engines, checkpoints and resume need nothing of their own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmspec.data.instructions import IGNORE
from llmspec.train.logprobs import compiled, last_positions
from llmspec.train.rollouts import RolloutBatches

WHITEN_EPS = 1e-8


class PolicyAndCritic(nn.Module):
    """The two models PPO trains, as one module: ``forward`` returns the policy's logits and the critic's values
    (one per position: the value of the state before the next token)."""

    def __init__(self, policy: nn.Module, critic: nn.Module):
        super().__init__()
        self.policy, self.critic = policy, critic

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.policy(idx)[0], self.critic(idx)[0]


def policy_of(module: nn.Module) -> nn.Module:
    """The language model a trained module generates with: the policy of PPO's pair, else the module itself."""
    return module.policy if isinstance(module, PolicyAndCritic) else module


def split_states(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A trained module's state dict (the torch engine's, or DeepSpeed's consolidated one) → checkpoint entries:
    ``model`` is always the policy (what generate, export-hf and init_from read); PPO's critic is saved beside it."""
    if not any(key.startswith("policy.") for key in state):
        return {"model": state}
    return {role: {key.removeprefix(f"{prefix}."): value for key, value in state.items()
                   if key.startswith(f"{prefix}.")} for role, prefix in (("model", "policy"), ("critic", "critic"))}


def load_trained_states(module: nn.Module, state: dict) -> None:
    if isinstance(module, PolicyAndCritic):
        module.policy.load_state_dict(state["model"])
        module.critic.load_state_dict(state["critic"])
    else:
        module.load_state_dict(state["model"])


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each row's response positions (``mask``, one
    contiguous run per row): δ_t = r_t + γ V_{t+1} − V_t, A_t = δ_t + γλ A_{t+1}, with V and A zero after the
    last response token. Returns (advantages, returns = advantages + values), zero outside the response."""
    mask = mask.float()
    following = F.pad(mask[:, 1:], (0, 1))  # whether a response token follows position t
    deltas = rewards + gamma * F.pad(values[:, 1:], (0, 1)) * following - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = deltas[:, t] + gamma * lam * running * following[:, t]
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the masked positions (zero elsewhere)."""
    mask = mask.float()
    count = mask.sum().clamp(min=1)
    mean = (values * mask).sum() / count
    variance = (((values - mean) * mask) ** 2).sum() / count
    return (values - mean) * torch.rsqrt(variance + WHITEN_EPS) * mask


def token_kl(policy: torch.Tensor, reference: torch.Tensor, estimator: str, module) -> torch.Tensor:
    """Per-token KL(π ‖ π_ref) from the sampled tokens' log-probabilities: k1 = log π − log π_ref (InstructGPT,
    TRL), or k3 (unbiased and ≥ 0; ``module``: the compiled model.py)."""
    return policy - reference if estimator == "k1" else module.kl_k3(policy, reference)


class PPORollouts(RolloutBatches):
    """PPO's batch source: rollouts (one response per prompt), scored by the policy, critic and reference as they
    are when generated. A micro-batch is (inputs, targets, old log-probs, old values, advantages, returns)."""

    def __init__(self, trained: PolicyAndCritic, reference, records, tokenizer, template, spec, dp: int, reward):
        super().__init__(trained.policy, records, tokenizer, template, spec, dp, reward, group=1)
        post = spec.post_training
        self.trained, self.reference, self.post = trained, reference, post

    @torch.no_grad()
    def finish(self, inputs: torch.Tensor, targets: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, ...]:
        post = self.post
        device = next(self.trained.parameters()).device
        was_training = self.trained.training
        self.trained.eval()  # the old policy and values as sampled: no dropout
        try:
            logits, values = self.trained(inputs.to(device))
            reference = self.reference.logits(inputs.to(device))
        finally:
            self.trained.train(was_training)
        targets = targets.to(device)
        mask = targets != IGNORE
        module = compiled(self.trained.policy)
        old_logprobs = module.token_logprobs(logits, targets)
        values = values.float() * mask
        rewards = -post.kl_coef * token_kl(old_logprobs, module.token_logprobs(reference, targets),
                                           post.kl_estimator, module)
        rewards = rewards * mask
        rows = torch.arange(len(targets), device=device)
        rewards[rows, last_positions(targets)] += scores.to(device).float()
        advantages, returns = gae(rewards, values, mask, post.gamma, post.lam)
        return tuple(t.cpu() for t in (inputs, targets, old_logprobs, values, whiten(advantages, mask), returns))
