"""``llmspec run``: train a spec, with a progress bar on a terminal and plain progress lines elsewhere (nohup, a
cluster job's log); the work is ``llmspec.runner.run``."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from llmspec.cli.common import HostfileOpt, SetOpt, load_with_hosts, new_console


def run(spec: Annotated[str, typer.Argument(help="a spec file or named spec (default: tiny, the embedded default)")]
        = "tiny",
        set_: SetOpt = None, hostfile: HostfileOpt = None,
        out: Annotated[Path | None, typer.Option("--out", help="run directory (default runs/<name>)")] = None,
        resume: Annotated[bool, typer.Option(help="continue from the latest checkpoint in the run directory")] = False,
        backend: Annotated[str, typer.Option(help="auto, torch or deepspeed")] = "auto",
        compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model (torch backend)")]
        = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="check everything a run would refuse, then stop "
                                              "(nothing is written)")] = False,
        force: Annotated[bool, typer.Option("--force", help="train in a directory that holds files a run did not "
                                            "write (they may be replaced)")] = False) -> None:
    """Train the spec: plan → build → tokenizer and data → backend → eval → samples, all in RUN_DIR."""
    from llmspec.cli.report import render_plan_summary
    from llmspec.planner.training import plan
    from llmspec.runner import default_run_dir, prepare_run, resolve_backend, train_job  # imports torch
    from llmspec.train.methods import method_for

    loaded = load_with_hosts(spec, set_, hostfile)
    console = new_console()

    def say(text: str) -> None:
        _line(console, text)
    run_dir = out
    if run_dir is None:
        run_dir, finished = default_run_dir(loaded, resume)
        if finished:  # the README's command, run again: show what it made instead of refusing
            _report_finished(run_dir, console)
            return
        if run_dir.name != loaded.name:
            console.print(f"runs/{loaded.name} holds another run (--resume continues it); this one trains in "
                          f"{run_dir}")
    planned = plan(loaded)  # once: the summary, the checks, build's plan.json and the step lines read it
    render_plan_summary(loaded, console, planned)
    if dry_run:
        prepare_run(loaded, run_dir, resume, backend, dry_run=True, planned=planned, force=force, announce=say)
        console.print(f"dry run: {loaded.name} would train {loaded.training.steps:,} steps in {run_dir} "
                      f"({resolve_backend(loaded, backend)} backend); nothing was written")
        return
    try:
        # refusals before the progress bar; then the data steps, each said as it starts and ends
        job = prepare_run(loaded, run_dir, resume, backend, planned=planned, force=force, announce=say)
        with _training_progress(console, loaded.training, method_for(loaded).tokens_per_step()) as progress:
            summary = train_job(job, backend, announce=say, progress=progress, compile=compile_)
    except KeyboardInterrupt:
        from llmspec.train.checkpoint import latest_checkpoint

        last = latest_checkpoint(run_dir / "checkpoints")
        kept = f"its last checkpoint is {last}" if last else "no checkpoint was written"
        print(f"interrupted: {kept}; add --resume to continue", file=sys.stderr)
        raise typer.Exit(130) from None
    if summary.val_loss is not None and summary.perplexity:
        import math

        about = (f"; the corpus's unigram entropy is {summary.unigram_entropy:.3f}"
                 if summary.unigram_entropy is not None else "")
        console.print(f"validation loss {summary.val_loss:.3f} nats/token (perplexity "
                      f"{math.exp(summary.val_loss):.1f}) after {summary.steps} steps{about}")
    elif summary.val_loss is not None:  # a preference or RL loss: no perplexity
        console.print(f"validation loss {summary.val_loss:.3f} after {summary.steps} steps")
    if summary.throughput is not None:
        measured, planned = summary.throughput
        console.print(f"throughput: {measured:,.0f} tokens/s measured, {planned:,.0f} planned")
    if summary.phases:
        parts = [f"{name} {measured:.2f} s ({planned:.2f})" for name, (measured, planned) in summary.phases.items()]
        console.print("seconds per step, measured (planned): " + ", ".join(parts))
    if summary.task_accuracy is not None:
        start, end = summary.task_accuracy
        console.print(f"task accuracy on held-out prompts: {start:.1%} at step 0 → {end:.1%}")
    console.print(f"run directory: {run_dir} (metrics.jsonl, loss.png, samples.txt, checkpoints/)")
    for text in summary.samples:
        console.print(f"[dim]---[/]\n{text}")


def _report_finished(run_dir: Path, console) -> None:
    from llmspec.train.metrics import read_metrics

    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    val = [r["val_loss"] for r in records if "val_loss" in r]
    about = f"; validation loss {val[-1]:.3f}" if val else ""
    console.print(f"{run_dir}: already trained to its last step{about}. `llmspec generate {run_dir} PROMPT` samples "
                  f"from it; --resume continues it, --out DIR trains anew.")
    samples = run_dir / "samples.txt"
    if samples.exists():
        console.print(samples.read_text().rstrip(), markup=False, highlight=False)


def _line(console, text: str) -> None:
    """One plain line, flushed (rich flushes each print), never wrapped: a log file is read by grep."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _training_progress(console, training, tokens_per_step: int):
    """A context manager yielding the progress callback: a rich progress bar (step, loss, lr, ETA) on a terminal;
    elsewhere (nohup, a cluster job: the bar draws only on a terminal) a plain line every log_interval."""
    total = training.steps
    if not console.is_terminal:
        from llmspec.train.loggers import ProgressLines

        return contextlib.nullcontext(ProgressLines(total, tokens_per_step, training.log_interval,
                                                    lambda text: _line(console, text)))
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
