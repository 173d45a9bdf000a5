"""PPO and GRPO planned by phase (llmspec/planner/rl_phases.py): every model a step holds, generation bound by
memory bandwidth with the KV cache the serving plan counts, scoring's forwards, training as the training
formulas' steps, and the peak over the phases."""

from __future__ import annotations

from fractions import Fraction

import pytest

from llmspec.errors import SpecError
from llmspec.planner.explain import explain
from llmspec.planner.inference import inference_plan
from llmspec.planner.training import plan
from llmspec.spec.loading import load_spec

PPO = "post_training.method=ppo"


def _plan(name: str, *sets: str):
    return plan(load_spec(name, sets=list(sets)), alternatives=False)


def test_a_ppo_step_holds_policy_reference_critic_and_reward():
    result = _plan("llama2-7b-ppo")
    roles = {m["role"]: m for m in result.models}
    assert list(roles) == ["policy", "reference", "critic", "reward"]
    mo = result.spec.model
    # the critic and the reward model are the policy's architecture with a scalar value head for the LM head
    value_model = roles["policy"]["params"] - mo.vocab_size * mo.d_model + mo.d_model
    assert roles["critic"]["params"] == roles["reward"]["params"] == value_model
    assert roles["critic"]["trainable"] == value_model and roles["reward"]["trainable"] == 0
    # ZeRO-3 partitions the frozen reward model over the 8 GPUs: 16-bit weights / 8
    assert roles["reward"]["bytes_per_gpu"] == -(-value_model * 2 // 8)
    assert result.memory["model_states"] == pytest.approx(
        sum(m["bytes_per_gpu"] for m in roles.values()) + result.memory["gathered"], abs=8)


def test_grpo_has_no_critic_and_no_reward_model_unless_named():
    assert [m["role"] for m in _plan("tiny", "post_training.method=grpo", "post_training.group_size=4").models] \
        == ["policy", "reference"]
    lora = _plan("tiny", "post_training.method=grpo", "post_training.group_size=4", "post_training.adapter.type=lora",
                 "post_training.reward_model=tiny-gpt2")
    roles = {m["role"]: m for m in lora.models}
    assert list(roles) == ["policy", "reward"]  # the reference is the base with the adapter off
    gpt2 = _plan("tiny-gpt2")
    assert roles["reward"]["params"] == gpt2.params["total"] - gpt2.spec.model.d_model * (
        gpt2.spec.model.vocab_size * (not gpt2.spec.model.tie_embeddings) - 1)


def test_generation_kv_cache_is_the_serving_plans_and_decode_is_bandwidth_bound():
    result = _plan("llama2-7b-ppo")
    post, env = result.spec.post_training, result.env
    rollouts_per_gpu = post.rollouts_per_step // result.spec.parallelism.data_parallel
    length = post.prompt_len + post.response_len
    served = inference_plan(load_spec("llama2-7b"), context=length, batch=rollouts_per_gpu)
    assert env["rl_kv_cache"] == served["kv_cache"]
    # a 7B decode reads 13.5 GB per token: memory-bound, so decode time is bytes over HBM bandwidth
    decode = env["rl_decode_bytes"] / result.spec.cluster.device.hbm_bandwidth
    assert env["rl_decode_bytes"] > post.response_len * 2 * result.params["total"]
    prefill = env["rl_prefill_flops"] / (env["F_peak"] * env["eff"])
    assert env["time_generation"] == pytest.approx(prefill + decode + env["rl_gathered_policy"] / env["bw_dp"])
    assert env["rl_gathered_policy"] == Fraction(7, 8) * env["bytes_policy"]  # ZeRO-3 gathers the rest


def test_phases_sum_to_the_step_and_the_peak_is_their_maximum():
    for name, sets in (("llama2-7b-ppo", []), ("tiny", [PPO, "post_training.adapter.type=lora"])):
        result = _plan(name, *sets)
        phases = result.phases
        assert list(phases) == ["generation", "scoring", "training"]
        assert result.time["step_seconds"] == pytest.approx(sum(p["seconds"] for p in phases.values()))
        assert result.memory["peak"] == max(p["memory"] for p in phases.values())
        assert result.to_json()["phases"] == phases


def test_training_phase_is_epochs_of_policy_and_critic_steps():
    result = _plan("tiny", PPO, "post_training.epochs=3", "post_training.rollouts_per_step=64")
    post, tr = result.spec.post_training, result.spec.training
    # the policy's optimizer step is an SFT step on rollout-length sequences (no reference forward in training)
    sft = _plan("tiny", f"training.seq_len={post.prompt_len + post.response_len}")
    policy_step = result.env["rl_policy"]["time_step"]
    assert policy_step == pytest.approx(sft.time["step_seconds"])
    optimizer_steps = Fraction(post.rollouts_per_step, tr.global_batch_size) * 3
    critic_step = result.phases["training"]["seconds"] / optimizer_steps - policy_step
    # the same blocks and the same training, a value head (h weights) for the LM head (V × h): forward and backward
    env = result.env["rl_policy"]
    head = 6 * (env["V"] * env["h"] - env["h"]) * env["B"] * env["s"]
    assert critic_step == pytest.approx(policy_step - head / (env["n_gpu"] * env["F_peak"] * env["eff"]))


def test_ppo_scoring_runs_policy_reference_critic_and_reward_forwards_over_every_rollout_token():
    for reward, models in (([], 3), (["post_training.reward_model=tiny"], 4)):  # the verifier: no model
        result = _plan("tiny", PPO, *reward)
        post, env = result.spec.post_training, result.env["rl_policy"]
        tokens = post.rollouts_per_step * (post.prompt_len + post.response_len)
        head = 2 * env["V"] * env["h"] - 2 * env["h"]  # a value head instead of the LM head
        forwards = 2 * env["flops_per_token_forward"] + (models - 2) * (env["flops_per_token_forward"] - head)
        assert env["flops_reference_per_token"] == env["flops_per_token_forward"]  # a copy of the start
        assert result.phases["scoring"]["flops"] == tokens * forwards
        assert result.phases["scoring"]["seconds"] == pytest.approx(tokens * forwards / (env["F_peak"] * env["eff"]))


def test_grpo_runs_its_reference_in_the_training_step_and_scores_with_the_verifier_alone():
    grpo = ["post_training.method=grpo", "post_training.group_size=4"]
    result = _plan("tiny", *grpo)
    env = result.env["rl_policy"]
    assert result.phases["scoring"]["flops"] == 0 and result.phases["scoring"]["seconds"] == 0
    assert env["flops_per_token_train"] == 3 * env["flops_per_token_forward"] + env["flops_reference_per_token"]
    ppo = _plan("tiny", PPO).env["rl_policy"]
    assert ppo["flops_per_token_train"] == 3 * ppo["flops_per_token_forward"]  # PPO's reference runs in scoring


def test_an_auxiliary_model_that_cannot_be_found_names_the_field():
    with pytest.raises(SpecError, match=r"post_training\.critic_model: nope"):
        _plan("tiny", PPO, "post_training.critic_model=nope")


def test_every_strategy_row_of_an_rl_plan_is_the_rl_step():
    result = plan(load_spec("llama2-7b-ppo"))
    chosen = next(a for a in result.alternatives if a.chosen)
    assert chosen.memory["peak"] == result.memory["peak"]
    assert chosen.step_seconds == result.time["step_seconds"]


def test_the_steps_utilisation_and_cost_are_its_own_flops_seconds_and_hours():
    result = _plan("llama2-7b-ppo")
    t, env = result.time, result.env
    gpus = result.spec.cluster.gpus
    assert t["mfu"] == pytest.approx(result.flops["per_step"] / (t["step_seconds"] * gpus * env["F_peak"]))
    assert t["cost"] == pytest.approx(t["step_seconds"] * result.spec.training.steps * gpus / 3600 * env["price"])
    # the policy's training step alone would report other figures: the step's are not the policy's
    assert t["mfu"] != env["rl_policy"]["mfu"] and t["step_seconds"] != env["rl_policy"]["time_step"]


def test_explain_shows_the_rl_steps_formula_for_what_the_plan_reports():
    result = _plan("tiny", PPO)
    for quantity, reported in (("mfu", result.time["mfu"]), ("memory_peak", result.memory["peak"]),
                               ("cost", result.time["cost"]), ("time_step", result.time["step_seconds"])):
        (item,) = explain(result, quantity)
        assert (item.name, item.group) == (f"rl_{quantity}", "Post-training: RL step")
        assert item.value == pytest.approx(reported, abs=1)
    # what the step does not replace is the policy's training step, with the policy's inputs
    (compute,) = explain(result, "time_matmul")
    assert compute.value == result.env["rl_policy"]["time_matmul"]
    assert compute.inputs["B"] == result.env["rl_policy"]["B"]
