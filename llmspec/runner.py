"""``llmspec run``: prepare the run directory, train it with the engine the layout needs, then plot and sample.

The torch engine runs in this process; DeepSpeed's ranks are started through the compiled ``build/launch.sh``
(each rank runs ``llmspec.backends.deepspeed_worker``). Both train under the one loop, ``llmspec.train.loop.fit``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from llmspec.backends.torch_backend import train
from llmspec.errors import LLMSpecError
from llmspec.spec import Spec
from llmspec.train.generate import write_samples
from llmspec.train.job import Job, cache_dir, prepare
from llmspec.train.metrics import plot_loss, read_metrics

PROMPTS = ["The", "Return a", "This module"]
BACKENDS = ("auto", "torch", "deepspeed")


@dataclass
class RunSummary:
    run_dir: Path
    steps: int
    loss: float | None
    val_loss: float | None
    unigram_entropy: float
    samples: list[str]


def run(spec: Spec, run_dir: Path, resume: bool = False, backend: str = "auto", announce=print,
        progress=None, compile: bool = False) -> RunSummary:
    chosen = resolve_backend(spec, backend)
    job = prepare(spec, run_dir, resume)
    if chosen == "torch":
        result = train(job, announce, progress, compile)
        loss, val_loss = result.loss, result.val_loss
    else:
        if compile:
            announce("--compile applies to the torch backend; DeepSpeed runs the model uncompiled")
        loss, val_loss = _launch_deepspeed(job, announce)
    plot_loss(job.metrics_file, run_dir / "loss.png", f"{spec.name}: {spec.training.steps} steps")
    samples = write_samples(run_dir, PROMPTS)
    return RunSummary(run_dir, spec.training.steps, loss, val_loss, job.shards.unigram_entropy, samples)


def resolve_backend(spec: Spec, backend: str) -> str:
    """``auto`` is DeepSpeed for more than one GPU, else the single-process torch backend."""
    if backend not in BACKENDS:
        raise LLMSpecError(f"--backend {backend}: expected auto, torch or deepspeed")
    return backend if backend != "auto" else ("deepspeed" if spec.cluster.gpus > 1 else "torch")


def _launch_deepspeed(job: Job, announce) -> tuple[float | None, float | None]:
    script = job.run_dir / "build" / "launch.sh"
    env = dict(os.environ)
    # the launcher and its ranks come from this interpreter's environment, activated or not
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("MASTER_PORT", str(_free_port()))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(cache_dir() / "torch_extensions"))  # DeepSpeed's JIT-built ops
    announce(f"launching {script}")
    done = subprocess.run(["bash", str(script), "--run-dir", str(job.run_dir.resolve())], env=env)
    if done.returncode != 0:
        raise LLMSpecError(f"deepspeed: the launcher exited with status {done.returncode}; see the output above")
    records = read_metrics(job.metrics_file)
    losses = [r["loss"] for r in records if "loss" in r]
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    return (losses[-1] if losses else None), (vals[-1] if vals else None)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


