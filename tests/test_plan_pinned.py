"""The plan of every named spec, pinned: a refactor of the planner must leave its output byte-identical.

When a change is *meant* to move a number, regenerate the pin (python tests/test_plan_pinned.py) and say why in the
commit; the diff of tests/golden/plans.json shows exactly which numbers moved.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from llmspec.planner.inference import inference_plan
from llmspec.planner.inputs import CHECKPOINTING, OFFLOAD_MODES, strategy_inputs
from llmspec.planner.layout_search import OFFLOADS, _grid
from llmspec.planner.training import plan, strategies
from llmspec.spec import load_spec, named_specs

GOLDEN = Path(__file__).with_name("golden") / "plans.json"


def current(name: str) -> dict:
    spec = load_spec(name)
    text = json.dumps({"plan": plan(spec).to_json(), "inference": inference_plan(spec)}, sort_keys=True,
                      default=float)
    return json.loads(text)


@pytest.mark.parametrize("name", sorted(named_specs()))
def test_plan_output_is_pinned(name):
    assert current(name) == json.loads(GOLDEN.read_text())[name]


@pytest.mark.parametrize("name", ["llama2-7b", "tiny", "mixtral-8x7b"])
def test_strategy_inputs_agree_on_numbers_and_columns(name):
    """One function sets the strategy inputs for plan (exact numbers) and search (numpy columns)."""
    spec = load_spec(name)
    chosen = strategies(spec)
    codes = {"z": np.array([s.zero_stage for s in chosen]),
             "ck": np.array([CHECKPOINTING.index(s.activation_checkpointing) for s in chosen]),
             "opt": np.array([OFFLOAD_MODES.index(s.offload_optimizer) for s in chosen]),
             "prm": np.array([OFFLOAD_MODES.index(s.offload_params) for s in chosen])}
    dp = np.array([1, 2, 3, 8, 64, 5, 7] * len(chosen))[:len(chosen)]
    columns = strategy_inputs(spec, codes["z"], codes["ck"], codes["opt"], codes["prm"], dp)
    for i, _ in enumerate(chosen):
        numbers = strategy_inputs(spec, int(codes["z"][i]), int(codes["ck"][i]), int(codes["opt"][i]),
                                  int(codes["prm"][i]), int(dp[i]))
        for key, value in numbers.items():
            assert float(value) == pytest.approx(float(np.broadcast_to(columns[key], dp.shape)[i]), rel=1e-12), key


def test_search_grid_is_exactly_what_the_spec_rules_accept():
    """The search's divisibility masks, row for row, against validating each layout as a spec."""
    from llmspec.errors import ConsistencyError, SpecError

    # nodes sized, so the NVMe offload codes are searched too
    spec = load_spec("tiny-moe", ["cluster.gpu=A100-80GB", "training.global_batch_size=48",
                                  "cluster.host_memory_gib=2048"])
    grid = _grid(spec, 16)
    kept = set(zip(*(grid[k].tolist() for k in ("n", "t", "p", "z", "mb", "ck", "off")), strict=True))
    base = spec.model_dump(exclude={"training": {"gradient_accumulation_steps"}, "parallelism": {"data_parallel"}})
    accepted = set()
    for n, t, p, z, mb, off in {(r[0], r[1], r[2], r[3], r[4], r[6]) for r in kept} | _all_rows(spec):
        data = json.loads(json.dumps(base))
        data["cluster"].update(gpus_per_node=n, nodes=1)
        data["parallelism"].update(tensor=t, pipeline=p, zero_stage=z, offload_optimizer=OFFLOADS[off][0],
                                   offload_params=OFFLOADS[off][1])
        data["training"]["micro_batch_size"] = mb
        try:
            type(spec).model_validate(data)
        except (SpecError, ConsistencyError, ValueError):
            continue
        if t <= n:  # the search keeps tensor parallelism within the GPUs it has (a search choice, not a rule)
            accepted.add((n, t, p, z, mb, off))
    assert {(r[0], r[1], r[2], r[3], r[4], r[6]) for r in kept} == accepted
    assert {r[5] for r in kept} == set(range(len(CHECKPOINTING)))


def _all_rows(spec) -> set[tuple]:
    from llmspec.planner.layout_search import MICRO_BATCHES, gpu_counts

    pipelines = [p for p in (1, 2, 4, 8, 16, 32, 64) if p <= spec.model.n_layers]
    return {(n, t, p, z, mb, off) for n in gpu_counts(16) for t in (1, 2, 4, 8) for p in pipelines
            for z in range(4) for mb in MICRO_BATCHES for off in range(len(OFFLOADS))}


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps({name: current(name) for name in sorted(named_specs())}, indent=1,
                                 sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
