"""GPU-only paths: fp16 with loss scaling, bf16 and NCCL under DeepSpeed. Skipped without a CUDA GPU (CI has
none); exercised on a machine with one. The spec names this machine's GPU as a custom device, so that pre-flight
and the plan are this machine's."""

from __future__ import annotations

import pytest
import torch

from llmspec.runner import run
from llmspec.spec.loading import load_spec
from llmspec.train.metrics import read_metrics

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _this_gpu(count: int) -> list[str]:
    memory_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    device = (f"{{name: this-gpu, memory_gib: {memory_gib:.2f}, "
              "peak_tflops: {fp32: 50.0, bf16: 900.0, fp16: 900.0}}")
    return [f"cluster.gpu={device}", f"cluster.gpus_per_node={count}", "cluster.nodes=1",
            "training.max_steps=8", "training.log_interval=1", "training.eval_interval=8"]


def _losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_tracks_fp32_on_one_gpu(precision, tmp_path):
    sets = _this_gpu(1)
    run(load_spec("tiny", sets + ["training.precision=fp32"]), tmp_path / "fp32", backend="torch", announce=print)
    run(load_spec("tiny", sets + [f"training.precision={precision}"]), tmp_path / precision, backend="torch",
        announce=print)
    ours, reference = _losses(tmp_path / precision), _losses(tmp_path / "fp32")
    assert all(loss == loss for loss in ours)  # no NaN: the loss scaler skipped any overflowing step
    assert ours[0] == pytest.approx(reference[0], rel=2e-2) and ours[-1] == pytest.approx(reference[-1], rel=5e-2)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("layout", [["parallelism.zero_stage=2"], ["parallelism.tensor=2"]], ids=["zero2", "tp2"])
def test_deepspeed_over_nccl_tracks_the_single_gpu_run(precision, layout, tmp_path):
    spec = load_spec("tiny", _this_gpu(2) + layout + [f"training.precision={precision}",
                                                      "training.micro_batch_size=8"])
    run(spec, tmp_path / "torch", backend="torch", announce=print)
    run(spec, tmp_path / "ds", backend="deepspeed", announce=print)
    assert _losses(tmp_path / "ds")[0] == pytest.approx(_losses(tmp_path / "torch")[0], rel=2e-2)


def test_measure_steps_times_one_gpu_and_writes_its_calibration(tmp_path):
    from llmspec.train.timing import calibration_for, measure_steps

    spec = load_spec("tiny", _this_gpu(1) + ["training.precision=bf16"])
    timing = measure_steps(spec, steps=3, run=run, backend="torch", run_dir=tmp_path / "run")
    assert timing.steps == 3 and timing.peak_memory_source == "CUDA max allocated" and timing.peak_memory > 0
    path = tmp_path / "this-gpu.json"
    path.write_text(calibration_for(timing))
    assert '"measured"' in path.read_text() and timing.to_json()["measured"]["step_seconds"] > 0
