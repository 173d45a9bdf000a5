"""``llmspec run``: train a spec, with a progress bar; the work is ``llmspec.runner.run``."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated

import typer

from llmspec.cli.common import SetOpt, new_console


def run(spec: Annotated[str, typer.Argument(help="a spec file or named spec (default: tiny, the embedded default)")]
        = "tiny",
        set_: SetOpt = None,
        out: Annotated[Path | None, typer.Option("--out", help="run directory (default runs/<name>)")] = None,
        resume: Annotated[bool, typer.Option(help="continue from the latest checkpoint in the run directory")] = False,
        backend: Annotated[str, typer.Option(help="auto, torch or deepspeed")] = "auto",
        compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model (torch backend)")]
        = False) -> None:
    """Train the spec: plan → build → tokenizer and data → backend → eval → samples, all in RUN_DIR."""
    from llmspec.spec.loading import load_spec

    loaded = load_spec(spec, set_ or [])
    run_dir = out or Path("runs") / loaded.name
    from llmspec.cli.report import render_plan_summary
    from llmspec.runner import resolve_backend
    from llmspec.runner import run as start_run  # imports torch

    # DeepSpeed's ranks print their own progress; the bar follows the in-process torch backend
    bar = resolve_backend(loaded, backend) == "torch"
    console = new_console()
    render_plan_summary(loaded, console)
    steps, tokens = loaded.training.steps, loaded.training.tokens_per_step
    with _training_progress(console, steps, tokens) if bar else contextlib.nullcontext() as progress:
        summary = start_run(loaded, run_dir, resume, backend, announce=console.print, progress=progress,
                            compile=compile_)
    if summary.val_loss is not None:
        import math

        console.print(f"validation loss {summary.val_loss:.3f} nats/token (perplexity "
                      f"{math.exp(summary.val_loss):.1f}) after {summary.steps} steps; the corpus's unigram "
                      f"entropy is {summary.unigram_entropy:.3f}")
    console.print(f"run directory: {run_dir} (metrics.jsonl, loss.png, samples.txt, checkpoints/)")
    for text in summary.samples:
        console.print(f"[dim]---[/]\n{text}")


def _training_progress(console, total: int, tokens_per_step: int):
    """A rich progress bar (step, loss, lr, ETA) as a context manager yielding the update callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    @contextlib.contextmanager
    def bar():
        columns = (TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[status]}"),
                   TimeRemainingColumn())
        # Redrawn once per step, not by rich's 10 Hz refresh thread: that thread competes with the training
        # threads for the CPU and cost ~20% of a CPU run's throughput.
        with Progress(*columns, console=console, transient=False, auto_refresh=False) as progress:
            task = progress.add_task("train", total=total, status="")

            since: dict[str, float] = {}  # tokens/s counts from the first update, after start-up

            def update(step: int, loss: float | None, lr: float, val_loss: float | None) -> None:
                if not since:
                    since.update(step=step, time=time.perf_counter())
                elapsed = time.perf_counter() - since["time"]
                rate = (step - since["step"]) * tokens_per_step / elapsed if elapsed > 0 else 0.0
                # the loss is read on the host only at log steps; until the first, there is none to show
                status = (f"loss {loss:.3f} · " if loss is not None else "") + f"lr {lr:.2e} · {rate:,.0f} tok/s"
                progress.update(task, completed=step, status=status + (f" · val {val_loss:.3f}" if val_loss else ""),
                                refresh=True)

            yield update

    return bar()
