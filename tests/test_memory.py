"""Per-GPU memory: model states equal DeepSpeed's own estimators; hand-worked ZeRO, activation and buffer terms."""

from __future__ import annotations

import pytest
from helpers import minimal, planned

from llmspec.errors import LLMSpecError
from llmspec.planner import plan
from llmspec.planner.inference import inference_plan
from llmspec.planner.regimes import bytes_per_param
from llmspec.spec.loading import load_spec

GiB = 2**30


def _ds():
    pytest.importorskip("torch")
    import os

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    return estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs


@pytest.mark.parametrize("name", ["gpt2-124m", "llama2-7b", "llama3-8b", "mistral-7b", "mixtral-8x7b", "qwen2-7b",
                                  "tiny", "tiny-moe"])
@pytest.mark.parametrize("nodes,per_node", [(1, 1), (1, 8), (4, 8), (64, 8), (3, 7)])
@pytest.mark.parametrize("offload", ["none", "optimizer", "all"])
def test_model_states_equal_deepspeed_estimators(name, nodes, per_node, offload):
    zero2, zero3 = _ds()
    gpus = nodes * per_node
    base = [f"cluster.nodes={nodes}", f"cluster.gpus_per_node={per_node}", "cluster.gpu=H100",
            "training.precision=bf16", "parallelism.pipeline=1", "parallelism.tensor=1",
            "training.micro_batch_size=1", f"training.global_batch_size={gpus}", "training.max_steps=10",
            "parallelism.byte_regime=deepspeed", "training.optimizer.name=adamw"]
    opt = "cpu" if offload != "none" else "none"
    prm = "cpu" if offload == "all" else "none"
    plan3 = planned(name, *base, "parallelism.zero_stage=3", f"parallelism.offload_optimizer={opt}",
                    f"parallelism.offload_params={prm}")
    psi, largest = plan3.params["total"], plan3.params["largest_module"]
    cpu3, gpu3, _ = zero3(psi, largest, num_gpus_per_node=per_node, num_nodes=nodes, cpu_offload=opt == "cpu",
                       cpu_offload_params=prm == "cpu", zero_init=True)
    assert plan3.memory["model_states"] == gpu3
    # DeepSpeed truncates a float product (psi * 16 * (1 / nodes) * 1.5): at most one byte under the exact value.
    assert 0 <= plan3.host_memory - int(cpu3) <= 1 and plan3.host_memory == plan3.host_memory_deepspeed
    if offload != "all":
        plan2 = planned(name, *base, "parallelism.zero_stage=2", f"parallelism.offload_optimizer={opt}")
        cpu2, gpu2 = zero2(psi, num_gpus_per_node=per_node, num_nodes=nodes, cpu_offload=opt == "cpu")
        assert plan2.memory["model_states"] == gpu2
        assert 0 <= plan2.host_memory_deepspeed - int(cpu2) <= 1


def test_largest_module_is_what_deepspeed_finds_in_transformers_model():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from deepspeed.runtime.zero.stage3 import model_to_params

    for name, config in (("tiny", transformers.LlamaConfig(vocab_size=2048, hidden_size=128, num_hidden_layers=4,
                                                             num_attention_heads=4, num_key_value_heads=2,
                                                             intermediate_size=352, tie_word_embeddings=True)),
                         ("gpt2-124m", transformers.GPT2Config())):
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
        assert planned(name).params["largest_module"] == model_to_params(model)[1]


def test_zero_paper_example():
    # ZeRO paper, Figure 1: Psi = 7.5B, d = 64, mixed-precision Adam (K = 12): 120 / 31.4 / 16.6 / 1.9 GB.
    psi, d = 7.5e9, 64
    bpp = bytes_per_param("zero_paper", "bf16", 2)
    assert sum(bpp.values()) == 16
    expected = {0: 120e9, 1: 31.4e9, 2: 16.6e9, 3: 1.9e9}
    from llmspec.planner.regimes import per_gpu_bytes_per_param

    for stage, gb in expected.items():
        per = per_gpu_bytes_per_param("zero_paper", "bf16", 2, stage, d, False, False)
        assert psi * sum(per.values()) == pytest.approx(gb, rel=0.02)


