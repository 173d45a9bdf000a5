"""Time and cost: calibration against published runs, bubble, communication, MFU."""

from __future__ import annotations

import pytest
from helpers import planned

from llmspec.errors import SpecError
from llmspec.spec import catalogue


@pytest.mark.parametrize("name,gpu_hours", [("llama2-7b", 184_320), ("llama2-70b", 1_720_320)])
def test_calibrated_on_llama2_model_card(name, gpu_hours):
    assert planned(name).time["gpu_hours"] == pytest.approx(gpu_hours, rel=0.20)


PIPELINE = ("cluster.nodes=4", "parallelism.zero_stage=1", "training.micro_batch_size=1",
            "training.global_batch_size=64", "parallelism.pipeline=4")


def _slowest_stage_by_hand(plan, blocks: list[int]) -> float:
    """The slowest stage's FLOPs over the mean stage's: blocks of equal FLOPs, and the LM head (6·V·h per token:
    forward and backward, never recomputed) on the last stage."""
    head = 6 * plan.spec.model.vocab_size * plan.spec.model.d_model
    block = (plan.flops["per_token_hardware"] - head) / plan.spec.model.n_layers
    stages = [n * block for n in blocks[:-1]] + [blocks[-1] * block + head]
    return max(stages) / (sum(stages) / len(stages))


def test_pipeline_bubble_is_p_minus_1_over_v_m_of_the_slowest_stage():
    plan = planned("llama2-7b", *PIPELINE)
    t = plan.time
    m = 64 // 8  # data parallel 32 / 4 = 8 replicas -> 8 micro-batches each
    slowest = _slowest_stage_by_hand(plan, [8, 8, 8, 8])  # the last stage also runs the LM head
    assert slowest > 1.01
    assert t["imbalance_seconds"] == pytest.approx((slowest - 1) * t["compute_seconds"])
    assert t["bubble_seconds"] == pytest.approx(3 / m * slowest * t["compute_seconds"])
    tv = planned("llama2-7b", *PIPELINE, "parallelism.virtual_stages=2").time
    assert tv["bubble_seconds"] == pytest.approx(t["bubble_seconds"] / 2)
    assert tv["pp_seconds"] == pytest.approx(t["pp_seconds"] * (4 * 2 - 1) / (4 - 1))  # every chunk boundary
    uneven = planned("llama2-7b", *PIPELINE, "parallelism.virtual_stages=3").time  # chunks of 3, 3 and 2 blocks
    assert uneven["bubble_seconds"] == pytest.approx(t["bubble_seconds"] * 3 / 8)


def test_an_uneven_split_runs_at_its_fullest_stage():
    # Llama 3 405B's split: one block fewer on the first and last stages, which hold the embedding and the head
    plan = planned("llama3-405b")
    assert plan.spec.stage_blocks == [7] + [8] * 14 + [7]
    slowest = _slowest_stage_by_hand(plan, plan.spec.stage_blocks)
    assert plan.time["imbalance_seconds"] == pytest.approx((slowest - 1) * plan.time["compute_seconds"])
    even = planned("llama3-405b", "parallelism.first_stage_layers=null", "parallelism.last_stage_layers=null",
                   "model.n_layers=128")  # 8 blocks on every stage, the head on the last besides
    assert even.time["imbalance_seconds"] > plan.time["imbalance_seconds"]


def test_interleaving_holds_megatrons_warm_up_in_flight():
    from llmspec.planner.numeric import inflight

    def in_flight(p, m, v, rank):
        return inflight(m=m, p=p, rank=rank, v=v)

    # Korthikanti et al. 2022, §4.2.3: the first stage holds p(1 + (p − 1)/(p·v)) micro-batches' activations
    for p, v in ((4, 2), (8, 4), (16, 7)):
        assert in_flight(p, 10**6, v, 0) == pytest.approx(p * (1 + (p - 1) / (p * v)))
    assert [in_flight(4, 100, 1, r) for r in range(4)] == [4, 3, 2, 1]  # 1F1B
    assert in_flight(4, 3, 2, 0) == 3  # never more than the step's micro-batches
    one, two = (planned("llama2-7b", *PIPELINE, "training.global_batch_size=1024", f"parallelism.virtual_stages={v}")
                for v in (1, 2))
    assert one.stage == two.stage == "first"  # blocks and the embedding, held per micro-batch; the tables once
    held = [plan.env["memory_activations"] - plan.env["act_tables"] for plan in (one, two)]
    assert held[1] / held[0] == pytest.approx((4 + 3 / 2) / 4)


