"""metrics.jsonl's plot (llmspec/train/metrics.py): a loss curve, or for PPO/GRPO the reward and KL panels."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt

from llmspec.train.metrics import plot_loss


def test_an_rl_run_plots_reward_and_kl_beside_each_other(tmp_path):
    pretraining, rl = tmp_path / "pre.jsonl", tmp_path / "rl.jsonl"
    pretraining.write_text("\n".join(json.dumps({"step": s, "loss": 5.0 - s / 10}) for s in range(1, 6)))
    rl.write_text("\n".join(json.dumps(r) for r in [
        {"step": 0, "val_loss": 1.0, "reward_mean": 0.6, "kl": 0.0, "task_accuracy": 0.75},
        {"step": 1, "loss": 0.1, "rollout_reward": 0.55}, {"step": 2, "loss": 0.1, "rollout_reward": 0.7},
        {"step": 2, "val_loss": 1.0, "reward_mean": 0.7, "kl": 0.05, "task_accuracy": 0.8}]))
    curve = plt.imread(plot_loss(pretraining, tmp_path / "pre.png", "pretraining"))
    panels = plt.imread(plot_loss(rl, tmp_path / "rl.png", "ppo"))
    assert curve.shape[:2] == (440, 770) and panels.shape[:2] == (440, 1100)  # one axis; reward and KL side by side
