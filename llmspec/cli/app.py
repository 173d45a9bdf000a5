"""``llmspec`` command line: a thin typer shell over the Python API.

Heavy imports (rich tables, sympy, matplotlib) happen inside the commands that need them, so that
``llmspec plan SPEC --json`` stays well under half a second.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from llmspec.errors import LLMSpecError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="One YAML spec for an LLM training job: plan it, build it, measure it.")

SpecArg = Annotated[str, typer.Argument(help="a spec file, or the name of a spec in specs/ (see `llmspec specs`)")]
SetOpt = Annotated[list[str], typer.Option("--set", help="override a field: section.field=value (repeatable)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _user_errors(command):
    """Turn errors a user caused into one line each on stderr and exit code 2 (never a traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LLMSpecError as err:
            for line in str(err).splitlines():
                print(f"error: {line}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper


def _console():
    from rich.console import Console

    return Console()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=float))


@app.command()
@_user_errors
def plan(spec: SpecArg, set_: SetOpt = None, json_: JsonOpt = False,
         plot: Annotated[Path | None, typer.Option(help="write the memory-by-strategy chart (PNG)")] = None,
         alternatives: Annotated[bool, typer.Option(help="also plan every ZeRO × checkpointing × offload")] = True,
         max_: Annotated[str | None, typer.Option("--max", help="largest micro_batch_size, seq_len or n_layers "
                                                  "that still fits")] = None,
         inference: Annotated[bool, typer.Option(help="plan serving instead: weights, KV cache, throughput")] = False,
         context: Annotated[int | None, typer.Option(min=1, help="--inference: tokens per sequence")] = None,
         batch: Annotated[int, typer.Option(min=1, help="--inference: sequences decoded together")] = 1,
         ) -> None:
    """Parameters, FLOPs, per-GPU memory, fit, time and cost, for the spec's strategy and its alternatives."""
    from llmspec.planner.training import plan as make_plan
    from llmspec.spec.loading import load_spec

    if max_ is not None:
        from llmspec.planner.limits import max_fitting

        limit = max_fitting(spec, set_ or [], max_)
        if json_:
            _print_json(limit.__dict__)
        elif limit.value is None:
            print(f"{max_}: even 1 does not fit (usable {limit.usable:,} B)")
        else:
            print(f"{max_}: at most {limit.value} (spec has {limit.current}), bound by {limit.bound}; planned peak "
                  f"{limit.peak:,} B of {limit.usable:,} B usable")
        return
    if inference:
        from llmspec.planner.inference import inference_plan

        served = inference_plan(load_spec(spec, set_ or []), context, batch)
        if json_:
            _print_json(served)
        else:
            from llmspec.cli.report import render_inference

            render_inference(served, _console())
        return

    result = make_plan(load_spec(spec, set_ or []), alternatives=alternatives or plot is not None)
    if plot is not None:
        from llmspec.cli.plots import plot_memory

        _check_writable(plot)
        plot_memory(result, plot)
    if json_:
        _print_json(result.to_json())
        return
    from llmspec.cli.report import render_plan

    console = _console()
    render_plan(result, console)
    if plot is not None:
        console.print(f"wrote {plot}")


