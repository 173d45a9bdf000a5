"""The ``torch`` engine: one process on the CPU or one GPU, under the one loop (``llmspec.train.loop.fit``).

A step accumulates every data-parallel replica's micro-batches in this one process (global micro-batch j is
replica j % dp's micro-batch j // dp: the batches a DeepSpeed run of the same spec sees), clips, and steps AdamW.
Checkpoints hold the model, optimizer, loss scaler, RNG states and the spec.
"""

from __future__ import annotations

from pathlib import Path

import torch

from llmspec.backends import torch_limits
from llmspec.train.checkpoint import load_checkpoint, resumable_checkpoint, save_checkpoint
from llmspec.train.engine import Batch, Engine
from llmspec.train.job import Job
from llmspec.train.loop import FitResult, fit
from llmspec.train.methods import Method, method_for
from llmspec.train.optim import make_optimizer
from llmspec.train.ppo import load_trained_states, split_states
from llmspec.train.precision import autocast


def pick_device(job: Job, announce) -> str:
    if job.spec.cluster.device.name == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    announce(f"no GPU available: running {job.spec.name} on the CPU instead of {job.spec.cluster.device.name}")
    return "cpu"


class TorchEngine(Engine):
    refusals = staticmethod(torch_limits.refusals)

    def __init__(self, job: Job, device: str, compile: bool = False, method: Method | None = None):
        spec, tr = job.spec, job.spec.training
        self.device, self.precision, self.grad_clip = device, tr.precision, tr.grad_clip
        self.method = method or method_for(spec)
        self.model = self.method.model(job).to(device)
        self.loss = self.method.loss(self.model)  # (a reference copy is taken here)
        # torch.compile: the compiled callable shares the module's parameters; checkpoints keep the plain names
        self.forward = torch.compile(self.model) if compile else self.model
        self.optimizer = make_optimizer(spec, self.model, device)
        self.scaler = torch.amp.GradScaler(device, enabled=tr.precision == "fp16")
        self.dp = spec.parallelism.data_parallel
        self.accumulation = tr.gradient_accumulation_steps * self.dp

    def batch_slots(self) -> list[tuple[int, int]]:
        return [(j // self.dp, j % self.dp) for j in range(self.accumulation)]

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_step(self, batches: list[Batch]) -> torch.Tensor:
        total = torch.zeros((), device=self.device)
        for batch in batches:
            with autocast(self.precision, self.device):
                loss = self.loss(self.forward, *(t.to(self.device, non_blocking=True) for t in batch))
            self.scaler.scale(loss / len(batches)).backward()
            total += loss.detach().float()
        self.scaler.unscale_(self.optimizer)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total / len(batches)

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> float:
        with autocast(self.precision, self.device):
            return self.loss(self.model, *(t.to(self.device) for t in batch)).item()

    def train_mode(self, training: bool) -> None:
        self.model.train(training)

    def weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def save(self, checkpoints: Path, step: int, spec_yaml: str) -> None:
        save_checkpoint(checkpoints, step, {
            "step": step, **split_states(self.model.state_dict()), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "spec": spec_yaml,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state() if self.device == "cuda" else None}})

    def load(self, checkpoints: Path) -> tuple[int, str]:
        # the newest readable one: an unreadable newer one was named when the run was prepared
        path, _ = resumable_checkpoint(checkpoints)
        state = load_checkpoint(path)
        load_trained_states(self.model, state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        return state["step"], str(path)


def train(job: Job, announce=print, progress=None, compile: bool = False) -> FitResult:
    return fit(job, TorchEngine(job, pick_device(job, announce), compile), announce, progress)
