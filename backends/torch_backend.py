"""The ``torch`` backend: one process on the CPU or one GPU.

The loop every backend follows: learning rate from the schedule, gradient accumulation to the global batch,
clipping, AdamW, metrics every ``log_interval``, evaluation every ``eval_interval``, atomic checkpoints every
``checkpoint_interval`` (model, optimizer, step, RNG states, spec). Batches are a function of the step, so a
resumed run replays exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llmspec.compile.loading import load_model_module
from llmspec.data.shards import Batches
from llmspec.loader import dump_spec
from llmspec.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from llmspec.train.job import Job
from llmspec.train.loop import StepLog, TrainingError, autocast, due, evaluate, stopped_message
from llmspec.train.optim import make_optimizer
from llmspec.train.schedule import lr_at


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


def train(job: Job, announce=print, progress=None, compile: bool = False) -> Result:
    spec, tr = job.spec, job.spec.training
    device = pick_device(job, announce)
    torch.manual_seed(tr.seed)
    model = load_model_module(job.model_file).Model().to(device)
    # torch.compile: the compiled callable shares the module's parameters; checkpoints keep the plain names
    forward = torch.compile(model) if compile else model
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
    log = StepLog(job, device, start, job.resume)
    train_batches = Batches(job.shards.load("train"), tr.seq_len, tr.micro_batch_size, tr.seed, "train")
    val_batches = Batches(job.shards.load("val"), tr.seq_len, tr.micro_batch_size, tr.seed, "val")
    dp = spec.parallelism.data_parallel
    accumulation = tr.gradient_accumulation_steps * dp  # one process does every replica's micro-batches

    @torch.no_grad()
    def val_loss_of(x: torch.Tensor, y: torch.Tensor) -> float:
        with autocast(tr.precision, device):
            return model(x.to(device), y.to(device))[1].item()

    loss = val_loss = None
    try:
        for step in range(start, tr.steps):
            lr = lr_at(spec, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = 0.0
            for j in range(accumulation):
                # global micro-batch j is rank j % dp's micro-batch j // dp: the batches a DeepSpeed run sees
                x, y = (t.to(device) for t in train_batches.get(step, j // dp, j % dp))
                with autocast(tr.precision, device):
                    _, micro_loss = forward(x, y)
                scaler.scale(micro_loss / accumulation).backward()
                loss += micro_loss.item() / accumulation
            if not math.isfinite(loss):
                raise TrainingError(stopped_message(job, step + 1, f"loss is {loss}"))
            scaler.unscale_(optimizer)
            if tr.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            log.step(done, loss, lr)
            if due(tr.eval_interval, done, tr.steps):
                model.eval()
                val_loss = evaluate(val_loss_of, val_batches)
                model.train()
                log.eval(done, val_loss)
            if due(tr.checkpoint_interval, done, tr.steps):
                if not all(torch.isfinite(p).all() for p in model.parameters()):
                    raise TrainingError(stopped_message(job, done, "the weights hold inf/nan"))
                save_checkpoint(job.checkpoints, done, {
                    "step": done, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(), "spec": dump_spec(spec),
                    "rng": {"torch": torch.get_rng_state(),
                            "cuda": torch.cuda.get_rng_state() if device == "cuda" else None}})
            if progress:
                progress(done, loss, lr, val_loss)
    finally:
        log.close()
    return Result(model, tr.steps, loss, val_loss)
