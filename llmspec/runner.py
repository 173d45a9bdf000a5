"""``llmspec run``: prepare the run directory, train it with the engine the layout needs, then plot and sample.

The torch engine runs in this process; DeepSpeed's ranks are started through the compiled ``build/launch.sh``
(each rank runs ``llmspec.backends.deepspeed_worker``). Both train under the one loop, ``llmspec.train.loop.fit``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from llmspec.backends.cpu_shm import remove_allreduce_buffers
from llmspec.backends.runnable import ENGINES, pick_engine
from llmspec.backends.torch_backend import train
from llmspec.errors import LLMSpecError
from llmspec.planner.result import Plan
from llmspec.spec import Spec, parse_spec
from llmspec.spec.compare import changed_fields
from llmspec.train.checkpoint import latest_checkpoint
from llmspec.train.generate import write_samples
from llmspec.train.job import Job, cache_dir, prepare
from llmspec.train.loggers import check_loggers
from llmspec.train.methods import method_for
from llmspec.train.metrics import loss_title, plot_loss, read_metrics


@dataclass
class RunSummary:
    run_dir: Path
    steps: int
    loss: float | None
    val_loss: float | None
    unigram_entropy: float | None  # pretraining: the loss of a model that ignores context
    samples: list[str]
    task_accuracy: tuple[float, float] | None = None  # post-training: (at step 0, at the end) on held-out prompts
    throughput: tuple[float, float] | None = None  # (measured, planned) tokens/s
    phases: dict[str, tuple[float, float]] | None = None  # ppo/grpo: phase → (measured, planned) seconds per step
    perplexity: bool = True  # whether val_loss is a next-token cross-entropy (not a reward, DPO or RL loss)


def run(spec: Spec, run_dir: str | Path, resume: bool = False, backend: str = "auto", announce=print,
        progress=None, compile: bool = False, planned: Plan | None = None, force: bool = False) -> RunSummary:
    """Prepare RUN_DIR, train, then plot the loss and write samples (``planned``: the spec's plan, made once by the
    caller and handed down to the build and the step lines; ``announce``: told the data steps as they go, and
    what the run says besides its progress)."""
    job = prepare_run(spec, run_dir, resume, backend, planned=planned, force=force, announce=announce)
    return train_job(job, backend, announce, progress, compile)


def prepare_run(spec: Spec, run_dir: str | Path, resume: bool = False, backend: str = "auto",
                dry_run: bool = False, planned: Plan | None = None, force: bool = False,
                announce=lambda line: None) -> Job | None:
    """Everything before training: refusals (fit, the method's and the engine's, resume, training.loggers'
    libraries), build, tokenizer and token shards (``dry_run``: the refusals only; nothing is written; ``force``:
    train in a directory holding files a run did not write; ``announce``: told the data steps as they go)."""
    engine = resolve_backend(spec, backend)
    check_loggers(spec)
    return prepare(spec, Path(run_dir), resume, ENGINES[engine].refusals, dry_run, planned, force=force,
                   announce=announce)


def train_job(job: Job, backend: str = "auto", announce=print, progress=None, compile: bool = False) -> RunSummary:
    spec, run_dir = job.spec, job.run_dir
    if resolve_backend(spec, backend) == "torch":
        result = train(job, announce, progress, compile)
        loss, val_loss = result.loss, result.val_loss
    else:
        if compile:
            announce("--compile applies to the torch backend; DeepSpeed runs the model uncompiled")
        loss, val_loss = _launch_deepspeed(job, announce, progress)
    method = method_for(spec)
    plot_loss(job.metrics_file, run_dir / "loss.png", loss_title(spec), method.token_cross_entropy)
    samples = write_samples(run_dir, method.sample_prompts(job))
    entropy = job.shards.unigram_entropy if job.shards is not None else None
    records = read_metrics(job.metrics_file)
    accuracy = [r["task_accuracy"] for r in records if "task_accuracy" in r]
    return RunSummary(run_dir, spec.training.steps, loss, val_loss, entropy, samples,
                      (accuracy[0], accuracy[-1]) if accuracy else None, *planned_and_measured(records),
                      perplexity=method.token_cross_entropy)


def planned_and_measured(records: list[dict]) -> tuple[tuple[float, float] | None, dict | None]:
    """Median measured tokens/s beside the plan's, and an RL run's median seconds per step by phase beside the
    plan's, over the step lines after the first (which holds start-up: building, the first batches)."""
    import statistics

    lines = [r for r in records if "planned_tokens_per_second" in r]
    lines = lines[1:] or lines
    if not lines:
        return None, None
    throughput = (statistics.median(r["tokens_per_second"] for r in lines), lines[-1]["planned_tokens_per_second"])
    timed = [r for r in lines if "phase_seconds" in r]
    phases = {name: (statistics.median(r["phase_seconds"][name] for r in timed), planned)
              for name, planned in timed[-1]["planned_phase_seconds"].items()} if timed else None
    return throughput, phases


