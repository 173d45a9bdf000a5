"""Pieces of the training loop that every backend shares: errors, evaluation, metrics records, MFU."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable

import torch

from llmspec import catalogue
from llmspec.data.shards import Batches
from llmspec.errors import LLMSpecError
from llmspec.planner import plan
from llmspec.spec import Spec
from llmspec.train.checkpoint import latest_checkpoint
from llmspec.train.job import Job
from llmspec.train.metrics import MetricsLog

EVAL_BATCHES = 8


class TrainingError(LLMSpecError):
    pass


def stopped_message(job: Job, step: int, why: str) -> str:
    last = latest_checkpoint(job.checkpoints)
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
    return f"step {step}: {why}; training stopped ({kept}). Lower training.optimizer.lr or check the data"


def autocast(precision: str, device: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device == "cpu":
        raise TrainingError("training.precision: fp16 needs a GPU (loss scaling); use bf16 or fp32 on the CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device, dtype=dtype)


def peak_flops(spec: Spec, device: str) -> float | None:
    """The dense peak FLOP/s of the device actually used, for MFU (None when unknown)."""
    precision = spec.training.precision
    if device == "cpu":
        return catalogue.lookup("cpu").peak_flops.get(precision)
    name = torch.cuda.get_device_name(0)
    gpu = spec.cluster.device
    return gpu.peak_flops.get(precision) if gpu.name.split("-")[0] in name else None


def evaluate(loss_of: Callable[[torch.Tensor, torch.Tensor], float], batches: Batches) -> float:
    """Mean loss over a fixed set of validation batches (the same every evaluation, on every rank)."""
    return sum(loss_of(*batches.get(0, i)) for i in range(EVAL_BATCHES)) / EVAL_BATCHES


def due(interval: int, done: int, steps: int) -> bool:
    """Whether something every ``interval`` steps (log, eval, checkpoint) happens after step ``done``; always at the
    last step."""
    return done % interval == 0 or done == steps


class StepLog:
    """Writes the step, eval and rate records of metrics.jsonl at the spec's intervals."""

    def __init__(self, job: Job, device: str, start: int, resume: bool):
        spec = job.spec
        self.tr = spec.training
        self.metrics = MetricsLog(job.metrics_file, start if resume else None)
        self.flops_per_token = plan(spec, alternatives=False).flops["per_token_train"]
        self.peak = peak_flops(spec, device)
        self.mark, self.mark_step = time.perf_counter(), start

    def step(self, done: int, loss: float, lr: float) -> None:
        if not due(self.tr.log_interval, done, self.tr.steps):
            return
        elapsed = time.perf_counter() - self.mark
        rate = self.tr.global_batch_size * self.tr.seq_len * (done - self.mark_step) / elapsed if elapsed else 0.0
        record = {"step": done, "loss": loss, "lr": lr, "tokens_per_second": rate}
        if self.peak:
            record["mfu"] = self.flops_per_token * rate / self.peak
        self.metrics.write(record)
        self.mark, self.mark_step = time.perf_counter(), done

    def eval(self, done: int, val_loss: float) -> None:
        self.metrics.write({"step": done, "val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50))})

    def close(self) -> None:
        self.metrics.close()
