"""Sizing: the layout search and its frontier, --max, compute-optimal sizing, inference planning."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from llmspec.cli.app import app
from llmspec.errors import ConsistencyError, LLMSpecError, SpecError
from llmspec.planner.compute_optimal import compute_optimal_report, optimal
from llmspec.planner.inference import inference_plan
from llmspec.planner.layout_search import (
    CPU_OFFLOADS,
    MICRO_BATCHES,
    OFFLOADS,
    VIRTUAL_STAGES,
    SizeResult,
    evaluate_layouts,
    gpu_counts,
    search,
)
from llmspec.planner.limits import max_fitting
from llmspec.planner.training import plan
from llmspec.spec import catalogue
from llmspec.spec.loading import load_spec
from llmspec.spec.schema import Spec


@pytest.fixture(scope="module")
def llama70b():
    return search(load_spec("llama3-70b"), ["H100-SXM", "A100-80GB", "H200"], 4096)


def test_frontier_is_non_dominated(llama70b):
    front = llama70b.frontier
    assert len(front) >= 2
    for a, b in itertools.permutations(front, 2):
        assert not (a.seconds <= b.seconds and a.cost <= b.cost and (a.seconds, a.cost) != (b.seconds, b.cost))
    days, cost = llama70b.points["days"] * 86400, llama70b.points["cost"]
    for item in front:  # no feasible layout beats a frontier item on both
        assert not np.any((days < item.seconds * (1 - 1e-12)) & (cost < item.cost * (1 - 1e-12)))
    assert llama70b.best is min(front, key=lambda x: (x.seconds, x.cost))


def test_every_frontier_layout_replans_as_fitting(llama70b):
    for item in llama70b.frontier:
        result = plan(load_spec("llama3-70b", item.sets()), alternatives=False)
        assert result.fits
        assert result.time["total_seconds"] == pytest.approx(item.seconds, rel=1e-9)
        assert result.time["cost"] == pytest.approx(item.cost, rel=1e-9)
        assert result.memory["peak"] == pytest.approx(item.peak_memory, rel=1e-9)


def test_explain_says_which_term_decides_between_the_best_and_the_runner_up(llama70b):
    from llmspec.planner.size_explain import TERMS, explain

    why = explain(load_spec("llama3-70b"), llama70b)
    ranked = sorted(llama70b.frontier, key=lambda x: (x.seconds, x.cost))
    assert why.best is ranked[0] and why.runner_up is ranked[1]
    # the terms are the plan's, and they add up to each layout's run
    for layout, side in ((why.best, 0), (why.runner_up, 1)):
        assert sum(days[side] for days in why.days.values()) == pytest.approx(layout.seconds / 86400)
    assert set(why.days) <= set(TERMS)
    gains = {term: best - other for term, (best, other) in why.days.items()}
    assert why.deciding == min(gains, key=gains.get) and gains[why.deciding] < 0
    alone = explain(load_spec("llama3-70b"), SizeResult(1, 1, [why.best], why.best, "time"))
    assert alone.runner_up is None and alone.deciding is None
    by_cost = explain(load_spec("llama3-70b"), search(load_spec("llama3-70b"), ["H100-SXM", "H200"], 4096,
                                                      objective="cost"))
    assert by_cost.best.cost <= by_cost.runner_up.cost


LONG_CONTEXT = ["training.seq_len=32768", "model.max_seq_len=32768", "training.global_batch_size=128"]


@pytest.mark.parametrize("name,sets,split", [("llama3-70b", LONG_CONTEXT, "context"), ("mixtral-8x7b", [], "expert")])
def test_context_and_expert_degrees_are_searched_and_replan_identically(name, sets, split):
    result = search(load_spec(name, sets), ["H100-SXM"], 512)
    assert any(getattr(item, split) > 1 for item in result.frontier), split  # long sequences split; experts too
    for item in result.frontier:
        planned = plan(load_spec(name, [*sets, *item.sets()]), alternatives=False)
        assert planned.spec.parallelism.data_parallel == item.data_parallel
        assert planned.time["total_seconds"] == pytest.approx(item.seconds, rel=1e-9)
        assert planned.time["cost"] == pytest.approx(item.cost, rel=1e-9)
        assert planned.env["memory_peak"] == pytest.approx(item.peak_memory, rel=1e-9)
    short = search(load_spec("llama3-70b", ["training.seq_len=4096"]), ["H100-SXM"], 64)
    assert short.frontier and all(item.context == 1 for item in short.frontier)  # 4,096 positions: nothing to split


def test_searched_micro_batches_and_context_degrees_round_expert_capacity_as_the_plan_does():
    sets = ["model.moe.capacity_factor=1.05", "parallelism.expert=8", "parallelism.zero_stage=1", "cluster.nodes=8",
            "training.seq_len=8192", "model.max_seq_len=8192"]
    # (micro-batch, context): ⌈1.05 · 8,192 · mb / c · 2 / 8⌉ rows per expert, 2,151, 4,301, 8,602, 2,151
    layouts = [(1, 1), (2, 1), (4, 1), (2, 2)]
    size = len(layouts)
    grid = {"n": np.full(size, 64), "t": np.ones(size, int), "p": np.ones(size, int), "v": np.ones(size, int),
            "ep": np.full(size, 8), "z": np.ones(size, int), "ck": np.full(size, 2), "off": np.zeros(size, int),
            "mb": np.array([mb for mb, _ in layouts]), "c": np.array([c for _, c in layouts])}
    scored, _ = evaluate_layouts(load_spec("mixtral-8x7b", sets), catalogue.lookup("H100-SXM"), grid)
    for i, (mb, c) in enumerate(layouts):
        planned = plan(load_spec("mixtral-8x7b", [*sets, f"training.micro_batch_size={mb}",
                                                  f"parallelism.context={c}"]), alternatives=False)
        assert planned.env["time_step"] == pytest.approx(scored["time_step"][i], rel=1e-12), (mb, c)
        assert planned.env["memory_peak"] == pytest.approx(scored["memory_peak"][i], rel=1e-12), (mb, c)


def test_nvme_offload_reaches_the_frontier_only_where_cpu_offload_overflows_the_nodes_memory():
    args = (["H100-SXM"], 8)
    free = search(load_spec("llama3-70b"), *args)
    assert free.frontier and all("nvme" not in (x.offload_optimizer, x.offload_params) for x in free.frontier)
    sets = ["cluster.host_memory_gib=256", "cluster.nvme_gib=8000"]
    sized = search(load_spec("llama3-70b", sets), *args)
    assert sized.evaluated > free.evaluated  # NVMe codes searched once the nodes are sized (dominated before)
    assert sized.best.offload_params == "nvme" and sized.best.seconds > free.best.seconds  # slower, but it fits
    for item in sized.frontier:
        planned = plan(load_spec("llama3-70b", [*sets, *item.sets()]), alternatives=False)
        assert planned.fits and planned.host_memory <= 256 * 2**30
        assert planned.time["total_seconds"] == pytest.approx(item.seconds, rel=1e-9)
        assert planned.env["memory_peak"] == pytest.approx(item.peak_memory, rel=1e-9)
    cpu = plan(load_spec("llama3-70b", [*sets, *free.best.sets()]), alternatives=False)
    assert not cpu.fits and "cluster.host_memory_gib" in cpu.host_misfit  # the unsized best overflows the host


def test_search_agrees_with_a_brute_force_loop():
    spec = load_spec("gpt2-124m", ["cluster.gpu=L4", "training.global_batch_size=32", "training.micro_batch_size=1"])
    result = search(spec, ["L4"], max_gpus=8)
    base = spec.model_dump(exclude={"training": {"gradient_accumulation_steps"}, "parallelism": {"data_parallel"}})
    feasible = {}
    for n, t, p, v, z, mb, ck, off in itertools.product(gpu_counts(8), (1, 2, 4, 8), (1, 2, 4, 8, 16),
                                                        VIRTUAL_STAGES, range(4), MICRO_BATCHES,
                                                        ("none", "selective", "full"),
                                                        OFFLOADS[:CPU_OFFLOADS]):  # unsized: NVMe pruned
        data = json.loads(json.dumps(base))
        data["cluster"].update(gpus_per_node=n, nodes=1)
        data["parallelism"].update(tensor=t, pipeline=p, virtual_stages=v, zero_stage=z,
                                   activation_checkpointing=ck, offload_optimizer=off[0], offload_params=off[1])
        data["training"]["micro_batch_size"] = mb
        try:
            candidate = Spec.model_validate(data)
        except (ValidationError, SpecError, ConsistencyError, ValueError):
            continue
        if t > n:
            continue
        planned = plan(candidate, alternatives=False)
        if planned.fits:
            feasible[(n, t, p, v, z, mb, ck, off)] = (planned.time["total_seconds"], planned.time["cost"])
    assert result.feasible == len(feasible) > 0
    assert result.points["cost"].dtype == np.float64  # not an object array (exact Fractions): 75x slower
    assert result.points["cost"].size == len(feasible)
    for item in result.frontier:
        key = (item.gpus, item.tensor, item.pipeline, item.virtual_stages, item.zero_stage, item.micro_batch_size,
               item.activation_checkpointing, (item.offload_optimizer, item.offload_params))
        assert feasible[key] == pytest.approx((item.seconds, item.cost), rel=1e-9)
    cheapest = min(feasible.values(), key=lambda v: (v[1], v[0]))
    fastest = min(feasible.values())
    assert min(x.cost for x in result.frontier) == pytest.approx(cheapest[1], rel=1e-9)
    assert min(x.seconds for x in result.frontier) == pytest.approx(fastest[0], rel=1e-9)


def test_deadline_budget_and_objective():
    spec = load_spec("llama3-70b")
    limited = search(spec, ["H100-SXM"], 4096, deadline_days=90, budget=2.0e7, objective="cost")
    assert limited.frontier and all(x.seconds <= 90 * 86400 and x.cost <= 2.0e7 for x in limited.frontier)
    assert limited.best is min(limited.frontier, key=lambda x: (x.cost, x.seconds))
    with pytest.raises(LLMSpecError, match="--gpu T4000: unknown GPU"):
        search(spec, ["T4000"])
    with pytest.raises(LLMSpecError, match="--objective speed"):
        search(spec, objective="speed")


def test_size_cli_json_write_and_plot(tmp_path):
    runner = CliRunner()
    out = tmp_path / "best.yaml"
    result = runner.invoke(app, ["size", "llama2-7b", "--gpu", "H100-SXM,A100-80GB", "--max-gpus", "512",
                                 "--deadline", "60d", "--json", "--explain", "--write", str(out), "--plot",
                                 str(tmp_path / "size.png")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {"evaluated", "feasible", "frontier"} <= set(data) and data["evaluated"] >= data["feasible"] > 0
    assert {"sets", "gpu", "gpus", "days", "gpu_hours", "cost", "peak_memory"} <= set(data["frontier"][0])
    why = data["explain"]
    assert why["best"]["sets"] == data["best"]["sets"] and why["deciding"] in why["days"]
    written = load_spec(out)
    assert plan(written, alternatives=False).fits and (tmp_path / "size.png").stat().st_size > 1000
    bad = runner.invoke(app, ["size", "llama2-7b", "--deadline", "soon"])
    assert bad.exit_code == 2 and "--deadline" in bad.output


def test_compute_optimal_reproduces_chinchilla():
    rules = optimal(5.76e23)  # Chinchilla: 70B parameters, 1.4T tokens
    for rule in ("20_tokens_per_param", "besiroglu_2024"):
        assert rules[rule]["params"] == pytest.approx(70e9, rel=0.10)
        assert rules[rule]["tokens"] == pytest.approx(1.4e12, rel=0.10)
    # the rounded published fit is the outlier references.md warns about
    assert rules["chinchilla_2022"]["tokens"] / rules["chinchilla_2022"]["params"] > 60
    report = compute_optimal_report(None, [], "5.76e23", None, None, None)
    assert report.params == pytest.approx(rules["20_tokens_per_param"]["params"], rel=0.05)
    mo = report.spec.model
    assert mo.d_model % 128 == 0 and mo.head_dim in (64, 128) and mo.n_heads % mo.n_kv_heads == 0
    assert 64 <= mo.d_model / mo.n_layers <= 128
    assert report.spec.training.total_tokens == int(rules["20_tokens_per_param"]["tokens"])


def test_compute_optimal_from_a_budget_and_the_cli(tmp_path):
    report = compute_optimal_report(None, [], None, 1e6, "H100-SXM", 30)
    gpus = report.spec.cluster.gpus
    price = load_spec("llama2-7b", ["cluster.gpu=H100-SXM"]).cluster.device.price_per_hour
    assert gpus % 8 == 0 and gpus * 30 * 24 * price <= 1e6 < 2 * gpus * 30 * 24 * price
    result = CliRunner().invoke(app, ["size", "--compute", "1e21", "--json", "--write", str(tmp_path / "s.yaml")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data["compute_optimal"]) == {"params", "tokens"}
    assert load_spec(tmp_path / "s.yaml").training.total_tokens == int(data["compute_optimal"]["tokens"])


def test_kv_cache_hand_worked():
    # Llama-2-70B: 80 layers, 8 KV heads of 128, bf16: K and V → 2 · 80 · 8 · 128 · 2 bytes per token
    served = inference_plan(load_spec("llama2-70b"), context=4096, batch=8)
    assert served["kv_cache_per_token"] == 2 * 80 * 8 * 128 * 2 == 327_680
    assert served["kv_cache"] == 8 * 4096 * 327_680 / 8  # over TP 8
    # Llama-2-7B: 32 layers, 32 heads (MHA) of 128
    served = inference_plan(load_spec("llama2-7b", ["parallelism.tensor=1"]), context=4096, batch=1)
    assert served["kv_cache_per_token"] == 2 * 32 * 32 * 128 * 2 == 524_288
    weights = plan(load_spec("llama2-7b"), alternatives=False).params["total"] * 2
    assert served["inference_weights"] == weights
    assert served["max_batch"] == (served["usable"] - weights) // (4096 * 524_288)
    assert served["decode_tokens_per_second"] == pytest.approx(1 / ((weights + 4096 * 524_288) / 2.039e12), rel=0.02)


def test_max_finds_the_largest_value_that_fits():
    sets = ["training.global_batch_size=65536", "parallelism.activation_checkpointing=none"]
    limit = max_fitting("llama2-7b", sets, "micro_batch_size")
    assert limit.bound == "memory" and limit.value >= 1
    assert plan(load_spec("llama2-7b", [*sets, f"training.micro_batch_size={limit.value}"])).fits
    assert not plan(load_spec("llama2-7b", [*sets, f"training.micro_batch_size={limit.value * 2}"])).fits
    layers = max_fitting("llama2-7b", [], "n_layers")
    assert plan(load_spec("llama2-7b", [f"model.n_layers={layers.value}"])).fits
    assert not plan(load_spec("llama2-7b", [f"model.n_layers={layers.value + 1}"])).fits
    assert max_fitting("llama2-7b", [], "seq_len").bound == "model.max_seq_len"
    with pytest.raises(LLMSpecError, match="--max d_model"):
        max_fitting("llama2-7b", [], "d_model")


def test_empty_frontier_and_bad_context_are_explained():
    result = CliRunner().invoke(app, ["size", "llama2-7b", "--deadline", "1h"])
    assert result.exit_code == 0 and "no layout fits within the limits" in result.output
    with pytest.raises(LLMSpecError, match="--context 100000: exceeds model.max_seq_len 256"):
        inference_plan(load_spec("tiny"), context=100_000)


@pytest.mark.parametrize("compute", ["1e21", "5.76e23", "1e25"])
def test_compute_optimal_write_gives_a_spec_that_fits(tmp_path, compute):
    out = tmp_path / "c.yaml"
    result = CliRunner().invoke(app, ["size", "--compute", compute, "--write", str(out)])
    assert result.exit_code == 0, result.output
    assert plan(load_spec(out), alternatives=False).fits


# ---- fine-tunes: the frozen base, pairs and the base's storage are searched as plan plans them ----------------

BF16_BASE = ["post_training.base_precision=bf16", "post_training.double_quant=false"]


@pytest.mark.parametrize("name, sets", [
    ("llama3-70b-qlora", BF16_BASE),  # which storage and GPU does a 70B LoRA need?
    ("llama2-7b-dpo", []),  # pairs: two sequences per example
    ("llama2-7b", ["post_training.method=sft", "training.global_batch_size=64", "cluster.nodes=1"]),  # full fine-tuning
])
def test_every_fine_tune_frontier_layout_replans_identically(name, sets):
    result = search(load_spec(name, sets), max_gpus=16)
    assert result.frontier
    for item in result.frontier:
        planned = plan(load_spec(name, [*sets, *item.sets()]), alternatives=False)
        assert planned.fits
        assert planned.memory["peak"] == pytest.approx(item.peak_memory, rel=1e-9)
        assert planned.time["total_seconds"] == pytest.approx(item.seconds, rel=1e-9)
        assert planned.spec.post_training.base_precision == item.base_precision


def test_a_70b_lora_fits_one_small_gpu_only_quantised():
    result = search(load_spec("llama3-70b-qlora", BF16_BASE), ["A100-80GB"], max_gpus=1)
    assert result.frontier and {item.base_precision for item in result.frontier} == {"nf4"}  # 131 GiB in bf16
    assert search(load_spec("llama3-70b-qlora", BF16_BASE), ["A100-80GB"],
                  max_gpus=8).best.base_precision == "bf16"  # on a node, ZeRO-3 shards the bf16 base: no need


def test_rl_specs_are_refused_by_the_search_with_the_reason():
    with pytest.raises(LLMSpecError, match="ppo specs are not searched yet"):
        search(load_spec("llama2-7b-ppo"))