@pytest.mark.parametrize("regime,total", [("deepspeed", 20), ("zero_paper", 16), ("megatron", 18)])
def test_regimes_bytes_per_param(regime, total):
    assert sum(bytes_per_param(regime, "bf16", 2).values()) == total
    assert sum(bytes_per_param(regime, "fp32", 2).values()) == 16  # fp32 weights, grads, Adam m and v


def test_megatron_distributed_optimizer_is_6_plus_12_over_d():
    from llmspec.planner.regimes import per_gpu_bytes_per_param

    per = per_gpu_bytes_per_param("megatron", "bf16", 2, 1, 8, False, False)
    assert sum(per.values()) == 6 + 12 / 8


def test_zero_shards_over_data_parallel_degree_not_all_gpus():
    # 64 GPUs as TP 8 × DP 8: ZeRO-3 divides the TP shard by 8, not by 64 (a peer calculator's mistake).
    plan = planned("llama2-7b", "cluster.nodes=8", "parallelism.tensor=8", "training.global_batch_size=64",
                   "training.micro_batch_size=1")
    # AutoTP splits every projection and the LM head 8 ways; the 65 RMSNorms and the untied embedding stay whole.
    whole = (2 * 32 + 1) * 4096 + 32000 * 4096
    psi_shard = (plan.params["total"] - whole) / 8 + whole
    expected = psi_shard * 18 / 8 + 4 * 32000 * 4096  # ZeRO-3 gathers the largest module: the whole embedding
    assert plan.memory["model_states"] == pytest.approx(expected, rel=1e-9)


def test_activation_bytes_hand_worked_llama_block():
    # tiny: h=128, a=4, k=2, d_h=32, f=352, fp32 (e=4), RMSNorm, SwiGLU, RoPE, b=16, s=256, L=4, tied.
    plan = planned("tiny", "parallelism.activation_checkpointing=none")
    h, a, k, dh, f, e, V, b, s, L = 128, 4, 2, 32, 352, 4, 2048, 16, 256, 4
    rms = 8 * h + 4
    # SDPA's output is laid out (b, s, heads, d_h): the o_proj input is a view of it, not a copy.
    attention = rms + h * e + (a + 2 * k) * dh * e + a * dh * e + 4 * a
    mlp = rms + h * e + 4 * f * e
    head = rms + h * e + 4 * V + 8
    tables = 2 * 256 * dh * e
    loss_total_weight = 4
    expected = b * s * (L * (attention + mlp) + 8 + head) + tables + loss_total_weight
    assert plan.memory["activations"] == expected


def test_checkpointing_modes_order_and_full_keeps_block_inputs():
    sets = ("training.micro_batch_size=1", "training.global_batch_size=512")
    none, sel, full = (planned("llama2-7b", *sets, f"parallelism.activation_checkpointing={mode}").memory
                       for mode in ("none", "selective", "full"))
    assert none["activations"] > sel["activations"] > full["activations"]
    # Full: each of the 32 blocks keeps its bf16 input (s·h·2 bytes) + the head's saved tensors.
    h, s, V = 4096, 4096, 32000
    head = 8 * h + 4 + 2 * h + 4 * V + 8
    assert full["activations"] == s * (32 * 2 * h + 8 + head) + 2 * 4096 * 128 * 2 + 4


def test_pipeline_first_stage_holds_p_microbatches():
    base = ("cluster.nodes=4", "parallelism.zero_stage=1", "training.micro_batch_size=1",
            "training.global_batch_size=64", "parallelism.activation_checkpointing=none")
    p1 = planned("llama2-7b", *base, "parallelism.pipeline=1")
    p4 = planned("llama2-7b", *base, "parallelism.pipeline=4")
    assert p4.stage == "first"
    # 4 micro-batches in flight × 8 layers each ≈ the 32 layers' activations of one micro-batch.
    per_layer_1 = p1.env["act_layer_kept"]
    assert p4.env["inflight"] == 4 and p4.env["rank"] == 0 and p4.env["L_here"] == 8
    assert p4.memory["activations"] == pytest.approx(4 * 4096 * (8 * per_layer_1 + 8) + 2 * 4096 * 128 * 2, rel=1e-12)