def default_run_dir(spec: Spec, resume: bool = False, root: Path = Path("runs")) -> tuple[Path, bool]:
    """Where ``llmspec run`` without ``--out`` trains: ``runs/<name>`` (always, with ``resume``); when that holds a
    run already, whether it is this spec's run finished (True: nothing to train), else the first free
    ``runs/<name>-N``."""
    base = root / spec.name
    if resume or latest_checkpoint(base / "checkpoints") is None:
        return base, False
    if _finished(base, spec):
        return base, True
    n = 2
    while latest_checkpoint(root / f"{spec.name}-{n}" / "checkpoints") is not None:
        n += 1
    return root / f"{spec.name}-{n}", False


def _finished(run_dir: Path, spec: Spec) -> bool:
    try:
        saved = parse_spec((run_dir / "spec.yaml").read_text(), source=str(run_dir / "spec.yaml"))
    except (OSError, LLMSpecError):
        return False
    last = latest_checkpoint(run_dir / "checkpoints")
    return not changed_fields(saved, spec) and last is not None and last.name == f"step-{spec.training.steps:08d}.pt"


def resolve_backend(spec: Spec, backend: str) -> str:
    """The engine ``--backend`` names for ``spec``: ``auto`` is DeepSpeed for more than one GPU, else the
    single-process torch engine."""
    return pick_engine(spec, backend)


def _launch_deepspeed(job: Job, announce, progress=None) -> tuple[float | None, float | None]:
    """Run build/launch.sh (DeepSpeed's launcher, one process per rank) to the end. The progress callback follows
    metrics.jsonl, which rank 0 writes. Ctrl-C stops the launcher and its ranks, then exits quietly (130)."""
    script = job.run_dir / "build" / "launch.sh"
    env = dict(os.environ)
    # the launcher and its ranks come from this interpreter's environment, activated or not
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("MASTER_PORT", str(_free_port()))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(cache_dir() / "torch_extensions"))  # DeepSpeed's JIT-built ops
    announce(f"launching {script}")
    # its own session: a Ctrl-C reaches this process only, which then stops the launcher's whole group
    launcher = subprocess.Popen(["bash", str(script), "--run-dir", str(job.run_dir.resolve())], env=env,
                                start_new_session=True)
    follower = MetricsFollower(job.metrics_file, progress)
    try:
        while launcher.poll() is None:
            follower.poll()
            time.sleep(0.5)
    except KeyboardInterrupt:
        _stop(launcher)
        raise
    finally:  # what a killed rank did not remove (a rank removes its own when it ends)
        remove_allreduce_buffers(env["MASTER_PORT"])
    follower.poll()
    if launcher.returncode != 0:
        raise LLMSpecError(f"deepspeed: the launcher exited with status {launcher.returncode}; see the output above")
    records = read_metrics(job.metrics_file)
    losses = [r["loss"] for r in records if "loss" in r]
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    return (losses[-1] if losses else None), (vals[-1] if vals else None)


class MetricsFollower:
    """Calls ``progress(step, loss, lr, val_loss)`` for each record rank 0 appends to metrics.jsonl."""

    def __init__(self, path: Path, progress):
        self.path, self.progress, self.offset = path, progress, 0
        self.loss = self.lr = self.val_loss = None

    def poll(self) -> None:
        if self.progress is None or not self.path.exists():
            return
        with open(self.path) as handle:
            handle.seek(self.offset)
            for line in handle:
                if not line.endswith("\n"):
                    break  # a line still being written
                self.offset += len(line.encode())
                record = json.loads(line)
                self.loss, self.lr = record.get("loss", self.loss), record.get("lr", self.lr)
                self.val_loss = record.get("val_loss", self.val_loss)
                if self.lr is not None:
                    self.progress(record["step"], self.loss, self.lr, self.val_loss)


def _stop(launcher: subprocess.Popen) -> None:
    """SIGTERM to the launcher's process group: the launcher stops its ranks; nothing prints a traceback. SIGKILL
    after 30 s."""
    try:
        os.killpg(launcher.pid, signal.SIGTERM)
        launcher.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
    except ProcessLookupError:
        pass


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