def test_auto_virtual_stages_picks_the_shortest_step_that_fits():
    auto = planned("llama3-405b", "parallelism.virtual_stages=auto")
    picked = auto.spec.parallelism.virtual_stages
    steps = {v: planned("llama3-405b", f"parallelism.virtual_stages={v}").time["step_seconds"] for v in range(1, 8)}
    assert picked == min(steps, key=steps.get) and 1 < picked <= 7
    assert auto.time["step_seconds"] == steps[picked] < steps[1]
    assert planned("llama2-7b", "parallelism.virtual_stages=auto").spec.parallelism.virtual_stages == 1  # no pipeline


def test_step_time_is_sum_and_throughput_consistent():
    plan = planned("llama2-70b")
    t = plan.time
    parts = ("compute_seconds", "bubble_seconds", "dp_exposed_seconds", "optimizer_seconds", "tp_seconds",
             "pp_seconds", "offload_seconds")
    assert t["step_seconds"] == pytest.approx(sum(t[k] for k in parts))
    assert t["compute_seconds"] == pytest.approx(t["matmul_seconds"] + t["attention_seconds"]
                                                 + t["elementwise_seconds"])
    assert t["tokens_per_second"] == pytest.approx(1024 * 4096 / t["step_seconds"])
    assert t["gpu_hours"] == pytest.approx(t["total_seconds"] * 2048 / 3600)
    assert t["cost"] == pytest.approx(t["gpu_hours"] * 1.80)
    assert t["tp_seconds"] > 0  # TP 8 all-reduces are exposed
    assert 0 < t["mfu"] <= plan.efficiency


def test_compute_time_hand_worked():
    plan = planned("gpt2-124m")
    env, tr = plan.env, plan.spec.training
    assert plan.efficiency == catalogue.EFFICIENCY["ampere"]  # matmuls at the family's fitted efficiency
    tokens = tr.global_batch_size * tr.seq_len / 8
    attention = env["flops_attention_per_token"]
    matmuls = (env["flops_per_token_hardware"] - 3 * attention) * tokens / (312e12 * plan.efficiency)
    assert plan.time["matmul_seconds"] == pytest.approx(matmuls)
    # FlashAttention-2's A100 rates at head dim 64 (d/(d + 32) of head dim 128's), half rate at 128 keys per query
    forward, backward = (rate * (64 / 96) / (128 / 160) for rate in catalogue.ATTENTION["ampere"])
    context = env["attention_context"]
    length = context / (context + 128)
    assert plan.time["attention_seconds"] == pytest.approx(
        attention * tokens * (1 / forward + 2 / backward) / (312e12 * length))
    # GPT-2's LayerNorm and GELU are single kernels: bytes read and written once, forward, backward twice
    h, f, V, L = 768, 3072, 50257, 12
    per_token = L * 3 * 2 * (10 * h + 2 * f) + (2 * 2 + 12) * V
    assert env["bytes_elementwise_per_token"] == per_token
    assert plan.time["elementwise_seconds"] == pytest.approx(per_token * tokens / (1.555e12 * 0.85))


