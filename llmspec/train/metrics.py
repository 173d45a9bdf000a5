"""metrics.jsonl (one object per logged step; eval lines add val_loss) and its loss.png. The records go to
every sink of ``training.loggers`` through ``llmspec.train.loggers.RunLoggers``."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from llmspec.files import replaced_atomically
from llmspec.planner import plan
from llmspec.planner.result import Plan
from llmspec.spec import Spec, catalogue
from llmspec.train.loggers import Announce, MetricsLog, RunLoggers, parse_records

__all__ = ["MetricsLog", "StepLog", "peak_flops", "plot_loss", "read_metrics"]


def peak_flops(spec: Spec, device: str) -> float | None:
    """The dense peak FLOP/s of the device actually used, for MFU (None when unknown)."""
    precision = spec.training.precision
    if device == "cpu":
        return catalogue.lookup("cpu").peak_flops.get(precision)
    import torch

    name = torch.cuda.get_device_name(0)
    gpu = spec.cluster.device
    return gpu.peak_flops.get(precision) if gpu.name.split("-")[0] in name else None


class StepLog:
    """The step, eval and rate records of metrics.jsonl: tokens/s and MFU of the training steps since the previous
    step record (time spent evaluating and checkpointing is excluded: it is not training throughput).
    ``tokens_per_step``: what one step trains on, as the method counts it (``Method.tokens_per_step``);
    ``perplexity``: whether val_loss is a next-token cross-entropy (``Method.token_cross_entropy``), whose exp the
    eval lines add as val_perplexity. Each evaluation redraws loss.png beside metrics.jsonl."""

    def __init__(self, spec: Spec, path: Path, device: str, start: int, resume: bool, tokens_per_step: int,
                 planned: Plan | None = None, perplexity: bool = True, announce: Announce | None = print):
        self.spec, self.path, self.device = spec, path, device
        self.tokens_per_step, self.perplexity = tokens_per_step, perplexity
        self.metrics = RunLoggers(spec, path, start if resume else None, announce)
        if planned is None or not planned.is_for(spec):  # a DeepSpeed rank plans here; `run` hands its plan down
            planned = plan(spec, alternatives=False)
        self.flops_per_token = planned.flops["per_token_train"]
        self.planned_rate = planned.time["tokens_per_second"]
        self.planned_peak = planned.memory["peak"]
        self.planned_phases = {name: phase["seconds"] for name, phase in planned.phases.items()}
        self.peak = peak_flops(spec, device.split(":")[0])
        self.mark, self.mark_step, self.excluded = time.perf_counter(), start, 0.0

    def exclude(self, seconds: float) -> None:
        """Time since the last record that was not spent training (evaluation, checkpoints)."""
        self.excluded += seconds

    def step(self, done: int, loss: float, lr: float, **extra: float) -> None:
        """A step line: measured tokens/s beside the plan's; an RL run's seconds per step by phase beside the
        plan's (``extra`` carries the generation and scoring seconds since the previous line)."""
        elapsed = time.perf_counter() - self.mark - self.excluded
        steps = done - self.mark_step
        rate = self.tokens_per_step * steps / elapsed if elapsed else 0.0
        record = {"step": done, "loss": loss, "lr": lr, "tokens_per_second": rate,
                  "planned_tokens_per_second": self.planned_rate, "planned_peak_memory": self.planned_peak}
        if self.device.startswith("cuda"):  # what the plan's peak predicts: the allocator's high-water mark
            import torch

            record["peak_memory"] = torch.cuda.max_memory_allocated(self.device)
        if "generation_seconds" in extra and steps:
            phases = {name: extra.pop(f"{name}_seconds") / steps for name in ("generation", "scoring")}
            phases["training"] = elapsed / steps - sum(phases.values())
            record.update(phase_seconds=phases, planned_phase_seconds=self.planned_phases)
        record.update(extra)
        if self.peak:
            record["mfu"] = self.flops_per_token * rate / self.peak
        self.metrics.write(record)
        self.mark, self.mark_step, self.excluded = time.perf_counter(), done, 0.0

    def eval(self, done: int, val_loss: float, **extra: float) -> None:
        """An eval line: val_loss (and its perplexity, for a language-model loss), and what the method adds
        (task_accuracy for post-training); then loss.png, redrawn."""
        record: dict[str, Any] = {"step": done, "val_loss": val_loss}
        if self.perplexity:
            record["val_perplexity"] = math.exp(min(val_loss, 50))
        self.metrics.write({**record, **extra})
        plot_loss(self.path, self.path.parent / "loss.png", loss_title(self.spec), self.perplexity)

    def close(self) -> None:
        self.metrics.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records (a last line cut off by a kill left out)."""
    return parse_records(path)


def loss_title(spec: Spec) -> str:
    return f"{spec.name}: {spec.training.steps} steps"


def plot_loss(metrics: Path, out: Path, title: str, cross_entropy: bool = True) -> Path:
    """loss.png: train and validation loss by step (``cross_entropy``: the loss is next-token cross-entropy, in
    nats/token; else the method's own loss, a preference one), or an RL run's reward and KL panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics)
    if any("reward_mean" in r for r in records):
        return _plot_rl(records, out, title, plt)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)" if cross_entropy else "loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with replaced_atomically(out) as tmp:  # redrawn while a run goes on: never seen half-written
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


def _plot_rl(records: list[dict[str, Any]], out: Path, title: str, plt) -> Path:
    """PPO/GRPO: what the run is for — the rollouts' reward at each step line, the held-out sampled reward and task
    accuracy at each evaluation — beside the KL to the reference that pays for it."""
    def series(key: str) -> list[tuple[int, float]]:
        return [(r["step"], r[key]) for r in records if key in r]

    fig, (reward, kl) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for key, style, label in (("rollout_reward", "-", "rollout reward (training prompts)"),
                              ("reward_mean", "o-", "reward, held-out prompts (sampled)"),
                              ("task_accuracy", "s--", "task accuracy, held-out (greedy)")):
        if series(key):
            reward.plot(*zip(*series(key), strict=True), style, label=label, linewidth=1.3)
    reward.set_xlabel("step")
    reward.set_ylabel("reward / accuracy")
    reward.legend(fontsize=8)
    kl.plot(*zip(*series("kl"), strict=True), "o-", color="tab:red", linewidth=1.3)
    kl.set_xlabel("step")
    kl.set_ylabel("KL to the reference (k3, nats/token)")
    for ax in (reward, kl):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with replaced_atomically(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
