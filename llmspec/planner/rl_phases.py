"""A PPO or GRPO step by phase: generation, scoring, training — per-GPU memory and seconds of each, and the peak.

A step of an RL run is one batch of ``post_training.rollouts_per_step`` sequences (prompt + response), split over
the data-parallel GPUs. Every model stays resident for the whole step, as TRL and DeepSpeed-Chat hold them: the
policy (and its reference copy), PPO's critic (trained as the policy is, under a value head) and the reward model
(frozen; PPO's default is the policy's architecture, GRPO's a verifier with no model). Then:

- generation: the policy decodes every rollout (the "Post-training: RL phases" formulas: KV cache, decode reading
  every weight per token, ZeRO-3 gathering the policy whole);
- scoring: no-grad forwards over every rollout token, ``micro_batch_size`` sequences at a time (their logits and
  fp32 log-softmax are the transient): PPO's policy (old log-probs), reference, critic and reward model; GRPO's
  reward model only (one pass per batch: its old policy is the policy itself, and its reference runs in the
  training step, as ``reference_in_step`` counts);
- training: ``epochs`` passes of ``rollouts_per_step / global_batch_size`` optimizer steps — each the training
  formulas' step, so ZeRO, checkpointing and offload apply as for any training run. PPO's policy and critic
  train as one module with one loss (as TRL's), so both models' activations are saved at once.

The peak over the phases is ``memory.peak``; the step's seconds are the phases' sum.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from llmspec.planner import numeric
from llmspec.planner.inputs import RL_FORMULAS, RL_TOTALS
from llmspec.planner.post_inputs import CRITIC, REWARD
from llmspec.spec.schema import Spec

PHASES = ("generation", "scoring", "training")
# each phase's (memory, seconds, FLOPs) per GPU: the formulas ("Post-training: RL step") that give them
PHASE_FORMULAS = {"generation": ("rl_memory_generation", "time_generation", "rl_flops_generation"),
                  "scoring": ("rl_memory_scoring", "rl_time_scoring", "rl_flops_scoring"),
                  "training": ("rl_memory_training", "rl_time_training", "rl_flops_training")}
# what an RL step adds to the policy's env beside formula results (not formulas: named here once)
PHASES_KEY, PEAK_PHASE_KEY, POLICY_KEY, MODELS_KEY = "rl_phases", "rl_peak_phase", "rl_policy", "rl_models"
# the critic's results the step's formulas read (as inputs critic_<name>)
CRITIC_RESULTS = tuple(sorted(name.removeprefix("critic_") for name in numeric.INPUTS if name.startswith("critic_")))
REWARD_RESULTS = tuple(sorted(name.removeprefix("reward_") for name in numeric.INPUTS
                              if name.startswith("reward_") and name != "reward_model"))


def step_inputs(spec: Spec, policy: dict[str, Any], critic: dict[str, Any] | None,
                reward: dict[str, Any] | None, hbm_bandwidth: float) -> dict[str, Any]:
    """The RL step formulas' inputs: the policy's evaluated training step, the rollouts, and the other models'
    results (zeros where the method has no such model)."""
    post, dp = spec.post_training, spec.parallelism.data_parallel
    assert post is not None and post.generates
    return {**policy, "rollouts_per_step": post.rollouts_per_step,
            "rollouts_per_gpu": Fraction(post.rollouts_per_step, dp), "prompt_len": post.prompt_len,
            "response_len": post.response_len, "epochs": post.epochs, "hbm_bandwidth": hbm_bandwidth,
            "trains_critic": int(critic is not None), "reward_model": int(reward is not None),
            # a reference outside the step runs in scoring, beside the policy's old log-probabilities
            "score_policy": int(not post.reference_in_step),
            **{f"critic_{name}": 0 if critic is None else critic[name] for name in CRITIC_RESULTS},
            **{f"reward_{name}": 0 if reward is None else reward[name] for name in REWARD_RESULTS}}


def step(spec: Spec, policy: dict[str, Any], critic: dict[str, Any] | None, reward: dict[str, Any] | None,
         hbm_bandwidth: float) -> dict[str, Any]:
    """The policy's env with the step's memory, FLOPs and time (the RL step formulas' rl_X) in place of the
    training step's X, and the phases added.

    ``policy`` and ``critic`` are the training formulas evaluated for each trained model, ``reward`` the frozen
    reward model's parameters and forward (FORWARD_FORMULAS); critic and reward are None where the method has
    none."""
    env = numeric.evaluate(step_inputs(spec, policy, critic, reward, hbm_bandwidth), RL_FORMULAS)
    env.update({name: env[rl_name] for name, rl_name in RL_TOTALS.items()})
    phases = {name: dict(zip(("memory", "seconds", "flops"), (env[f] for f in formulas), strict=True))
              for name, formulas in PHASE_FORMULAS.items()}
    env.update({
        PHASES_KEY: phases,
        # the first of equal phases, in the order they run (as rl_memory_activations and rl_memory_buffers pick)
        PEAK_PHASE_KEY: max(PHASES, key=lambda name: phases[name]["memory"]),
        POLICY_KEY: policy, MODELS_KEY: {CRITIC: critic, REWARD: reward},
    })
    return env