def test_long_sequences_and_eager_norms_cost_their_own_time():
    short, long = (planned("llama2-7b", "cluster.gpu=H100-SXM", f"training.seq_len={n}", f"model.max_seq_len={n}",
                           "training.global_batch_size=1024") for n in (2048, 32768))
    share = [plan.time["attention_seconds"] / plan.time["compute_seconds"] for plan in (short, long)]
    assert share[1] > 4 * share[0] and share[1] > 0.3  # FlashAttention-2 on H100 runs at ~a third of peak
    assert long.time["mfu"] < short.time["mfu"]  # the slower kernel takes a larger share of the FLOPs
    # an RMSNorm and RoPE written as torch ops make elementwise_passes passes; LayerNorm is one kernel
    rms = planned("llama2-7b").env["bytes_elementwise_per_token"]
    one = planned("llama2-7b", "model.norm=layernorm", "model.position=learned").env["bytes_elementwise_per_token"]
    assert rms > 2 * one


def test_a_7b_on_8_h100_with_zero3_at_2k_plans_35_to_50_percent_mfu():
    plan = planned("llama2-7b", "cluster.gpu=H100-SXM", "cluster.nodes=1", "training.seq_len=2048",
                   "training.global_batch_size=64", "training.micro_batch_size=1")
    t = plan.time
    assert 0.35 <= t["mfu"] <= 0.50
    # why: matmuls below peak, attention at FlashAttention-2's H100 rate, eager norms over HBM; ZeRO-3's gathers
    # hidden behind each neighbouring layer on NVLink
    assert t["matmul_seconds"] > t["elementwise_seconds"] > t["attention_seconds"] > 0
    assert 0 < t["zero_gather_seconds"] < 0.02 * t["step_seconds"]


def test_zero3_exposes_what_the_neighbouring_layer_cannot_hide():
    sets = ("cluster.gpu=H100-SXM", "cluster.nodes=4", "training.seq_len=2048", "training.micro_batch_size=1",
            "training.global_batch_size=32", "cluster.inter_node_bandwidth=5")
    plan = planned("llama2-7b", *sets)
    env = plan.env
    ring = (env["dp"] - 1) / env["dp"] / env["bw_dp"]
    layers, m = env["L_here"], env["m"]
    gather = env["psi"] / layers * 2 * ring
    scatter = env["psi"] / layers * 2 * ring
    forward = plan.time["compute_seconds"] / (3 * m * layers)
    assert gather > forward  # at 5 GB/s a layer's gather outlasts its neighbour's forward
    expected = m * (gather + layers * (gather - forward) + scatter + layers * max(0, gather + scatter - 2 * forward))
    assert plan.time["zero_gather_seconds"] == pytest.approx(expected)
    assert plan.time["dp_exposed_seconds"] == pytest.approx(expected)
    # more tokens per micro-batch give each layer more compute to hide behind
    bigger = planned("llama2-7b", *sets, "training.micro_batch_size=8", "training.global_batch_size=256")
    assert bigger.time["zero_gather_seconds"] / bigger.time["step_seconds"] < \
        plan.time["zero_gather_seconds"] / plan.time["step_seconds"]


def test_zero2_waits_for_its_weight_gather_after_the_step():
    plan = planned("llama2-7b", "parallelism.zero_stage=2")
    env = plan.env
    gather = env["psi"] * 2 * (env["dp"] - 1) / env["dp"] / env["bw_dp"]
    assert plan.time["dp_exposed_seconds"] >= gather


def test_efficiency_and_price_overrides():
    base = planned("llama2-7b", "cluster.efficiency=0.5").time
    faster = planned("llama2-7b", "cluster.efficiency=1.0").time
    assert faster["matmul_seconds"] == pytest.approx(base["matmul_seconds"] / 2)  # the matmul efficiency
    assert faster["attention_seconds"] == base["attention_seconds"]
    cheap = planned("llama2-7b", "cluster.price_per_gpu_hour=1.0", "cluster.efficiency=0.5").time
    assert cheap["cost"] == pytest.approx(base["gpu_hours"])


