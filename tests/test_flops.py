"""FLOPs per token, hand-worked: matmul weights ×2, causal attention, sliding window, MoE top-k, recompute."""

from __future__ import annotations

import math

import pytest
from helpers import minimal, planned

from llmspec.planner import numeric, plan


def test_gpt2_124m_forward_hand_worked():
    # 12 blocks × (c_attn 768×2304 + c_proj 768×768 + fc 768×3072 + proj 3072×768) + tied head 50257×768.
    matmul = 12 * (768 * 2304 + 768 * 768 + 2 * 768 * 3072) + 50257 * 768
    attention = 4 * 12 * 768 * (1024 + 1) / 2  # QK^T and AV over the causal triangle, averaged per query
    f = planned("gpt2-124m").flops
    assert f["per_token_forward"] == 2 * matmul + attention
    assert f["per_token_train"] == 3 * f["per_token_forward"]
    assert f["per_token_hardware"] == f["per_token_train"]  # no checkpointing in the spec


def test_attention_context_causal_and_windowed():
    def ctx(s, window):  # one sliding layer, causal (measure's full-attention count sets causal to 0)
        return numeric.attention_context(causal=1, s=s, window=window, L=1, L_sliding=1, L_chunked=0, chunk=s,
                                         document_masking=0, document_keys=1)

    assert ctx(4096, 4096) == (4096 + 1) / 2
    # window 2 over 4 positions: keys per query 1, 2, 2, 2 -> mean 7/4
    assert ctx(4, 2) == 7 / 4
    assert ctx(8192, 4096) == (4096 * 4097 / 2 + 4096 * 4096) / 8192
    assert ctx(100, 1000) == ctx(100, 100)  # a window wider than the sequence is no window


def test_mistral_window_reduces_attention_flops():
    windowed = planned("mistral-7b").flops["attention_per_token"]
    full = planned("mistral-7b", "model.sliding_window=null").flops["attention_per_token"]
    assert windowed == pytest.approx(full * ((4096 * 4097 / 2 + 4096 * 4096) / 8192) / (8193 / 2))


def test_moe_counts_top_k_experts():
    p = planned("mixtral-8x7b")
    h, f, L, V = 4096, 14336, 32, 32000
    matmul = L * (h * (32 + 16) * 128 + 32 * 128 * h + 2 * 3 * h * f + h * 8) + V * h
    assert p.env["matmul_weights"] == matmul
    assert p.flops["six_nd"] == 6 * 12_879_925_248 * p.spec.training.total_tokens


@pytest.mark.parametrize("factor", [0.3, 1.25])
def test_moe_capacity_computes_a_fixed_number_of_rows_per_expert(factor):
    dropless = planned("mixtral-8x7b")
    p = planned("mixtral-8x7b", f"model.moe.capacity_factor={factor}")
    h, f, L, K, E = 4096, 14336, 32, 2, 8
    tokens = p.spec.training.micro_batch_size * p.spec.training.seq_len
    rows = math.ceil(factor * tokens * K / E)  # per expert and micro-batch, padded or cut to it
    extra = (E * rows - tokens * K) / tokens  # expert rows per token beyond one per routed token
    assert p.flops["capacity_per_token"] == pytest.approx(2 * L * extra * 3 * h * f)
    assert p.flops["per_token_train"] == pytest.approx(3 * (dropless.flops["per_token_forward"]
                                                            + 2 * L * extra * 3 * h * f))
    assert (p.flops["per_token_train"] > dropless.flops["per_token_train"]) == (factor > 1)
    # inference routes every token: the forward, parameters and 6ND are the dropless model's
    assert p.flops["per_token_forward"] == dropless.flops["per_token_forward"]
    assert p.flops["six_nd"] == dropless.flops["six_nd"]


