"""PPO (llmspec/train/ppo.py): GAE, the clipped policy and value losses against their formulas by hand, rollouts
scored as sampled, the refusals, and a killed PPO run resuming bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import LORA, killed_and_resumed
from tokenizers import Tokenizer

from llmspec.compile.loading import model_module, objectives_module
from llmspec.data.chat import DEFAULT_TEMPLATE
from llmspec.data.instructions import IGNORE
from llmspec.errors import LLMSpecError
from llmspec.runner import run
from llmspec.spec.loading import dump_spec, load_spec, value_model_spec
from llmspec.train.checkpoint import latest_checkpoint, load_checkpoint
from llmspec.train.init_from import load_initial_weights
from llmspec.train.losses import Reference
from llmspec.train.metrics import read_metrics
from llmspec.train.ppo import PolicyAndCritic, PPORollouts, gae, whiten
from llmspec.train.rollouts import verifier_reward

VERIFIED = ["post_training.reward_model=null"]
PPO = objectives_module(model_module(load_spec("tiny-ppo")))  # the generated objectives.py
token_logprobs, ppo_loss = PPO.token_logprobs, PPO.ppo_loss


def test_gae_is_the_backward_recursion_over_the_response():
    rewards = torch.tensor([[9.0, 0.1, -0.2, 1.0, 7.0]])  # the prompt's and the padding's rewards are ignored
    values = torch.tensor([[5.0, 0.5, 0.4, 0.3, 6.0]])
    mask = torch.tensor([[False, True, True, True, False]])
    gamma, lam = 0.9, 0.8
    d3 = 1.0 - 0.3  # the last response token: nothing follows
    d2 = -0.2 + gamma * 0.3 - 0.4
    d1 = 0.1 + gamma * 0.4 - 0.5
    a3, a2 = d3, d2 + gamma * lam * d3
    a1 = d1 + gamma * lam * a2
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(advantages, torch.tensor([[0.0, a1, a2, a3, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.0, a1 + 0.5, a2 + 0.4, a3 + 0.3, 0.0]]))
    # γ = λ = 1 with a zero critic: every response token's advantage is the reward still to come
    plain, _ = gae(rewards, torch.zeros_like(values), mask, 1.0, 1.0)
    torch.testing.assert_close(plain[0, 1:4], torch.tensor([0.9, 0.8, 1.0]))
    white = whiten(advantages, mask)
    assert white[mask].mean().abs() < 1e-6 and white[~mask].eq(0).all()


def test_ppo_loss_is_the_clipped_policy_and_value_losses_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 5, requires_grad=True)
    targets = torch.tensor([[IGNORE, 2, 4]])
    new = token_logprobs(logits.detach(), targets)
    old = new + torch.tensor([[0.0, 0.5, -0.05]])  # ratio e^-0.5 (clipped for a negative advantage), e^0.05
    advantages = torch.tensor([[0.0, -1.0, 2.0]])
    values = torch.tensor([[0.0, 1.0, 3.0]], requires_grad=True)
    old_values = torch.tensor([[0.0, 0.5, 2.95]])
    returns = torch.tensor([[0.0, 0.0, 3.5]])
    loss = ppo_loss(logits, values, targets, old, old_values, advantages, returns, clip=0.2, value_clip=0.2,
                    value_coef=0.1)
    r1, r2 = torch.exp(torch.tensor(-0.5)), torch.exp(torch.tensor(0.05))
    policy = (max(1.0 * r1, 1.0 * 0.8) + max(-2.0 * r2, -2.0 * r2.clamp(0.8, 1.2))) / 2
    value = (0.5 * max(1.0**2, 0.7**2) + 0.5 * max(0.5**2, (3.0 - 3.5) ** 2)) / 2
    assert loss.item() == pytest.approx(float(policy) + 0.1 * value, rel=1e-5)
    loss.backward()
    # token 1: ratio below 1 − ε with A < 0: the clipped term wins, no policy gradient through it
    assert values.grad[0, 0] == 0 and values.grad[0, 1].item() == pytest.approx(0.1 * (1.0 - 0.0) / 2)


def _ppo_parts(base, *sets):
    spec = load_spec("tiny-ppo", [f"training.init_from={base}", *VERIFIED, "training.global_batch_size=8",
                                  "training.micro_batch_size=4", "post_training.epochs=2", *sets])
    torch.manual_seed(0)  # the critic's new value head
    policy, critic = model_module(spec).Model(), model_module(value_model_spec(spec)).Model()
    for model in (policy, critic):
        load_initial_weights(model, base / "model.safetensors")
    trained = PolicyAndCritic(policy, critic)
    tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
    records = [{"prompt": "Larger: 24 or 10", "answer": "24"}, {"prompt": "First word: list node", "answer": "list"}]
    reference = Reference("copy", policy)
    source = PPORollouts(trained, reference, records, tokenizer, DEFAULT_TEMPLATE, spec, 1, verifier_reward)
    return spec, trained, source


def test_ppo_rollouts_are_scored_as_sampled_once_per_step(base):
    spec, trained, source = _ppo_parts(base)
    first = source.get(step=0, micro=0)
    inputs, targets, old_logprobs, old_values, advantages, returns = first
    assert inputs.shape == (4, spec.post_training.prompt_len + spec.post_training.response_len)
    assert not torch.equal(inputs, source.get(step=0, micro=1)[0])  # the batch's next micro-batch
    assert len(source.rewards) == 1  # generated once for the step's micro-batches
    source.get(step=1, micro=0)
    assert len(source.rewards) == 2  # step 1: the next batch of rollouts
    with torch.no_grad():  # the old log-probs and values are the models' own as they sampled
        logits, values = trained(inputs)
    mask = targets != IGNORE
    torch.testing.assert_close(token_logprobs(logits, targets), old_logprobs)
    torch.testing.assert_close(values * mask, old_values)
    assert advantages[~mask].eq(0).all() and returns[~mask].eq(0).all() and mask.any(dim=1).all()
    again = _ppo_parts(base)[2].get(step=0, micro=0)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # deterministic per (seed, batch)


@pytest.mark.parametrize(("sets", "message"), [
    (["post_training.critic_model=tiny"], "post_training.critic_model tiny: names an architecture, not weights"),
    (["post_training.rollouts_per_step=96"], "rollouts_per_step 96: ppo trains on mini-batches of .* 64"),
    (["post_training.reward_model=tiny-sft"], "post_training.reward_model tiny-sft: not a run directory"),
    (["data.corpus=PROMPTS"], "record 1 has no answer, which the verifier needs"),
])
def test_what_ppo_cannot_run_is_refused_up_front(base, tmp_path, sets, message):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"Say {i}"}) for i in range(10)))
    sets = [s.replace("PROMPTS", str(prompts)) for s in sets]
    spec = load_spec("tiny-ppo", [f"training.init_from={base}", *VERIFIED, *sets])
    with pytest.raises(LLMSpecError, match=message):
        run(spec, tmp_path / "out", announce=lambda *a: None)
    assert not (tmp_path / "out").exists()


def test_a_reward_model_must_be_a_trained_reward_run(base, tmp_path):
    (tmp_path / "sft" / "checkpoints").mkdir(parents=True)
    (tmp_path / "sft" / "spec.yaml").write_text(dump_spec(load_spec("tiny-sft")))
    torch.save({"model": {}}, tmp_path / "sft" / "checkpoints" / "step-00000001.pt")
    spec = load_spec("tiny-ppo", [f"training.init_from={base}", f"post_training.reward_model={tmp_path / 'sft'}"])
    with pytest.raises(LLMSpecError, match="that run is not a reward model"):
        run(spec, tmp_path / "out", announce=lambda *a: None)


@pytest.mark.integration
def test_a_critic_starts_from_the_reward_model_critic_model_names(base, tmp_path):
    """InstructGPT's start for the critic: post_training.critic_model names a trained reward model's run, whose
    weights (value head included) the critic takes; an adapted one is refused, and the run trains."""
    from types import SimpleNamespace

    from llmspec.train.methods.ppo import with_critic

    short = ["training.max_steps=1", "training.eval_interval=1", "training.checkpoint_interval=1",
             "training.global_batch_size=8", "training.micro_batch_size=4"]
    run(load_spec("tiny-reward", [f"training.init_from={base}", *short]), tmp_path / "reward",
        announce=lambda *a: None)
    spec = load_spec("tiny-ppo", [f"training.init_from={base}", *short,
                                  f"post_training.critic_model={tmp_path / 'reward'}"])
    policy = model_module(spec).Model()
    critic = with_critic(SimpleNamespace(spec=spec, init_weights=base / "model.safetensors"), policy).critic
    reward = load_checkpoint(latest_checkpoint(tmp_path / "reward" / "checkpoints"))["model"]
    assert all(torch.equal(tensor, reward[name]) for name, tensor in critic.state_dict().items())
    run(spec, tmp_path / "ppo", announce=lambda *a: None)
    assert [r["step"] for r in read_metrics(tmp_path / "ppo" / "metrics.jsonl") if "reward_mean" in r] == [0, 1]

    run(load_spec("tiny-reward", [f"training.init_from={base}", *short, *LORA]), tmp_path / "lora-reward",
        announce=lambda *a: None)
    with pytest.raises(LLMSpecError, match="critic_model .*lora-reward: holds adapters, not a whole model"):
        run(load_spec("tiny-ppo", [f"training.init_from={base}", *short,
                                   f"post_training.critic_model={tmp_path / 'lora-reward'}"]),
            tmp_path / "refused", announce=lambda *a: None)
    assert not (tmp_path / "refused").exists()


def test_a_ppo_step_trains_on_each_mini_batch_of_its_rollouts_every_epoch(base, tmp_path, monkeypatch):
    spec = load_spec("tiny-ppo", [f"training.init_from={base}", *VERIFIED, "training.max_steps=1",
                                  "training.global_batch_size=8", "training.micro_batch_size=4",
                                  "post_training.rollouts_per_step=16", "post_training.epochs=2",
                                  "post_training.response_len=4", "training.eval_interval=1000"])
    trained_on = []
    original = PPORollouts.get

    def get(self, step, micro, rank=0):
        if len(self.records) > 1000:  # the training prompts (the held-out set is 256)
            trained_on.append((step, micro))
        return original(self, step, micro, rank)

    monkeypatch.setattr(PPORollouts, "get", get)
    run(spec, tmp_path / "ppo", backend="torch", announce=lambda *a: None)
    # 16 rollouts, mini-batches of 8 (2 micro-batches of 4): epoch 1 reads both mini-batches, then epoch 2
    assert trained_on == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 0), (0, 1), (0, 2), (0, 3)]
    state = load_checkpoint(latest_checkpoint(tmp_path / "ppo" / "checkpoints"))
    assert next(iter(state["optimizer"]["state"].values()))["step"] == 2 * 2  # epochs × mini-batches


def test_rl_runs_on_a_users_prompt_set(base, tmp_path):
    """GRPO on a JSON Lines prompt set (a prompt, or messages, each with the verifier's answer): the rollouts are
    that set's prompts under the chat template, and the held-out ones with answers give task_accuracy."""
    records = [{"prompt": f"Repeat: w{i} v{i}", "answer": f"w{i} v{i}"} for i in range(18)] + [
        {"messages": [{"role": "user", "content": "Repeat: a b"}], "answer": "a b"}] * 2
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    spec = load_spec("tiny-grpo", [f"training.init_from={base}", f"data.corpus={path}", "data.val_fraction=0.2",
                                   "training.max_steps=1", "training.global_batch_size=16",
                                   "post_training.group_size=4", "post_training.response_len=4"])
    run(spec, tmp_path / "grpo", backend="torch", announce=lambda *a: None)
    train = json.loads((tmp_path / "grpo" / "data" / "train.json").read_text())
    assert [r["prompt"] for r in train] == [r["prompt"] for r in records[:16]]
    evals = [r for r in read_metrics(tmp_path / "grpo" / "metrics.jsonl") if "reward_mean" in r]
    assert [r["step"] for r in evals] == [0, 1] and "task_accuracy" in evals[0]
    assert "Question: Repeat: a b\nAnswer:" in (tmp_path / "grpo" / "samples.txt").read_text()


@pytest.mark.integration
def test_a_killed_ppo_run_resumes_bit_for_bit(base, tmp_path):
    # 16 rollouts per step in mini-batches of 8: epochs × 2 optimizer steps per step, each on its own mini-batch
    spec = load_spec("tiny-ppo", [f"training.init_from={base}", *VERIFIED, "training.max_steps=6",
                                  "training.global_batch_size=8", "training.micro_batch_size=4",
                                  "post_training.rollouts_per_step=16", "post_training.epochs=2",
                                  "training.checkpoint_interval=2", "training.log_interval=1",
                                  "training.eval_interval=3"])
    whole = killed_and_resumed(spec, tmp_path)  # losses, rewards, KL, accuracy: every float
    evals = [r for r in whole if "reward_mean" in r]
    assert [r["step"] for r in evals] == [0, 3, 6] and all(r["kl"] >= 0 for r in evals)
    assert [r["step"] for r in whole if "rollout_reward" in r] == [1, 2, 3, 4, 5, 6]
    for line in (r for r in whole if "loss" in r):  # planned beside measured (timings left out of `whole`)
        assert line["planned_tokens_per_second"] > 0
        assert set(line["planned_phase_seconds"]) == {"generation", "scoring", "training"}
    timed = read_metrics(tmp_path / "whole" / "metrics.jsonl")[1]
    assert all(seconds > 0 for seconds in timed["phase_seconds"].values()), timed
    state = load_checkpoint(latest_checkpoint(tmp_path / "whole" / "checkpoints"))
    assert "value_head.weight" in state["critic"] and "lm_head.weight" in state["model"]  # the policy is "model"
    assert next(iter(state["optimizer"]["state"].values()))["step"] == 6 * 2 * 2  # steps × epochs × mini-batches
    assert "Answer:" in (tmp_path / "whole" / "samples.txt").read_text()  # generate reads the policy
    assert json.loads((tmp_path / "whole" / "data" / "train.json").read_text())[0]["answer"]


def test_the_summary_sets_measured_throughput_and_phases_beside_the_plan():
    from llmspec.runner import planned_and_measured

    planned = {"generation": 0.1, "scoring": 0.3, "training": 1.9}
    records = [{"step": 0, "val_loss": 1.0}] + [
        {"step": s, "loss": 0.1, "tokens_per_second": rate, "planned_tokens_per_second": 1800.0,
         "phase_seconds": {"generation": g, "scoring": 0.05, "training": 1.0}, "planned_phase_seconds": planned}
        for s, rate, g in ((1, 10.0, 9.0), (2, 3000.0, 0.2), (3, 3200.0, 0.4), (4, 3100.0, 0.3))]
    throughput, phases = planned_and_measured(records)
    assert throughput == (3100.0, 1800.0)  # the median after the first line (start-up)
    assert phases == {"generation": (0.3, 0.1), "scoring": (0.05, 0.3), "training": (1.0, 1.9)}
    assert planned_and_measured([{"step": 0, "val_loss": 1.0}]) == (None, None)


def test_ppo_steps_in_bf16_as_gpu_users_train(base):
    """Sampling, scoring and the loss under bf16 autocast (the torch engine's bf16): finite, with gradients for
    the policy and the critic; old log-probs and values are kept in fp32."""
    from llmspec.train.precision import autocast

    spec, trained, source = _ppo_parts(base, "training.precision=bf16", "post_training.response_len=6")
    with autocast("bf16", "cpu"):
        inputs, targets, old_logprobs, old_values, advantages, returns = source.get(step=0, micro=0)
        logits, values = trained(inputs)
        loss = ppo_loss(logits, values, targets, old_logprobs, old_values, advantages, returns, 0.2, 0.2, 0.1)
    assert old_logprobs.dtype == old_values.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for model in (trained.policy, trained.critic):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