def test_a_calibration_file_replaces_the_rates_of_the_gpu_it_was_measured_on(tmp_path):
    path = tmp_path / "h100.json"
    path.write_text('{"gpu": "H100-SXM", "matmul": 0.3, "attention_forward": 0.2, "attention_backward": 0.1, '
                    '"elementwise_passes": 1.0}')
    sets = ("cluster.gpu=H100-SXM", f"cluster.calibration={path}")
    measured, catalogue_rates = planned("llama2-7b", *sets), planned("llama2-7b", "cluster.gpu=H100-SXM")
    assert (measured.env["eff"], measured.env["attention_fwd_eff"]) == (0.3, 0.2)
    assert measured.time["step_seconds"] > catalogue_rates.time["step_seconds"]
    other = planned("llama2-7b", f"cluster.calibration={path}")  # measured on H100: an A100 plan keeps its own
    assert other.env["eff"] == planned("llama2-7b").env["eff"]
    profile = planned("llama2-7b", "cluster.gpu=H100-SXM", "cluster.calibration=fused-flash-attention-3")
    assert profile.env["attention_fwd_eff"] == catalogue.KERNEL_PROFILES["fused-flash-attention-3"]["hopper"][
        "attention_forward"]
    path.write_text('{"gpu": "H100-SXM", "matmul": -1}')
    with pytest.raises(SpecError, match="cluster.calibration.*matmul must be a positive number"):
        planned("llama2-7b", *sets)
    with pytest.raises(SpecError, match="cluster.calibration.*cannot read"):
        planned("llama2-7b", f"cluster.calibration={tmp_path / 'missing.json'}")


def test_slower_network_exposes_data_parallel_traffic():
    fast = planned("llama2-7b", "training.micro_batch_size=1").time
    slow = planned("llama2-7b", "training.micro_batch_size=1", "cluster.inter_node_bandwidth=0.1").time
    assert slow["dp_exposed_seconds"] > fast["dp_exposed_seconds"]


CONTEXT = ("training.seq_len=32768", "model.max_seq_len=32768", "cluster.nodes=4", "parallelism.zero_stage=1",
           "training.global_batch_size=64")