@pytest.mark.parametrize("mode,extra", [("none", 0), ("selective", "mlp"), ("full", "blocks")])
def test_recompute_flops(mode, extra):
    plan = planned("llama2-7b", f"parallelism.activation_checkpointing={mode}")
    f = plan.flops
    h, fff, L, V = 4096, 11008, 32, 32000
    if extra == 0:
        expected = 0
    # Non-reentrant checkpointing stops early: nothing saves the down projection's output, so it is not
    # recomputed (tests/test_measure.py confirms this on the compiled model).
    elif extra == "mlp":
        expected = 2 * L * 2 * h * fff
    else:
        expected = f["per_token_forward"] - 2 * V * h - 2 * L * h * fff
    assert f["per_token_hardware"] - f["per_token_train"] == pytest.approx(expected)


def test_per_step_and_total():
    f, tr = planned("llama2-7b").flops, planned("llama2-7b").spec.training
    assert f["per_step"] == f["per_token_train"] * 1024 * 4096
    assert f["total"] == f["per_token_train"] * tr.total_tokens == f["per_token_train"] * 2 * 10**12
    assert 1.0 < f["total"] / f["six_nd"] < 1.1  # attention adds a few percent over 6ND at 4k context


def _keys_brute_force(kinds: list[str], s: int, window: int = 0, chunk: int = 0) -> int:
    """Keys every query of every layer sees, counted one query at a time."""
    seen = {"full": lambda i: i + 1, "sliding": lambda i: min(i + 1, window), "chunked": lambda i: i % chunk + 1}
    return sum(seen[kind](i) for kind in kinds for i in range(s))


@pytest.mark.parametrize("sets, kinds", [
    # Gemma 3: five sliding layers of window 1024 to one full one
    (["model.layer_types=[sliding, sliding, sliding, sliding, sliding, full]", "model.sliding_window=1024"],
     ["sliding"] * 5 + ["full"]),
    # Gemma 2: alternating; Llama 4's chunked layers (3 of 4) with a partial last chunk of 4096 - 3·1000 positions
    (["model.layer_types=[sliding, full]", "model.sliding_window=100"], ["sliding", "full"] * 3),
    (["model.layer_types=[chunked, chunked, chunked, full]", "model.attention_chunk_size=1000"],
     ["chunked", "chunked", "chunked", "full", "chunked", "chunked"]),
    (["model.sliding_window=5000"], ["sliding"] * 6),  # a window wider than the sequence is no window
])
def test_attention_flops_per_layer_kind_hand_counted(sets, kinds):
    window = next((int(x.split("=")[1]) for x in sets if "sliding_window" in x), 0)
    chunk = next((int(x.split("=")[1]) for x in sets if "chunk_size" in x), 0)
    s, a, d_h = 4096, 4, 16
    p = plan(minimal("model.n_layers=6", "model.max_seq_len=4096", "training.seq_len=4096", "model.position=rope",
                     *sets), alternatives=False)
    keys = _keys_brute_force(kinds, s, window, chunk)
    assert p.flops["attention_per_token"] == pytest.approx(4 * a * d_h * keys / s, rel=1e-15)
    assert p.env["attention_context"] == pytest.approx(keys / (6 * s), rel=1e-15)


def test_document_masking_computes_every_key():
    """Model FLOPs count at most the causal keys under document masking (the documents' lengths are the data
    layer's); SDPA under the mask computes every key, forward, backward (2×) and the full checkpoint's recompute."""
    s, a, d_h, L = 128, 4, 16, 2
    common = ["model.position=rope", "model.max_seq_len=128", "parallelism.activation_checkpointing=full"]
    masked = plan(minimal(*common, "data.document_masking=true"), alternatives=False)
    causal = plan(minimal(*common), alternatives=False)
    assert masked.flops["attention_per_token"] == causal.flops["attention_per_token"] == 4 * L * a * d_h * (s + 1) / 2
    assert masked.flops["per_token_train"] == causal.flops["per_token_train"]
    every_key = 4 * L * a * d_h * s
    assert masked.flops["per_token_hardware"] - causal.flops["per_token_hardware"] == \
        pytest.approx(4 * (every_key - causal.flops["attention_per_token"]), rel=1e-12)
