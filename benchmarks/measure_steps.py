"""Time real training steps on this CPU against the plan, layout by layout: the README's `measure --steps` table.

    python benchmarks/measure_steps.py [--steps N] [--specs tiny,tiny-gpt2]

Each row trains warm-up + N steps of the spec with one layout (one process; ZeRO-2 and ZeRO-3 on 2 ranks; pipeline
2; tensor 2; ZeRO-2 with the optimizer offloaded to the CPU) through `llmspec measure --steps`'s Python API and
prints the planned step time beside the median measured one. On this machine class the check is of the model's
structure: whether each layout's extra work (ranks, gathers, pipeline bubble, offload) shows up as planned. Other
processes on the machine slow every row alike: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmspec.runner import run  # noqa: E402
from llmspec.spec.loading import load_spec  # noqa: E402
from llmspec.train.timing import measure_steps  # noqa: E402

TWO = ["cluster.gpus_per_node=2"]
LAYOUTS = {
    "one process": ([], "torch"),
    "ZeRO-2, 2 ranks": (TWO + ["parallelism.zero_stage=2", "training.global_batch_size=32"], "deepspeed"),
    "ZeRO-3, 2 ranks": (TWO + ["parallelism.zero_stage=3", "training.global_batch_size=32"], "deepspeed"),
    "pipeline 2": (TWO + ["parallelism.pipeline=2", "parallelism.zero_stage=1"], "deepspeed"),
    "tensor 2": (TWO + ["parallelism.tensor=2", "parallelism.zero_stage=1"], "deepspeed"),
    "CPU offload": (["parallelism.zero_stage=2", "parallelism.offload_optimizer=cpu"], "deepspeed"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--specs", default="tiny,tiny-gpt2")
    args = parser.parse_args()
    # (peak memory is left to `llmspec measure --steps`: this process's peak RSS only grows over the rows)
    print(f"{'spec':10} {'layout':16} {'planned':>9} {'measured':>9} {'ratio':>6}")
    for name in args.specs.split(","):
        for layout, (sets, backend) in LAYOUTS.items():
            try:
                spec = load_spec(name, ["cluster.gpu=cpu", "cluster.nodes=1", "training.precision=fp32", *sets])
                timing = measure_steps(spec, args.steps, run, backend)
            except Exception as err:  # a layout the engine refuses here: say so and go on
                print(f"{name:10} {layout:16} {'-':>9} {'-':>9} {'-':>6}  {type(err).__name__}: {err}"[:160])
                continue
            planned = timing.planned.time["step_seconds"]
            print(f"{name:10} {layout:16} {planned:9.3f} {timing.measured_step:9.3f} {timing.ratio:6.2f}", flush=True)


if __name__ == "__main__":
    main()