def test_context_parallelism_splits_each_sequence_and_hides_its_ring_behind_attention():
    one, ring = planned("llama2-7b", *CONTEXT), planned("llama2-7b", *CONTEXT, "parallelism.context=8")
    assert (one.spec.parallelism.data_parallel, ring.spec.parallelism.data_parallel) == (32, 4)
    # the same FLOPs on the same GPUs; every per-position activation, and the logits, split 8 ways
    assert ring.time["compute_seconds"] == pytest.approx(one.time["compute_seconds"])
    held = [plan.env["memory_activations"] - plan.env["act_tables"] for plan in (one, ring)]
    assert held[1] == pytest.approx(held[0] / 8)
    assert ring.env["buffer_logits"] == pytest.approx(one.env["buffer_logits"] / 8)
    # ZeRO shards over every rank holding the weights: 32 either way
    assert ring.memory["model_states"] == one.memory["model_states"]
    # each layer passes every GPU's keys and values to the 7 others: forward, backward (with gradients), by hand
    tr, k, d_h = ring.spec.training, 32, 128
    recompute = ring.spec.parallelism.activation_checkpointing == "full"
    sent = (3 + recompute) * 7 * 32 * tr.gradient_accumulation_steps * tr.micro_batch_size * (32768 // 8) * 2 * k \
        * d_h * 2
    assert ring.env["comm_cp_bytes"] == pytest.approx(sent)
    assert ring.time["cp_seconds"] == 0 < ring.env["time_attention"]  # at 32K, attention outlasts the exchange
    slow = planned("llama2-7b", *CONTEXT, "parallelism.context=8", "cluster.intra_node_bandwidth=1")  # 1 GB/s
    ring_bandwidth = 1e9 * catalogue.NVLINK_ACHIEVED  # what collectives achieve of the 1 GB/s link
    assert slow.time["cp_seconds"] == pytest.approx(sent / ring_bandwidth - slow.env["time_attention"])


def test_llama3_405b_at_131k_tokens_plans_with_context_parallelism():
    # Llama 3 405B's long-context stage (Grattafiori et al. 2024, Table 4): CP 16 at 131,072 tokens
    long = ("training.seq_len=131072", "training.global_batch_size=128")
    without, ring = planned("llama3-405b", *long), planned("llama3-405b", *long, "parallelism.context=16")
    # 8 data-parallel replicas instead of 128: 16 micro-batches each instead of 1, which fill the pipeline
    accumulation = [plan.spec.training.gradient_accumulation_steps for plan in (ring, without)]
    assert accumulation == [16, 1]
    assert ring.fits and ring.time["step_seconds"] < without.time["step_seconds"] / 3


def test_fp8_runs_the_matmuls_at_the_fp8_rate_and_keeps_everything_else():
    bf16, fp8 = planned("llama3-70b"), planned("llama3-70b", "training.precision=fp8")
    env = fp8.env
    assert (env["F_matmul"], env["F_peak"]) == (1979e12, 989e12)
    # attention (forward, backward, recomputed under full checkpointing) at its 16-bit kernel's rate; the matmuls
    # at FP8's
    attention = 4 * env["flops_attention_per_token"]
    tr = fp8.spec.training
    assert fp8.time["matmul_seconds"] == pytest.approx((env["flops_per_token_hardware"] - attention)
                                                       * tr.global_batch_size * tr.seq_len
                                                       / (fp8.spec.cluster.gpus * 1979e12 * env["eff"]))
    assert fp8.time["attention_seconds"] == pytest.approx(bf16.time["attention_seconds"])
    assert 1.3 < bf16.time["compute_seconds"] / fp8.time["compute_seconds"] < 2
    # bytes: the same states and (under full checkpointing: block inputs only) activations, plus an FP8 copy of
    # every block weight on the stage; the block recomputed in backward saves its linears' inputs in FP8
    for kind in ("model_states", "activations"):
        assert fp8.memory[kind] == bf16.memory[kind], kind
    assert bf16.memory["buffers"] - fp8.memory["buffers"] == pytest.approx(
        tr.micro_batch_size * tr.seq_len / 8 * (bf16.env["act_layer"] - env["act_layer"]), abs=1)
    blocks = fp8.env["L_here"] * fp8.env["params_layer"] / 8
    assert fp8.memory["fp8_weights"] == pytest.approx(blocks, abs=1) and bf16.memory["fp8_weights"] == 0
    zero3 = planned("llama3-70b", "training.precision=fp8", "parallelism.pipeline=1", "parallelism.zero_stage=3")
    assert zero3.memory["fp8_weights"] == 0  # the gathered layer is cast, nothing kept


def test_fp8_linears_save_their_inputs_as_their_library_does():
    sets = ("parallelism.activation_checkpointing=none", "training.precision=fp8")
    bf16 = planned("llama3-70b", *sets[:1])
    te = planned("llama3-70b", *sets)
    torchao = planned("llama3-70b", *sets, "training.fp8_library=torchao")
    h, f = 8192, 28672
    # Transformer Engine, per token and block: the q/k/v and MLP inputs and the down projection's input in FP8 (one
    # byte less each), SDPA's output kept in bf16 and again in FP8 for o_proj (one more, a·d_h = h)
    assert bf16.env["act_layer"] - te.env["act_layer"] == h + h + f - h
    # torchao's Float8Linear saves the bf16 input and casts weights at each use: bf16's bytes, no FP8 copies
    assert torchao.env["act_layer"] == bf16.env["act_layer"] and torchao.memory["fp8_weights"] == 0
    assert te.memory["fp8_weights"] > 0 and torchao.time["compute_seconds"] == te.time["compute_seconds"]


@pytest.mark.parametrize("sets,needle", [
    (("cluster.gpu=A100-80GB", "training.precision=fp8"), "A100-80GB does not support fp8"),
    (("training.precision=fp8", "post_training={method: sft}"), "fp8 is planned for pretraining"),
])
def test_fp8_needs_a_gpu_with_fp8_and_pretraining(sets, needle):
    with pytest.raises(SpecError, match=needle):
        planned("llama3-70b", *sets)
