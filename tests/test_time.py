"""Time and cost: calibration against published runs, bubble, communication, MFU."""

from __future__ import annotations

import pytest
from helpers import planned


@pytest.mark.parametrize("name,gpu_hours", [("llama2-7b", 184_320), ("llama2-70b", 1_720_320)])
def test_calibrated_on_llama2_model_card(name, gpu_hours):
    assert planned(name).time["gpu_hours"] == pytest.approx(gpu_hours, rel=0.20)


def test_pipeline_bubble_is_p_minus_1_over_v_m():
    base = ("cluster.nodes=4", "parallelism.zero_stage=1", "training.micro_batch_size=1",
            "training.global_batch_size=64")
    t = planned("llama2-7b", *base, "parallelism.pipeline=4").time
    m = 64 // 8  # data parallel 32 / 4 = 8 replicas -> 8 micro-batches each
    assert t["bubble_seconds"] == pytest.approx(3 / m * t["compute_seconds"])
    tv = planned("llama2-7b", *base, "parallelism.pipeline=4", "parallelism.virtual_stages=2").time
    assert tv["bubble_seconds"] == pytest.approx(t["bubble_seconds"] / 2)


def test_step_time_is_sum_and_throughput_consistent():
    plan = planned("llama2-70b")
    t = plan.time
    parts = ("compute_seconds", "bubble_seconds", "dp_exposed_seconds", "tp_seconds", "pp_seconds", "offload_seconds")
    assert t["step_seconds"] == pytest.approx(sum(t[k] for k in parts))
    assert t["tokens_per_second"] == pytest.approx(1024 * 4096 / t["step_seconds"])
    assert t["gpu_hours"] == pytest.approx(t["total_seconds"] * 2048 / 3600)
    assert t["cost"] == pytest.approx(t["gpu_hours"] * 1.80)
    assert t["tp_seconds"] > 0  # TP 8 all-reduces are exposed
    assert 0 < t["mfu"] <= plan.efficiency


def test_compute_time_hand_worked():
    plan = planned("gpt2-124m")
    expected = plan.flops["per_token_hardware"] * 480 * 1024 / (8 * 312e12 * 0.5)
    assert plan.time["compute_seconds"] == pytest.approx(expected)


def test_efficiency_and_price_overrides():
    base = planned("llama2-7b").time
    faster = planned("llama2-7b", "cluster.efficiency=1.0").time
    assert faster["compute_seconds"] == pytest.approx(base["compute_seconds"] / 2)
    cheap = planned("llama2-7b", "cluster.price_per_gpu_hour=1.0").time
    assert cheap["cost"] == pytest.approx(base["gpu_hours"])


def test_slower_network_exposes_data_parallel_traffic():
    fast = planned("llama2-7b", "training.micro_batch_size=1").time
    slow = planned("llama2-7b", "training.micro_batch_size=1", "cluster.inter_node_bandwidth=1").time
    assert slow["dp_exposed_seconds"] > fast["dp_exposed_seconds"]