@app.command()
@_user_errors
def explain(spec: SpecArg, quantity: Annotated[str | None, typer.Argument(help="e.g. memory_activations")] = None,
            set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Each planner formula (sympy, pretty-printed) beside its value for SPEC."""
    from llmspec.planner.explain import explain as make_explanations
    from llmspec.planner.training import plan as make_plan
    from llmspec.spec.loading import load_spec

    items = make_explanations(make_plan(load_spec(spec, set_ or []), alternatives=False), quantity)
    if json_:
        _print_json([item.__dict__ for item in items])
        return
    console = _console()
    for item in items:
        console.print(f"[bold cyan]{item.name}[/] [dim]({item.group})[/] — {item.doc}")
        console.print(item.formula, highlight=False)
        if item.expanded:
            console.print("[dim]expanded to inputs:[/]")
            console.print(item.expanded, highlight=False)
            console.print("[dim]inputs:[/] " + ", ".join(f"{k} = {v:g}" for k, v in item.inputs.items()))
        value = f"{int(item.value):,}" if item.value.is_integer() and abs(item.value) < 1e18 else f"{item.value:,.6g}"
        console.print(f"[bold]= {value}[/] {item.unit}\n")


@app.command()
@_user_errors
def validate(spec: SpecArg, set_: SetOpt = None) -> None:
    """Check a spec; print every problem with its field path and YAML line (exit 2), or a one-line summary."""
    from llmspec.spec.loading import load_spec

    loaded = load_spec(spec, set_ or [])
    m = loaded.model
    print(f"ok: {loaded.name} — {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads "
          f"({m.n_kv_heads} kv), {loaded.cluster.gpus} × {loaded.cluster.device.name}")


@app.command()
@_user_errors
def build(spec: SpecArg, out: Annotated[Path, typer.Option("-o", "--out", help="output directory")],
          set_: SetOpt = None) -> None:
    """Compile the spec: model.py (standalone PyTorch), ds_config.json, launch.sh, plan.json, spec.yaml."""
    from llmspec.compile.build import build as make_build
    from llmspec.spec.loading import load_spec

    loaded = load_spec(spec, set_ or [])
    for path in make_build(loaded, out):
        print(path)


@app.command()
@_user_errors
def measure(spec: SpecArg, set_: SetOpt = None, json_: JsonOpt = False,
            checkpointing: Annotated[list[str] | None, typer.Option(
                help="none, selective or full (repeatable; default all three)")] = None) -> None:
    """Measure the compiled model without memory (meta and fake tensors) beside the planner's predictions."""
    from llmspec.planner.training import CHECKPOINTING
    from llmspec.spec.loading import load_spec

    modes = tuple(checkpointing or CHECKPOINTING)
    for mode in modes:
        if mode not in CHECKPOINTING:
            raise LLMSpecError(f"--checkpointing {mode}: expected one of {', '.join(CHECKPOINTING)}")
    loaded = load_spec(spec, set_ or [])
    from llmspec.compile.measure import measure as run_measure  # imports torch

    result = run_measure(loaded, modes)
    if json_:
        _print_json(result.to_json())
        return
    from llmspec.cli.report import measurement_table

    _console().print(measurement_table(result))


@app.command("import-hf")
@_user_errors
def import_hf(hf_dir: Annotated[Path, typer.Argument(help="a transformers checkpoint directory (config.json)")],
              out: Annotated[Path, typer.Option("-o", "--out", help="output directory")],
              name: Annotated[str | None, typer.Option(help="spec name (default: the directory's)")] = None) -> None:
    """A transformers checkpoint → spec.yaml (+ model.safetensors in the compiled model's names)."""
    from llmspec.interop.hf import import_hf as run_import

    for path in run_import(hf_dir, out, name):
        print(path)


@app.command("export-hf")
@_user_errors
def export_hf(weights: Annotated[Path, typer.Argument(
                  help="a run directory (llmspec run), weights in the compiled model's names (.safetensors or "
                       ".pt), or a directory holding spec.yaml and model.safetensors (what import-hf writes)")],
              out: Annotated[Path, typer.Option("-o", "--out", help="output directory")],
              spec: Annotated[str | None, typer.Option(help="the spec the weights belong to")] = None,
              set_: SetOpt = None) -> None:
    """Weights of the compiled model → config.json + model.safetensors that transformers loads."""
    from llmspec.interop.hf import export_hf as run_export
    from llmspec.spec.loading import load_spec

    if weights.is_dir() and (weights / "checkpoints").is_dir():
        from llmspec.train.generate import export_run

        for path in export_run(weights, out):
            print(path)
        return
    if weights.is_dir():
        spec = spec or str(weights / "spec.yaml")
        weights = weights / "model.safetensors"
    if spec is None:
        raise LLMSpecError(f"{weights}: pass --spec SPEC (the spec these weights were built from)")
    for path in run_export(weights, load_spec(spec, set_ or []), out):
        print(path)


@app.command()
@_user_errors
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
    console = _console()
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


@app.command()
@_user_errors
def generate(run_dir: Annotated[Path, typer.Argument(help="a run directory (llmspec run)")],
             prompt: Annotated[str, typer.Argument(help="text to continue")],
             max_new_tokens: Annotated[int, typer.Option(min=1)] = 100,
             temperature: Annotated[float, typer.Option(help="0 is greedy")] = 0.8,
             top_k: Annotated[int | None, typer.Option(min=1)] = 50,
             top_p: Annotated[float | None, typer.Option()] = None,
             seed: int = 0) -> None:
    """Sample from the latest checkpoint of a run."""
    from llmspec.train.generate import generate as run_generate

    print(run_generate(run_dir, prompt, max_new_tokens, temperature, top_k, top_p, seed))


@app.command()
@_user_errors
def size(spec: Annotated[str | None, typer.Argument(help="a spec file or named spec (omit with --compute)")] = None,
         set_: SetOpt = None, json_: JsonOpt = False,
         gpu: Annotated[str | None, typer.Option(help="GPU types to consider, comma-separated")] = None,
         max_gpus: Annotated[int, typer.Option(min=1, help="largest cluster to consider")] = 4096,
         deadline: Annotated[str | None, typer.Option(help="finish within this long, e.g. 30d, 12h")] = None,
         budget: Annotated[float | None, typer.Option(help="spend at most this many USD")] = None,
         objective: Annotated[str, typer.Option(help="time or cost: which frontier point is best")] = "time",
         write: Annotated[Path | None, typer.Option(help="write the best layout as a spec (YAML)")] = None,
         plot: Annotated[Path | None, typer.Option(help="time vs cost scatter with the frontier (PNG)")] = None,
         compute: Annotated[str | None, typer.Option(help="compute-optimal sizing for this many FLOPs, e.g. 5.8e23")]
         = None, days: Annotated[float | None, typer.Option(help="with --budget and one --gpu: the run's length")]
         = None) -> None:
    """Search every GPU type, count and parallel layout; print the time/cost Pareto frontier (or size a model)."""
    from llmspec.spec.loading import dump_spec, load_spec
    from llmspec.spec.units import parse_duration

    if plot is not None:
        _check_writable(plot)
    if compute is not None or (spec is None and budget is not None):
        from llmspec.planner.compute_optimal import compute_optimal_report

        result = compute_optimal_report(spec, set_ or [], compute, budget, gpu, days)
        if write:
            write.write_text(dump_spec(result.spec))
        if json_:
            _print_json(result.to_json())
        else:
            from llmspec.cli.report import render_compute_optimal

            render_compute_optimal(result, _console(), write)
        return
    if spec is None:
        raise LLMSpecError("size: give a SPEC to search layouts for, or --compute FLOPS to size a model")
    loaded = load_spec(spec, set_ or [])
    from llmspec.planner.layout_search import search

    gpus = [g.strip() for g in gpu.split(",") if g.strip()] if gpu else None
    try:
        deadline_days = parse_duration(deadline) / 86400 if deadline else None
    except ValueError as error:
        raise LLMSpecError(f"--deadline: {error}") from None
    result = search(loaded, gpus, max_gpus, deadline_days, budget, objective)
    if write:
        if result.best is None:
            raise LLMSpecError(f"--write {write}: no feasible layout to write")
        write.write_text(dump_spec(load_spec(spec, [*(set_ or []), *result.best.sets()])))
    if plot is not None:
        from llmspec.cli.plots import plot_size

        plot_size(result, plot, loaded.name)
    if json_:
        _print_json(result.to_json())
        return
    from llmspec.cli.report import render_size

    render_size(result, loaded, _console())


@app.command()
def schema() -> None:
    """The spec's JSON Schema (for editors' YAML completion)."""
    from llmspec.spec.schema import Spec

    _print_json(Spec.model_json_schema())


@app.command()
@_user_errors
def specs(json_: JsonOpt = False) -> None:
    """List the named specs in specs/."""
    from llmspec.planner.training import plan as make_plan
    from llmspec.spec.loading import load_spec, named_specs

    rows = []
    for name, path in sorted(named_specs().items()):
        spec = load_spec(path)
        about = next((line[2:].strip() for line in path.read_text().splitlines() if line.startswith("# ")), "")
        rows.append({"name": name, "params": make_plan(spec, alternatives=False).params["total"],
                     "gpus": spec.cluster.gpus, "gpu": spec.cluster.device.name, "about": about})
    if json_:
        _print_json(rows)
        return
    from rich.table import Table

    from llmspec.spec.units import fmt_count

    table = Table(show_edge=False)
    for column in ("name", "params", "cluster", "source"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], fmt_count(row["params"]), f"{row['gpus']} × {row['gpu']}", row["about"])
    _console().print(table)


def _check_writable(path: Path) -> None:
    if path.suffix.lower() != ".png":
        raise LLMSpecError(f"--plot {path}: expected a .png file name")
    if not path.parent.exists():
        raise LLMSpecError(f"--plot {path}: folder {path.parent} does not exist")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
