"""The one training loop. Every engine (``llmspec.train.engine.Engine``) runs under it.

Per optimizer step: the learning rate from the schedule, the step's batches (a pure function of the step, so a
resumed run replays exactly what an uninterrupted one would have done), the engine's step. Every
``log_interval`` steps the pending losses are read on the host in one transfer, checked for inf/nan and logged
(to metrics.jsonl and every sink of ``training.loggers``: ``llmspec.train.loggers``);
every ``eval_interval`` the validation loss; every ``checkpoint_interval`` the weights are checked finite and
saved. Log, eval and checkpoint also happen after the last step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmspec.errors import LLMSpecError
from llmspec.spec import dump_spec
from llmspec.train.checkpoint import latest_checkpoint
from llmspec.train.engine import Engine
from llmspec.train.job import Job
from llmspec.train.metrics import StepLog
from llmspec.train.objectives import BatchSource, Objective
from llmspec.train.schedule import lr_at

EVAL_BATCHES = 8

Progress = Callable[[int, float, float, "float | None"], None]  # (step, last logged loss, lr, last val loss)


class TrainingError(LLMSpecError):
    pass


@dataclass
class FitResult:
    steps: int
    loss: float | None  # the last logged training loss
    val_loss: float | None


def stopped_message(job: Job, step: int, why: str) -> str:
    last = latest_checkpoint(job.checkpoints)
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
    return f"step {step}: {why}; training stopped ({kept}). Lower training.optimizer.lr or check the data"


def due(interval: int, done: int, steps: int) -> bool:
    """Whether something every ``interval`` steps (log, eval, checkpoint) happens after step ``done``; always at the
    last step."""
    return done % interval == 0 or done == steps


def evaluate(engine: Engine, batches: BatchSource, count: int = EVAL_BATCHES) -> float:
    """Mean loss over a fixed set of validation batches (the same every evaluation, on every rank; generated ones,
    from the same prompts and seed, are generated anew by the model as it is now)."""
    if hasattr(batches, "reset"):
        batches.reset()
    engine.train_mode(False)
    try:
        return sum(engine.eval_loss(batches.get(0, i)) for i in range(count)) / count
    finally:
        engine.train_mode(True)


def _evaluate_all(engine: Engine, task: Objective) -> tuple[float, dict]:
    """val_loss and what the method adds (held-out metrics, task accuracy), with dropout off."""
    val_loss = evaluate(engine, task.val, task.eval_batches)
    engine.train_mode(False)
    try:
        return val_loss, engine.method.metrics(engine, task)
    finally:
        engine.train_mode(True)


def fit(job: Job, engine: Engine, announce: Callable[[str], None] = print, progress: Progress | None = None
        ) -> FitResult:
    spec, tr = job.spec, job.spec.training
    start = 0
    if job.resume:
        start, source = engine.load(job.checkpoints)
        if engine.is_main:
            announce(f"resumed from {source} at step {start}")
    task = engine.method.objective(job, engine)
    method = engine.method
    log = StepLog(spec, job.metrics_file, engine.device, start, job.resume, method.tokens_per_step(), job.plan,
                  method.token_cross_entropy, announce) if engine.is_main else None
    slots = engine.batch_slots()
    pending: list[torch.Tensor] = []  # this process's losses since the last host read, still on the device
    loss = val_loss = None
    engine.train_mode(True)
    try:
        if task.eval_at_start and start == 0:  # the starting point, so the gain is visible
            val_loss, extra = _evaluate_all(engine, task)
            if log:
                log.eval(0, val_loss, **extra)
        for step in range(start, tr.steps):
            lr = lr_at(spec, step)
            engine.set_lr(lr)
            # one optimizer step per pass: PPO's `epochs` passes over its rollouts, one optimizer step per
            # mini-batch of global_batch_size rollouts in turn; the step's loss is their mean
            accumulation = tr.gradient_accumulation_steps
            pending.append(torch.stack([
                engine.train_step([task.train.get(step, (p % task.minibatches) * accumulation + micro, replica)
                                   for micro, replica in slots]) for p in range(task.passes)]).mean())
            done = step + 1
            if due(tr.log_interval, done, tr.steps) or due(tr.checkpoint_interval, done, tr.steps):
                losses = engine.global_mean(torch.stack(pending)).tolist()  # the one host sync per log
                first_bad = next((i for i, value in enumerate(losses) if not math.isfinite(value)), None)
                if first_bad is not None:
                    bad_step = done - len(losses) + first_bad + 1
                    raise TrainingError(stopped_message(job, bad_step, f"loss is {losses[first_bad]}"))
                pending.clear()
                loss = losses[-1]
                if log and due(tr.log_interval, done, tr.steps):
                    extra = task.step_metrics()
                    notice = method.step_notice(extra)
                    if notice:
                        announce(f"step {done}: {notice}")
                    log.step(done, loss, lr, **extra)
            paused = time.perf_counter()
            if due(tr.eval_interval, done, tr.steps):
                val_loss, extra = _evaluate_all(engine, task)
                if log:
                    log.eval(done, val_loss, **extra)
            if due(tr.checkpoint_interval, done, tr.steps):
                if not engine.weights_finite():
                    raise TrainingError(stopped_message(job, done, "the weights hold inf/nan"))
                engine.save(job.checkpoints, done, dump_spec(spec))
            if log:
                log.exclude(time.perf_counter() - paused)
            if progress and engine.is_main:
                progress(done, loss, lr, val_loss)
    finally:
        if log:
            log.close()
    return FitResult(tr.steps, loss, val_loss)
