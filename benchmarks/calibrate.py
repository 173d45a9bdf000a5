"""Fit the time model's constants to published runs, print predicted against published, and (--write) write
docs/calibration.md.

    python benchmarks/calibrate.py [--write]

Fitted: each GPU family's matmul efficiency (catalogue.EFFICIENCY) and the HBM passes of eager RMSNorm and RoPE
(device_inputs.ELEMENTWISE_PASSES), by least squares on the log ratios of every published point (specs/published/:
Megatron-LM, Llama 3, llm-foundry's and torchtitan's FSDP runs; and the Llama 2 model card's GPU-hours for
specs/llama2-7b and llama2-70b), then refitted once per point without it (its leave-one-out error). The fit prints
the constants to put in the catalogue; tests/test_published.py checks that the catalogue's are that optimum and that
every point is within 15%.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmspec.files import write_atomic  # noqa: E402
from llmspec.planner.calibration import Calibration, fit, published_specs, report  # noqa: E402
from llmspec.planner.device_inputs import ELEMENTWISE_PASSES  # noqa: E402
from llmspec.spec import catalogue  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="write docs/calibration.md from the catalogue's constants")
    args = parser.parse_args()
    start = time.perf_counter()
    calibration = Calibration(published_specs())
    planned = time.perf_counter() - start
    efficiency, passes = fit(calibration)
    fitted = time.perf_counter() - start - planned
    print(f"planned {len(calibration.cases)} points in {planned:.1f} s, fitted in {fitted:.1f} s")
    print(f"fit:       ELEMENTWISE_PASSES = {passes:.2f}, EFFICIENCY = "
          + ", ".join(f"{k}: {v:.3f}" for k, v in efficiency.items()))
    print(f"catalogue: ELEMENTWISE_PASSES = {ELEMENTWISE_PASSES:.2f}, EFFICIENCY = "
          + ", ".join(f"{k}: {catalogue.EFFICIENCY[k]:.3f}" for k in efficiency))
    text = report(calibration)
    print(text)
    if args.write:
        write_atomic(ROOT / "docs" / "calibration.md", text)
        print("wrote docs/calibration.md")


if __name__ == "__main__":
    main()
