"""Where a run's records go, and how a run shows its progress.

A record (a step line or an eval line of ``metrics.jsonl``) is written by one call, ``RunLoggers.write``, to every
sink: ``metrics.jsonl`` always (the source of truth: resume, plots and the summary read it), and the ones
``training.loggers`` names: ``tensorboard`` (tensorboard's ``SummaryWriter``, RUN_DIR/tensorboard), ``wandb``
(offline unless the user configured wandb: ``WANDB_MODE`` set), ``csv`` (RUN_DIR/metrics.csv). Each gets the
same keys; a nested key (``phase_seconds: {generation: …}``) is ``phase_seconds/generation`` outside the JSON.
Only the process that writes metrics (the torch engine's, a DeepSpeed run's rank 0) opens them.

``ProgressLines`` is the plain progress of a run whose output is not a terminal (nohup, a cluster job's log):
one line per ``log_interval`` with step, loss, tokens/s and the time left (the data steps before it say
themselves through ``prepare``'s ``announce``).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmspec.errors import LLMSpecError
from llmspec.files import write_atomic
from llmspec.spec.schema import Spec

Announce = Callable[[str], None]

TENSORBOARD_DIR = "tensorboard"
CSV_FILE = "metrics.csv"

# the plan's figures beside what the run measures, one TensorBoard chart each (custom scalars; tags are regexes)
PLAN_CHARTS = {
    "tokens/s, measured and planned": ["tokens_per_second", "planned_tokens_per_second"],
    "peak memory (bytes), measured and planned": ["peak_memory", "planned_peak_memory"],
    "seconds per step by phase, measured and planned": [r"phase_seconds/.*", r"planned_phase_seconds/.*"],
}


class LoggerError(LLMSpecError):
    pass


def parse_records(path: Path, announce: Announce | None = None) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl. A killed run can leave its last line cut off mid-write: that line is
    dropped (saying so through ``announce``); an unreadable line anywhere else is damage, refused naming it."""
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if any(rest.strip() for rest in lines[number:]):
                raise LoggerError(f"{path}:{number}: not a JSON record (the file is damaged; only a last line cut "
                                  "off by a kill is repaired)") from None
            if announce:
                announce(f"{path}: dropped its last line, cut off when the run was stopped ({len(line)} bytes)")
    return records


class MetricsLog:
    """metrics.jsonl: append-only JSON Lines, flushed per line. On resume, lines after the checkpoint's step are
    dropped (and a last line cut off by a kill), so the file reads as one uninterrupted run."""

    def __init__(self, path: Path, resume_step: int | None, announce: Announce | None = print):
        self.path = path
        kept = []
        if resume_step is not None and path.exists():
            kept = [r for r in parse_records(path, announce) if r["step"] <= resume_step]
        self.kept = kept  # what the run continues from: the other sinks start from it
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.handle = open(path, "a")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A record with its nested keys joined by ``/`` (TensorBoard's and W&B's grouping)."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a record but its step, flattened."""
    return {key: float(value) for key, value in flatten(record).items()
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool)}


class CsvSink:
    """RUN_DIR/metrics.csv: one row per record, a column per key of metrics.jsonl (flattened); a record with a key
    the header lacks rewrites the file with it (a run's keys settle after its first step and eval lines)."""

    def __init__(self, path: Path, records: list[dict[str, Any]]):
        self.path, self.rows = path, [flatten(r) for r in records]
        self.columns: list[str] = []
        self._rewrite()

    def _rewrite(self) -> None:
        self.columns = list(dict.fromkeys(key for row in self.rows for key in row)) or ["step"]
        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def write(self, record: dict[str, Any]) -> None:
        row = flatten(record)
        self.rows.append(row)
        if not set(row) <= set(self.columns):
            self._rewrite()
            return
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, self.columns).writerow(row)

    def close(self) -> None:
        pass


