"""The ``torch`` backend: one process on the CPU or one GPU.

The loop every backend follows: learning rate from the schedule, gradient accumulation to the global batch,
clipping, AdamW, metrics every ``log_interval``, evaluation every ``eval_interval``, atomic checkpoints every
``checkpoint_interval`` (model, optimizer, step, RNG states, spec). Batches are a function of the step, so a
resumed run replays exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch

from llmspec.compile.loading import load_model_module
from llmspec.data.shards import Batches
from llmspec.errors import LLMSpecError
from llmspec.loader import dump_spec
from llmspec.planner import plan
from llmspec.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from llmspec.train.job import Job
from llmspec.train.metrics import MetricsLog
from llmspec.train.optim import make_optimizer
from llmspec.train.schedule import lr_at

EVAL_BATCHES = 8


class TrainingError(LLMSpecError):
    pass


@dataclass
class Result:
    model: torch.nn.Module
    step: int
    loss: float | None
    val_loss: float | None


def pick_device(job: Job, announce) -> str:
    if job.spec.cluster.device.name == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    announce(f"no GPU available: running {job.spec.name} on the CPU instead of {job.spec.cluster.device.name}")
    return "cpu"


def autocast(precision: str, device: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device == "cpu":
        raise TrainingError("training.precision: fp16 needs a GPU (loss scaling); use bf16 or fp32 on the CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device, dtype=dtype)


def peak_flops(job: Job, device: str) -> float | None:
    """The dense peak of the device actually used, for MFU (None when unknown)."""
    from llmspec import catalogue

    precision = job.spec.training.precision
    if device == "cpu":
        return catalogue.lookup("cpu").peak_flops.get(precision)
    name = torch.cuda.get_device_name(0)
    gpu = job.spec.cluster.device
    return gpu.peak_flops.get(precision) if gpu.name.split("-")[0] in name else None


def train(job: Job, announce=print, progress=None) -> Result:
    spec, tr = job.spec, job.spec.training
    device = pick_device(job, announce)
    torch.manual_seed(tr.seed)
    module = load_model_module(job.model_file)
    model = module.Model().to(device)
    optimizer = make_optimizer(spec, model, device)
    scaler = torch.amp.GradScaler(device, enabled=tr.precision == "fp16")
    start = 0
    if job.resume:
        path = latest_checkpoint(job.checkpoints)
        state = load_checkpoint(path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start = state["step"]
        torch.set_rng_state(state["rng"]["torch"])
        if device == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        announce(f"resumed from {path} at step {start}")
    metrics = MetricsLog(job.metrics_file, start if job.resume else None)
    train_batches = Batches(job.shards.load("train"), tr.seq_len, tr.micro_batch_size, tr.seed, "train")
    val_batches = Batches(job.shards.load("val"), tr.seq_len, tr.micro_batch_size, tr.seed, "val")
    dp = spec.parallelism.data_parallel
    accumulation = tr.gradient_accumulation_steps * dp  # one process does every replica's micro-batches
    flops_per_token = plan(spec, alternatives=False).flops["per_token_train"]
    peak = peak_flops(job, device)
    tokens_per_step = tr.global_batch_size * tr.seq_len
    loss = val_loss = None
    mark, mark_step = time.perf_counter(), start
    try:
        for step in range(start, tr.steps):
            lr = lr_at(spec, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            loss = 0.0
            for j in range(accumulation):
                # global micro-batch j is rank j % dp's micro-batch j // dp: the batches a DeepSpeed run sees
                x, y = (t.to(device) for t in train_batches.get(step, j // dp, j % dp))
                with autocast(tr.precision, device):
                    _, micro_loss = model(x, y)
                scaler.scale(micro_loss / accumulation).backward()
                loss += micro_loss.item() / accumulation
            if not math.isfinite(loss):
                raise TrainingError(_stopped(job, step + 1, f"loss is {loss}"))
            scaler.unscale_(optimizer)
            if tr.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            if done % tr.log_interval == 0 or done == tr.steps:
                elapsed = time.perf_counter() - mark
                rate = tokens_per_step * (done - mark_step) / elapsed if elapsed > 0 else 0.0
                record = {"step": done, "loss": loss, "lr": lr, "tokens_per_second": rate}
                if peak:
                    record["mfu"] = flops_per_token * rate / peak
                metrics.write(record)
                mark, mark_step = time.perf_counter(), done
            if done % tr.eval_interval == 0 or done == tr.steps:
                val_loss = evaluate(model, val_batches, tr.precision, device)
                metrics.write({"step": done, "val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50))})
            if done % tr.checkpoint_interval == 0 or done == tr.steps:
                if not all(torch.isfinite(p).all() for p in model.parameters()):
                    raise TrainingError(_stopped(job, done, "the weights hold inf/nan"))
                save_checkpoint(job.checkpoints, done, {
                    "step": done, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(), "spec": dump_spec(spec),
                    "rng": {"torch": torch.get_rng_state(),
                            "cuda": torch.cuda.get_rng_state() if device == "cuda" else None}})
            if progress:
                progress(done, loss, lr, val_loss)
    finally:
        metrics.close()
    return Result(model, tr.steps, loss, val_loss)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Batches, precision: str, device: str) -> float:
    model.eval()
    total = 0.0
    for i in range(EVAL_BATCHES):
        x, y = (t.to(device) for t in batches.get(0, i))
        with autocast(precision, device):
            _, loss = model(x, y)
        total += loss.item()
    model.train()
    return total / EVAL_BATCHES


def _stopped(job: Job, step: int, why: str) -> str:
    last = latest_checkpoint(job.checkpoints)
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
    return f"step {step}: {why}; training stopped ({kept}). Lower training.optimizer.lr or check the data"