def test_tensor_parallel_divides_states_and_activations():
    base = ("cluster.nodes=1", "training.micro_batch_size=1", "training.global_batch_size=8",
            "parallelism.zero_stage=0")
    t1 = planned("llama2-7b", *base)
    t8 = planned("llama2-7b", *base, "parallelism.tensor=8", "parallelism.sequence_parallel=true")
    # Weights: AutoTP keeps the 65 RMSNorms and the untied embedding whole (bf16: 2 bytes each), splits the rest.
    whole_params = (2 * 32 + 1) * 4096 + 32000 * 4096
    assert t8.memory["weights"] == pytest.approx((t1.memory["weights"] - 2 * whole_params) / 8 + 2 * whole_params,
                                                 rel=1e-9)
    # Sequence parallel, micro-batch 1 on both: activations divide by 8 except the RoPE tables and the loss's
    # 4-byte total weight.
    whole = t1.env["act_tables"] + 4
    assert t8.memory["activations"] == pytest.approx((t1.memory["activations"] - whole) / 8 + whole, rel=1e-9)


def test_tensor_parallel_without_sequence_parallel_keeps_activations_outside_the_split_whole():
    base = ("cluster.nodes=1", "training.micro_batch_size=1", "training.global_batch_size=8",
            "parallelism.zero_stage=0", "parallelism.tensor=8")
    split = planned("llama2-7b", *base, "parallelism.sequence_parallel=true")
    held = planned("llama2-7b", *base)
    env = held.env
    # per token: each block's norms, inputs and residual-stream tensors, the ids, the head's norm and input
    whole_per_token = (32 * (env["act_layer_kept"] - env["act_layer_kept_split"]) + env["act_embedding"]
                       + env["act_head"] - 4 * 32000)
    assert held.memory["activations"] - split.memory["activations"] == pytest.approx(
        4096 * whole_per_token * (1 - 1 / 8), rel=1e-9)
    assert 0 < env["act_layer_kept_split"] < env["act_layer_kept"]


def test_offload_moves_states_to_host():
    base = ("parallelism.zero_stage=3", "training.micro_batch_size=1", "cluster.nodes=1",
            "training.global_batch_size=8")
    plain = planned("llama2-7b", *base)
    off = planned("llama2-7b", *base, "parallelism.offload_optimizer=cpu", "parallelism.offload_params=cpu")
    assert off.memory["model_states"] == 4 * plain.params["largest_module"]
    assert off.host_memory > plain.host_memory
    assert off.time["offload_seconds"] > 0 and plain.time["offload_seconds"] == 0


def test_fp32_and_logits_buffer():
    plan = planned("tiny", "parallelism.activation_checkpointing=none")
    b, s, V, e = 16, 256, 2048, 4
    assert plan.env["buffer_logits"] == b * s * V * (2 * e + 4)
    assert plan.memory["weights"] == 4 * plan.params["total"]  # fp32 weights, ZeRO-0


def test_fits_reflects_usable_memory():
    assert planned("llama2-7b").fits
    big = planned("llama2-7b", "parallelism.zero_stage=0", "parallelism.activation_checkpointing=none")
    assert not big.fits and big.memory["peak"] > big.usable_memory