class TensorBoardSink:
    """RUN_DIR/tensorboard: every number of every record as a scalar at its step (``tensorboard --logdir
    RUN_DIR``), the plan's figures charted beside the measured ones, and the spec as text. A resumed run purges
    the events after its checkpoint's step, as metrics.jsonl drops its lines."""

    def __init__(self, log_dir: Path, spec: Spec, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=None if resume_step is None else resume_step + 1)
        if resume_step is None:
            from llmspec.spec.loading import dump_spec

            self.writer.add_custom_scalars(
                {"llmspec plan": {title: ["Multiline", tags] for title, tags in PLAN_CHARTS.items()}})
            self.writer.add_text("spec", "```\n" + dump_spec(spec) + "\n```", 0)

    def write(self, record: dict[str, Any]) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()  # a watched run: each record visible as it is logged

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run in RUN_DIR/wandb, offline unless the user configured wandb (``WANDB_MODE`` set: then as it
    says); ``wandb sync`` uploads an offline run later."""

    def __init__(self, run_dir: Path, spec: Spec):
        import wandb

        mode = None if os.environ.get("WANDB_MODE") else "offline"  # a user's WANDB_MODE is theirs to keep
        self.offline = (mode or os.environ["WANDB_MODE"]) in ("offline", "dryrun")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "llmspec"), name=run_dir.name,
                              dir=str(run_dir), config=spec.model_dump(mode="json"), mode=mode)

    def write(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()


def check_loggers(spec: Spec) -> None:
    """Pre-flight: refuse, on one line, a logger whose library is not installed."""
    for name, module in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if name in spec.training.loggers and importlib.util.find_spec(module) is None:
            raise LoggerError(f"training.loggers: {name} needs the {module} package (pip install {module}), or "
                              f"leave {name} out")


class RunLoggers:
    """Every sink of a run; ``write`` sends a record to each, metrics.jsonl first."""

    def __init__(self, spec: Spec, metrics_file: Path, resume_step: int | None, announce: Announce | None = print):
        check_loggers(spec)
        run_dir = metrics_file.parent
        self.metrics = MetricsLog(metrics_file, resume_step, announce)
        self.sinks: list = [self.metrics]
        for name in spec.training.loggers:
            if name == "csv":
                self.sinks.append(CsvSink(run_dir / CSV_FILE, self.metrics.kept))
            elif name == "tensorboard":
                self.sinks.append(TensorBoardSink(run_dir / TENSORBOARD_DIR, spec, resume_step))
                if announce:
                    announce(f"tensorboard: watch it with `tensorboard --logdir {run_dir / TENSORBOARD_DIR}`")
            elif name == "wandb":
                self.sinks.append(WandbSink(run_dir, spec))
                if announce and self.sinks[-1].offline:
                    announce(f"wandb: offline, in {run_dir / 'wandb'} (`wandb sync` uploads it)")

    def write(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressLines:
    """A run's progress as plain lines, for output that is not a terminal: called as ``progress(step, loss, lr,
    val_loss)`` (``llmspec.train.loop.Progress``) every step, it prints one line per ``interval`` steps (and at
    the last): ``step 20/600 · loss 4.210 · lr 3.00e-04 · 12,345 tok/s · ETA 0:02:13 · val 4.305``."""

    def __init__(self, total: int, tokens_per_step: int, interval: int, announce: Announce = print):
        self.total, self.tokens_per_step, self.interval, self.announce = total, tokens_per_step, interval, announce
        self.since: tuple[int, float] | None = None  # rates count from the first call, after start-up
        self.shown: tuple[int, float | None] | None = None

    def __call__(self, step: int, loss: float | None, lr: float, val_loss: float | None) -> None:
        now = time.perf_counter()
        if self.since is None:
            self.since = (step, now)
        if (step % self.interval and step != self.total) or self.shown == (step, val_loss):
            return
        self.shown = (step, val_loss)
        first, start = self.since
        elapsed, done = now - start, step - first
        parts = [f"step {step}/{self.total}"]
        if loss is not None:  # read on the host only at log steps
            parts.append(f"loss {loss:.4f}")
        parts.append(f"lr {lr:.2e}")
        if done > 0 and elapsed > 0:
            parts += [f"{done * self.tokens_per_step / elapsed:,.0f} tok/s",
                      f"ETA {_clock((self.total - step) * elapsed / done)}"]
        if val_loss is not None:
            parts.append(f"val {val_loss:.4f}")
        self.announce(" · ".join(parts))
