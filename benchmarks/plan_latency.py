"""Cold wall time of `llmspec plan` (llama2-7b, llama3-405b and every post-training named spec) beside
`python -c pass` (same machine, same run).

Each command runs in a fresh interpreter (cold imports) N times; prints the median of each and their ratio.
Target: plan under 0.5 s on the 2-core CI machine class.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time

RUNS = 7


def median_seconds(cmd: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    llmspec = shutil.which("llmspec") or f"{sys.prefix}/bin/llmspec"
    rows = [
        ("python -c pass", [sys.executable, "-c", "pass"]),
        ("python -c 'import llmspec'", [sys.executable, "-c", "import llmspec"]),
        ("llmspec plan llama2-7b --json", [llmspec, "plan", "llama2-7b", "--json"]),
        ("llmspec plan llama2-7b --json --no-alternatives", [llmspec, "plan", "llama2-7b", "--json",
                                                              "--no-alternatives"]),
        ("llmspec plan llama3-405b (tables)", [llmspec, "plan", "llama3-405b"]),
    ] + [(f"llmspec plan {name} --json", [llmspec, "plan", name, "--json"])  # every post-training named spec
         for name in ("llama2-7b-lora", "llama3-8b-qlora", "llama3-70b-qlora", "llama2-7b-dpo", "llama2-7b-ppo",
                      "stablelm-3b-lora")]
    base = None
    print(f"{'command':48s} {'median':>9s} {'× python':>9s}   ({RUNS} cold runs each)")
    for label, cmd in rows:
        seconds = median_seconds(cmd)
        base = base or seconds
        print(f"{label:48s} {seconds * 1e3:7.0f} ms {seconds / base:8.1f}×")


if __name__ == "__main__":
    main()