def test_a_node_must_hold_what_offload_puts_on_its_cpu_and_nvme_where_the_spec_sizes_them():
    base = ("parallelism.zero_stage=3", "cluster.nodes=1", "training.global_batch_size=64",
            "parallelism.offload_optimizer=cpu", "parallelism.offload_params=cpu")
    unsized = planned("llama2-7b", *base)
    gib = unsized.host_memory / 2**30
    assert unsized.fits and unsized.host_fits  # no size given: nothing to check
    roomy = planned("llama2-7b", *base, f"cluster.host_memory_gib={gib * 1.01}", alternatives=True)
    cramped = planned("llama2-7b", *base, f"cluster.host_memory_gib={gib * 0.99}", alternatives=True)
    assert roomy.fits and not cramped.fits and cramped.memory["peak"] <= cramped.usable_memory
    assert cramped.host_misfit.startswith("host per node") and "cluster.host_memory_gib" in cramped.host_misfit
    assert cramped.to_json()["host_fits"] is False and roomy.to_json()["host_fits"] is True
    # the strategies table judges each strategy by its own host bytes too
    assert [alt.fits for alt in cramped.alternatives if alt.chosen] == [False]
    assert [alt.fits for alt in roomy.alternatives if alt.chosen] == [True]
    # to NVMe the states leave the host; the NVMe holds them, checked against its own size
    nvme = ("parallelism.offload_optimizer=nvme", "parallelism.offload_params=nvme",
            f"cluster.host_memory_gib={gib * 0.99}")
    on_nvme = planned("llama2-7b", *base, *nvme)
    assert on_nvme.host_memory < cramped.host_memory and on_nvme.nvme_memory > 0 and on_nvme.fits
    small_disk = planned("llama2-7b", *base, *nvme, f"cluster.nvme_gib={on_nvme.nvme_memory / 2**30 * 0.99}")
    assert not small_disk.fits and "cluster.nvme_gib" in small_disk.host_misfit


def test_zero3_offload_host_memory_is_the_nodes_share_under_tensor_parallelism():
    sets = ("parallelism.zero_stage=3", "parallelism.offload_optimizer=cpu", "parallelism.offload_params=cpu",
            "cluster.nodes=1", "training.global_batch_size=64", "parallelism.pipeline=1")
    data_parallel = planned("llama2-7b", *sets, "parallelism.tensor=1")
    split = planned("llama2-7b", *sets, "parallelism.tensor=2")
    psi, dp = split.env["psi"], split.spec.parallelism.data_parallel
    assert dp == 4 and split.host_memory == pytest.approx(psi * 8 / dp * 18 * 1.5, abs=1)
    # one node holds the whole model's shards either way (AutoTP keeps the norms and the untied embedding table
    # whole on both ranks of a pair: 2% more), where the per-GPU count alone would have said half
    assert 1 <= split.host_memory / data_parallel.host_memory < 1.03


def test_zero2_offload_host_memory_is_one_nodes_share():
    """DeepSpeed's ZeRO-2 offload estimate grows with every GPU of the job; a node holds its GPUs' shards."""
    sets = ["parallelism.zero_stage=2", "parallelism.offload_optimizer=cpu"]
    small, large = planned("llama2-7b", *sets, "cluster.nodes=8"), planned("llama2-7b", *sets)  # 64 and 512 GPUs
    assert large.host_memory_deepspeed > 7 * small.host_memory_deepspeed  # DeepSpeed's: proportional to GPUs
    psi, dp = large.params["total"], large.spec.parallelism.data_parallel
    expected = psi / dp * large.spec.cluster.gpus_per_node * (12 + 6) * 1.5  # fp32 master+Adam 12, grads 6 B/param
    assert large.host_memory == pytest.approx(expected, rel=1e-9)
    assert large.host_memory < 64 * 2**30 < large.host_memory_deepspeed


