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
from llmspec.planner.inputs import RL_FORMULAS
from llmspec.spec.schema import Spec

PHASES = ("generation", "scoring", "training")
# what an RL step adds to the policy's env beside formula results (not formulas: named here once)
PHASES_KEY, PEAK_PHASE_KEY, POLICY_KEY, MODELS_KEY = "rl_phases", "rl_peak_phase", "rl_policy", "rl_models"


def step(spec: Spec, policy: dict[str, Any], critic: dict[str, Any] | None, reward: dict[str, Any] | None,
         hbm_bandwidth: float) -> dict[str, Any]:
    """The policy's env with the step's memory, FLOPs and time replaced by the RL step's, and ``phases`` added.

    ``policy`` and ``critic`` are the training formulas evaluated for each trained model, ``reward`` the frozen
    reward model's parameters and forward (FORWARD_FORMULAS); critic and reward are None where the method has
    none."""
    post, tr, dp = spec.post_training, spec.training, spec.parallelism.data_parallel
    assert post is not None and post.rollouts_per_step is not None and post.epochs is not None
    env = numeric.evaluate({**policy, "rollouts_per_gpu": Fraction(post.rollouts_per_step, dp),
                            "prompt_len": post.prompt_len, "response_len": post.response_len,
                            "hbm_bandwidth": hbm_bandwidth}, RL_FORMULAS)
    trained = [m for m in (policy, critic) if m is not None]
    # a frozen model is replicated under ZeRO 0-2 and partitioned under ZeRO-3, like the policy's frozen base
    held = 1 + policy["zero3"] * (dp - 1)
    reward_bytes = Fraction(0) if reward is None else (
        reward["bytes_base_stored"] + reward["h"] * reward["w_frozen"]) / held
    states = {kind: sum(m[f"memory_{kind}"] for m in trained) for kind in ("weights", "gradients", "optimizer",
                                                                           "gathered", "frozen")}
    states["frozen"] += reward_bytes
    resident = sum(m["memory_model_states"] for m in trained) + reward_bytes

    tokens_per_gpu = Fraction(post.rollouts_per_step, dp) * policy["s"]
    rate = policy["F_peak"] * policy["eff"]
    forwards = [m["flops_per_token_forward"] for m in (critic, reward) if m is not None]
    if post.method == "ppo":
        forwards += [policy["flops_per_token_forward"], policy["flops_reference_per_token"]]
    scoring_flops = tokens_per_gpu * sum(forwards)
    # micro-batches of no-grad forwards: an LM's logits and their fp32 log-softmax are the largest transient
    scoring_buffer = tr.micro_batch_size * policy["s"] * policy["V"] * (policy["e"] + 4)

    optimizer_steps = Fraction(post.rollouts_per_step, tr.global_batch_size) * post.epochs
    training_seconds = optimizer_steps * sum(m["time_step"] for m in trained)
    activations = sum(m["memory_activations"] for m in trained)
    buffers = max(m["memory_buffers"] for m in trained)
    generation_flops = env["rl_prefill_flops"] + env["rl_decode_flops"]
    training_flops = optimizer_steps * sum(m["flops_per_step"] for m in trained) / dp
    # (memory, seconds, activations, buffers, FLOPs), per GPU
    phases = {
        "generation": (resident + env["rl_generation_buffers"], env["time_generation"], 0,
                       env["rl_generation_buffers"], generation_flops),
        "scoring": (resident + scoring_buffer, scoring_flops / rate, 0, scoring_buffer, scoring_flops),
        "training": (resident + activations + buffers, training_seconds, activations, buffers, training_flops),
    }
    peak_phase = max(PHASES, key=lambda name: phases[name][0])
    seconds = sum(phases[name][1] for name in PHASES)
    flops = dp * sum(phases[name][4] for name in PHASES)
    hardware = flops + optimizer_steps * sum(
        (m["flops_per_token_hardware"] - m["flops_per_token_train"]) * m["B"] * m["s"] for m in trained)
    n_gpu, steps = policy["n_gpu"], policy["steps"]
    env.update({f"memory_{kind}": value for kind, value in states.items()})
    env.update({
        "memory_model_states": int(resident), "memory_activations": phases[peak_phase][2],
        "memory_buffers": phases[peak_phase][3], "memory_peak": phases[peak_phase][0],
        "flops_per_step": flops, "flops_total": flops * steps,
        "time_step": seconds, "tokens_per_second": post.rollouts_per_step * policy["s"] / seconds,
        "time_total": steps * seconds, "gpu_hours": steps * seconds * n_gpu / 3600,
        "mfu": flops / (seconds * n_gpu * policy["F_peak"]),
        "hfu": hardware / (seconds * n_gpu * policy["F_peak"]),
        PHASES_KEY: {name: {"memory": phases[name][0], "seconds": phases[name][1], "flops": phases[name][4]}
                     for name in PHASES},
        PEAK_PHASE_KEY: peak_phase, POLICY_KEY: policy,
        MODELS_KEY: {"critic": critic, "reward": reward, "reward_bytes": reward_bytes},
    })
    env["cost"] = env["gpu_hours"] * policy["price"]
    return env
