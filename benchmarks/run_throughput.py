"""The default run (specs/tiny.yaml), single process vs 2-rank DeepSpeed on this CPU (ZeRO-2, tensor = 2, pipeline = 2,
and bf16 ZeRO-2): tokens/s and time per step.

    .venv/bin/python benchmarks/run_throughput.py [--steps 40]

Both train the same spec on the same data for the same number of steps, in fresh run directories, one after the
other; the rates are medians of the logged intervals after the first (which includes start-up).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from llmspec.runner import run
from llmspec.spec.loading import load_spec
from llmspec.train.metrics import read_metrics

os.environ.setdefault("DS_ACCELERATOR", "cpu")

LAYOUTS = {
    "torch, 1 process": ("torch", []),
    # the same 16 sequences per step: 2 replicas × 8, or 2 micro-batches of 8 through a 2-stage pipeline
    "deepspeed, 2 ranks, ZeRO-2": ("deepspeed", ["cluster.gpus_per_node=2", "parallelism.zero_stage=2",
                                                 "training.micro_batch_size=8"]),
    # one replica of 16 sequences whose every matmul is split over the 2 ranks (AutoTP)
    "deepspeed, 2 ranks, tensor 2": ("deepspeed", ["cluster.gpus_per_node=2", "parallelism.tensor=2",
                                                   "parallelism.zero_stage=1"]),
    "deepspeed, 2 ranks, pipeline 2": ("deepspeed", ["cluster.gpus_per_node=2", "parallelism.pipeline=2",
                                                     "parallelism.zero_stage=1", "training.micro_batch_size=8"]),
    # this CPU has no native bf16: a correctness path here, not a fast one
    "deepspeed, 2 ranks, ZeRO-2, bf16": ("deepspeed", ["cluster.gpus_per_node=2", "parallelism.zero_stage=2",
                                                       "training.micro_batch_size=8", "training.precision=bf16"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    sets = [f"training.max_steps={args.steps}", "training.log_interval=5", "training.eval_interval=100000",
            "training.checkpoint_interval=100000"]
    print(f"specs/tiny.yaml, {args.steps} steps of 16 × 256 tokens, fp32 unless marked, {os.cpu_count()} CPUs\n")
    print(f"{'layout':<34} {'tokens/s':>9} {'s/step':>7} {'vs 1 process':>13}")
    baseline = None
    with tempfile.TemporaryDirectory() as tmp:
        for label, (backend, extra) in LAYOUTS.items():
            run_dir = Path(tmp) / label.replace(" ", "_").replace(",", "")
            run(load_spec("tiny", sets + extra), run_dir, backend=backend, announce=lambda *a: None)
            rates = [r["tokens_per_second"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r][1:]
            rate = statistics.median(rates)
            baseline = baseline or rate
            print(f"{label:<34} {rate:>9,.0f} {16 * 256 / rate:>7.3f} {rate / baseline:>12.2f}x")


if __name__ == "__main__":
    main()