def test_expert_parallel_splits_experts_and_shards_their_states_over_their_replicas():
    base = ("cluster.gpus_per_node=8", "cluster.nodes=1", "training.global_batch_size=64",
            "training.micro_batch_size=1", "parallelism.zero_stage=1")
    one = planned("mixtral-8x7b", *base)
    four = planned("mixtral-8x7b", *base, "parallelism.expert=4")
    expert_params = 32 * 8 * one.env["params_mlp"]
    assert four.params["experts_per_gpu"] == 2 and one.params["experts_per_gpu"] == 8
    assert four.params["per_gpu"] == one.params["per_gpu"] - expert_params * 3 / 4
    # bf16 weights and grads of the held experts only; ZeRO-1's fp32 states of the experts still 1/8 of all of
    # them (each expert's states shard over the 2 ranks holding it, not 8)
    assert four.memory["weights"] == pytest.approx(one.memory["weights"] - 2 * expert_params * 3 / 4, rel=1e-12)
    assert four.memory["optimizer"] == pytest.approx(one.memory["optimizer"], rel=1e-12)
    assert four.time["ep_seconds"] > 0 and one.time["ep_seconds"] == 0


@pytest.mark.parametrize("sets, message", [
    (("parallelism.expert=2",), "splits experts: the model has none"),
    (("model.moe={n_experts: 3, top_k: 2}", "parallelism.expert=2"), "must divide n_experts 3"),
    (("model.moe={n_experts: 4, top_k: 2}", "parallelism.expert=4"), "must divide data_parallel 2"),
])
def test_expert_degree_is_checked(sets, message):
    with pytest.raises(LLMSpecError, match=message):
        load_spec("tiny", ["cluster.gpus_per_node=2", "training.global_batch_size=32", *sets])


@pytest.mark.parametrize("context", [512, 4096])
def test_inference_kv_cache_holds_each_layers_window_or_chunk(context):
    # 6 layers: 3 sliding (window 1024), 2 chunked (chunk 2048), 1 full; 2 kv heads of 16 dims in bf16
    spec = minimal("model.n_layers=6", "model.n_kv_heads=2", "model.position=rope", "model.max_seq_len=4096",
                   "training.seq_len=4096", "model.layer_types=[sliding, chunked, sliding, full, sliding, chunked]",
                   "model.sliding_window=1024", "model.attention_chunk_size=2048", "training.precision=bf16",
                   "cluster.gpu=H100")
    held = 3 * min(1024, context) + 2 * min(2048, context) + context  # positions cached over the layers
    result = inference_plan(spec, context=context, batch=3)
    assert result["kv_cache"] == 3 * held * 2 * 2 * 16 * 2
    assert result["kv_cache_per_token"] == 6 * 2 * 2 * 16 * 2  # one position in every layer, for comparison
    per_sequence = held * 2 * 2 * 16 * 2
    assert result["max_batch"] == (result["usable"] - result["inference_weights"]) // per_sequence


def test_2026_features_saved_bytes_hand_worked():
    """Per token and block, bf16 (e = 2): what each feature adds to what attention keeps for backward."""
    a, k, d_h, h, s, e = 4, 2, 16, 64, 128, 2
    common = ["model.n_kv_heads=2", "model.position=rope", "model.norm=rmsnorm", "training.precision=bf16",
              "cluster.gpu=H100"]

    def attention(*sets):
        return plan(minimal(*common, *sets), alternatives=False).env["act_attention"]

    base = attention()
    # Gemma 2's soft-cap, written out: k and v repeated to every query head, the scores' tanh (bf16), fp32
    # softmax and its bf16 cast, instead of SDPA's fp32 log-sum-exp
    assert attention("model.attn_softcap=50") - base == 2 * (a - k) * d_h * e + a * s * (2 + 4 + 2) - 4 * a
    # QK-norm (composite RMSNorm): an fp32 copy of q and k, their fp32 normalised values, an fp32 rstd per head
    assert attention("model.qk_norm=head") - base == (a + k) * (4 * d_h + 4 * d_h + 4)
    assert attention("model.qk_norm=full") - base == 8 * (a + k) * d_h + 2 * 4  # one rstd for q, one for k
    # sandwich: the attention output's post-norm keeps what the pre-norm keeps (RMSNorm: 8h + 4)
    assert attention("model.norm_placement=sandwich") - base == 8 * h + 4
    assert attention("model.norm_placement=post") == base
