"""Each alignment method does what it is for, end to end: DPO, GRPO and PPO each raise held-out task accuracy over
their start, and the RL methods their held-out reward with a finite KL.

All three start from one short SFT of the imported tiny base (60 steps: a third of the held-out prompts answered,
so there is room to gain) and run budgets a test can pay (40 s to 2 min each on one core); `make post-train` runs
the full recipes from the 100-step SFT (docs/post-training.md, "The chain"). Where the spec's recipe is
shortened, what is set is named beside the run. The reward model's and SFT's own learning are asserted in
test_losses.py and test_sft.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmspec.runner import run
from llmspec.spec.loading import load_spec
from llmspec.train.metrics import read_metrics


@pytest.fixture(scope="module")
def start(base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft") / "sft"
    run(load_spec("tiny-sft", [f"training.init_from={base}", "training.max_steps=60"]), out,
        announce=lambda *a: None)
    return out


def _run(name: str, start: Path, out: Path, *sets: str) -> list[dict]:
    run(load_spec(name, [f"training.init_from={start}", *sets]), out, announce=lambda *a: None)
    return read_metrics(out / "metrics.jsonl")


def _start_and_end(lines: list[dict], key: str) -> tuple[dict, dict]:
    evals = [r for r in lines if key in r]
    assert evals[0]["step"] == 0  # before any update
    return evals[0], evals[-1]


@pytest.mark.integration
def test_dpo_raises_preference_and_task_accuracy_over_its_sft_start(start, tmp_path):
    lines = _run("tiny-dpo", start, tmp_path / "dpo", "training.max_steps=100", "training.eval_interval=50")
    first, last = _start_and_end(lines, "preference_accuracy")
    assert first["reward_margin"] == 0 and last["reward_margin"] > 0  # the policy starts as its reference
    assert last["preference_accuracy"] >= 0.75
    assert last["task_accuracy"] >= first["task_accuracy"] + 0.05, (first, last)


def _assert_rl_learned(lines: list[dict], steps: int) -> None:
    first, last = _start_and_end(lines, "reward_mean")
    assert first["kl"] == 0 and last["step"] == steps
    assert last["reward_mean"] >= first["reward_mean"] + 0.05, (first, last)
    assert last["task_accuracy"] >= first["task_accuracy"] + 0.05, (first, last)
    assert 0 < last["kl"] < 1  # it moved from the reference, and the penalty held it near
    rollouts = [r["rollout_reward"] for r in lines if "rollout_reward" in r]
    assert sum(rollouts[-3:]) > sum(rollouts[:3])  # the training rollouts' reward rose too


@pytest.mark.integration
def test_grpo_raises_held_out_reward_and_task_accuracy_with_a_finite_kl(start, tmp_path):
    # the spec's recipe (8 prompts × 8 samples per step, 1e-4), half its steps
    lines = _run("tiny-grpo", start, tmp_path / "grpo", "training.max_steps=150", "training.eval_interval=75")
    _assert_rl_learned(lines, 150)


@pytest.mark.integration
def test_ppo_raises_held_out_reward_and_task_accuracy_with_a_finite_kl(start, tmp_path):
    # 64 rollouts per step as the spec has it; 40 steps of 2 epochs at 2e-4 instead of 100 of 4 at 1e-4
    lines = _run("tiny-ppo", start, tmp_path / "ppo", "training.max_steps=40", "training.eval_interval=20",
                 "training.optimizer.lr=2e-4", "training.schedule.min_lr=2e-4", "post_training.epochs=2")
    _assert_rl_learned(lines, 40)
