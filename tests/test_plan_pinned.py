"""The plan of every named spec, pinned: a refactor of the planner must leave its output byte-identical.

When a change is *meant* to move a number, regenerate the pin (python tests/test_plan_pinned.py) and say why in the
commit; the diff of tests/golden/plans.json shows exactly which numbers moved.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from llmspec.errors import ConsistencyError, SpecError
from llmspec.planner.inference import inference_plan
from llmspec.planner.inputs import CHECKPOINTING, OFFLOAD_MODES, strategy_inputs
from llmspec.planner.layout_search import (
    CONTEXT_CHUNK,
    CONTEXTS,
    MICRO_BATCHES,
    OFFLOADS,
    VIRTUAL_STAGES,
    _grid,
    gpu_counts,
)
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


# The searched axes the rules see (checkpointing they do not), in _grid's names, and two slices of the search space
# that between them hold every coupling the rules make: the split degrees (tensor, context, pipeline and its
# interleaving, expert) with the micro-batch through the data-parallel degree, and ZeRO with the pipeline and offload.
AXES = ("n", "t", "c", "p", "v", "ep", "z", "mb", "off")
SLICES = {"splits": {"z": (1,), "off": (0,)}, "memory": {"c": (1,), "v": (1,), "ep": (1,)}}


@pytest.mark.parametrize("part", sorted(SLICES))
def test_search_grid_is_exactly_what_the_spec_rules_accept(part):
    """The search's divisibility masks, row for row, against validating each layout as a spec."""
    # nodes sized, so the NVMe offload codes are searched; 5 blocks, so pipelines split unevenly and interleave;
    # 16,388 positions: context 2 leaves each GPU CONTEXT_CHUNK or more, context 4 does not divide them in 8 chunks
    spec = load_spec("tiny-moe", ["cluster.gpu=A100-80GB", "training.global_batch_size=48",
                                  "cluster.host_memory_gib=2048", "model.n_layers=5", "model.max_seq_len=16388",
                                  "training.seq_len=16388"])
    grid = _grid(spec, 16)
    assert set(grid["ck"].tolist()) == set(range(len(CHECKPOINTING)))
    fixed = SLICES[part]
    kept = {row for row in zip(*(grid[k].tolist() for k in AXES), strict=True)
            if all(row[AXES.index(axis)] in values for axis, values in fixed.items())}
    base = spec.model_dump(exclude={"training": {"gradient_accumulation_steps"}, "parallelism": {"data_parallel"}})
    seq_len = spec.training.seq_len
    accepted = set()
    for row in kept | set(_all_rows(spec, fixed)):  # a kept row the rows below miss is validated all the same
        n, t, c, p, v, ep, z, mb, off = row
        data = {**base, "cluster": {**base["cluster"], "gpus_per_node": n, "nodes": 1},
                "training": {**base["training"], "micro_batch_size": mb},
                "parallelism": {**base["parallelism"], "tensor": t, "context": c, "pipeline": p, "virtual_stages": v,
                                "expert": ep, "zero_stage": z, "offload_optimizer": OFFLOADS[off][0],
                                "offload_params": OFFLOADS[off][1]}}
        try:
            type(spec).model_validate(data)
        except (SpecError, ConsistencyError, ValueError):
            continue
        # search choices, not rules: tensor parallelism within the GPUs it has, a context chunk worth its ring
        if t <= n and seq_len // c >= min(CONTEXT_CHUNK, seq_len):
            accepted.add(row)
    assert kept == accepted
    # every axis the slice varies is searched beyond 1 (else the slice checks nothing there)
    varied = [axis for axis in ("t", "c", "p", "v", "ep", "z", "off") if axis not in fixed]
    assert [axis for axis in varied if max(row[AXES.index(axis)] for row in kept) <= 1] == []


def _all_rows(spec, fixed: dict[str, tuple]) -> list[tuple]:
    """Every combination of the values the search tries on each axis (those in ``fixed`` held), as AXES orders them."""
    powers = (1, 2, 4, 8, 16, 32, 64)
    axes = {"n": gpu_counts(16), "t": (1, 2, 4, 8), "c": CONTEXTS, "p": [p for p in powers if p <= spec.model.n_layers],
            "v": VIRTUAL_STAGES, "ep": powers, "z": range(4), "mb": MICRO_BATCHES, "off": range(len(OFFLOADS))}
    return list(itertools.product(*(fixed.get(axis, axes[axis]) for axis in AXES)))


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps({name: current(name) for name in sorted(named_specs())}, indent=1,
                                 sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
