"""``llmspec size`` speed: configurations scored per second, and a full search's wall time.

    .venv/bin/python benchmarks/size_search.py

The full search is llama3-70b on H100-SXM, A100-80GB and H200, up to 4096 GPUs (every GPU count × tensor ×
context × pipeline × chunks × ZeRO × micro-batch × checkpointing × offload that divides). Medians of 7 runs in one
process, and one cold `llmspec size` command for the whole CLI path. Targets (issue 12): ≥ 1e6 configurations/s,
a cold `size --json` under 1 s.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from llmspec.planner.layout_search import search
from llmspec.spec.loading import load_spec

GPUS = ["H100-SXM", "A100-80GB", "H200"]


def main() -> None:
    spec = load_spec("llama3-70b")
    times, result = [], None
    for _ in range(7):
        start = time.perf_counter()
        result = search(spec, GPUS, 4096)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    cli = Path(sys.executable).with_name("llmspec")
    start = time.perf_counter()
    subprocess.run([str(cli), "size", "llama3-70b", "--gpu", ",".join(GPUS), "--json"], check=True,
                   capture_output=True)
    cold = time.perf_counter() - start
    print(f"llama3-70b, {', '.join(GPUS)}, up to 4096 GPUs: {result.evaluated:,} configurations scored, "
          f"{result.feasible:,} fit, {len(result.frontier)} on the frontier")
    print(f"{'search (in process, median of 7)':<36} {median * 1e3:8.1f} ms   {result.evaluated / median:>12,.0f} "
          f"configurations/s   target ≥ 1e6/s")
    print(f"{'llmspec size --json (cold process)':<36} {cold * 1e3:8.1f} ms   target < 1 s")


if __name__ == "__main__":
    main()
