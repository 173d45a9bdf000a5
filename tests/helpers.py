"""Shared test helpers: specs with overrides, plans, the tiny base, `llmspec` as a subprocess, metrics read back.

Test modules import these as ``from helpers import ...`` (pytest puts tests/ on the path: pyproject's pythonpath);
fixtures live in tests/conftest.py. No test module imports another test module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from llmspec.planner import Plan, plan
from llmspec.spec.loading import load_spec, parse_spec

MINIMAL = """
name: t
model: {vocab_size: 1000, d_model: 64, n_layers: 2, n_heads: 4, max_seq_len: 128}
training: {seq_len: 128, global_batch_size: 8, max_steps: 10}
"""

# The `tiny` run (600 steps on the built-in corpus) exported with `export-hf`: the post-training tests import it as a
# user would (`import-hf`, the `base` fixture), so no test needs a 4-minute pretraining run.
TINY_HF = Path(__file__).parent / "fixtures" / "tiny-hf"

LORA = ["post_training.adapter.type=lora", "post_training.adapter.r=16", "post_training.adapter.alpha=32",
        "post_training.adapter.targets=all-linear"]

# Published layouts that differ from a measured named spec only in what measure does not read (the number of
# nodes, the global batch, the overlap of communication): test_measure skips them, test_published asserts the claim.
MEASURED_AS = {"published/llama3-405b-8k": "llama3-405b", "published/llama3-405b-16k": "llama3-405b"}


def planned(name: str, *sets: str, alternatives: bool = False) -> Plan:
    return plan(load_spec(name, list(sets)), alternatives=alternatives)


def minimal(*sets: str):
    return parse_spec(MINIMAL, sets=list(sets))


def cli(*args: str, cwd: Path) -> subprocess.Popen:
    """`llmspec ARGS` as a user runs it: its own process (one compute thread), stdout and stderr as one text stream."""
    return subprocess.Popen([sys.executable, "-m", "llmspec", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def losses(run_dir: Path) -> list[tuple]:
    """(step, loss, lr, val_loss) of every record a run logged."""
    from llmspec.train.metrics import read_metrics

    return [(r["step"], r.get("loss"), r.get("lr"), r.get("val_loss")) for r in read_metrics(run_dir / "metrics.jsonl")]


def killed_and_resumed(spec, tmp_path) -> list[dict]:
    """Run ``spec`` whole, and again killed (SIGKILL) right after its first checkpoint, then ``--resume``d; assert
    the two metrics.jsonl agree in every logged number but the timings; return the whole run's records."""
    import signal
    import time

    from llmspec.spec.loading import dump_spec
    from llmspec.train.checkpoint import list_checkpoints
    from llmspec.train.metrics import read_metrics

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(dump_spec(spec))
    whole = cli("run", str(spec_file), "--out", str(tmp_path / "whole"), cwd=tmp_path)
    assert whole.wait(timeout=600) == 0, whole.stdout.read()
    killed = cli("run", str(spec_file), "--out", str(tmp_path / "killed"), cwd=tmp_path)
    deadline = time.time() + 300
    while not list_checkpoints(tmp_path / "killed" / "checkpoints") and time.time() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert len(losses(tmp_path / "killed")) < len(losses(tmp_path / "whole")), "killed too late"
    resumed = cli("run", str(spec_file), "--out", str(tmp_path / "killed"), "--resume", cwd=tmp_path)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0 and "resumed from" in output, output

    def records(run_dir):
        return [{k: v for k, v in r.items() if k not in ("tokens_per_second", "mfu", "phase_seconds", "peak_memory")}
                for r in read_metrics(run_dir / "metrics.jsonl")]

    assert records(tmp_path / "killed") == records(tmp_path / "whole")
    return records(tmp_path / "whole")
