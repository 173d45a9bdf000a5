"""`llmspec measure SPEC --steps N`: timed training steps beside the plan, and the calibration file they write."""

from __future__ import annotations

import json

import pytest
from helpers import planned
from typer.testing import CliRunner

from llmspec.cli.app import app
from llmspec.spec.loading import load_spec
from llmspec.train.timing import StepTiming, _timed_spec, calibration_for


def test_the_timed_run_logs_every_step_and_nothing_else():
    spec = _timed_spec(load_spec("tiny"), steps=5, warmup=2)
    tr = spec.training
    assert (tr.max_steps, tr.log_interval) == (7, 1)
    assert tr.eval_interval > 7 and tr.checkpoint_interval > 7  # no evaluation or checkpoint inside the timing
    assert spec.model == load_spec("tiny").model and spec.parallelism == load_spec("tiny").parallelism


def test_a_calibration_file_makes_the_plan_the_measured_step(tmp_path):
    spec = load_spec("llama2-7b", ["cluster.gpu=H100-SXM", "cluster.nodes=1", "training.global_batch_size=64"])
    plan = planned("llama2-7b", "cluster.gpu=H100-SXM", "cluster.nodes=1", "training.global_batch_size=64")
    measured = 1.3 * plan.time["step_seconds"]  # a GPU slower than the catalogue's
    timing = StepTiming(spec, plan, 3, [measured] * 3, peak_memory=1, peak_memory_source="CUDA max allocated",
                        backend="torch")
    path = tmp_path / "h100.json"
    path.write_text(calibration_for(timing))
    written = json.loads(path.read_text())
    assert written["gpu"] == "H100-SXM" and written["measured"]["step_seconds"] == measured
    assert written["matmul"] < plan.env["eff"]
    replanned = planned("llama2-7b", "cluster.gpu=H100-SXM", "cluster.nodes=1", "training.global_batch_size=64",
                        f"cluster.calibration={path}")
    assert replanned.time["step_seconds"] == pytest.approx(measured, rel=2e-3)  # the file's rates rounded to 4 places


def test_measure_steps_usage_mistakes_are_one_line():
    runner = CliRunner()
    for args, needle in ((["tiny", "--write-calibration", "x.json"], "--write-calibration needs --steps"),
                         (["tiny", "--steps", "0"], "--steps 0: expected at least 1"),
                         (["tiny", "--steps", "1", "--backend", "jax"], "--backend jax")):
        result = runner.invoke(app, ["measure", *args])
        assert result.exit_code == 2 and needle in result.output, result.output
        assert "Traceback" not in result.output


@pytest.mark.integration
def test_measure_steps_times_the_compiled_model_here(tmp_path):
    from llmspec.runner import run
    from llmspec.train.timing import measure_steps

    timing = measure_steps(load_spec("tiny"), steps=2, run=run, warmup=1, run_dir=tmp_path / "run")
    assert timing.steps == 2 and all(s > 0 for s in timing.step_seconds)
    assert timing.peak_memory > 2**20 and timing.peak_memory_source == "peak RSS"
    out = timing.to_json()
    assert set(out["planned"]) >= {"step_seconds", "tokens_per_second", "mfu", "peak_memory", "compute_seconds"}
    assert set(out["measured"]) >= {"step_seconds", "tokens_per_second", "mfu", "peak_memory"}
    assert out["measured"]["tokens_per_second"] == pytest.approx(
        timing.spec.training.tokens_per_step / timing.measured_step)
