"""Parameter counts are exact: equal to transformers' own count for the same config (meta device, no weights)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers import planned  # noqa: E402

from llmspec.spec.loading import load_spec  # noqa: E402
from llmspec.spec.schema import Spec  # noqa: E402

# Published counts (shared/references.md).
PUBLISHED = {
    "gpt2-124m": 124_439_808, "gpt2-1.5b": 1_557_611_200, "llama2-7b": 6_738_415_616,
    "llama2-70b": 68_976_648_192, "llama3-8b": 8_030_261_248, "llama3-70b": 70_553_706_496,
    "mistral-7b": 7_241_732_096, "mixtral-8x7b": 46_702_792_704,
}


def hf_config(spec: Spec):
    """The transformers config for a spec (test helper; llmspec's own HF interop arrives with the compiler)."""
    m = spec.model
    if m.position == "learned":
        assert m.mlp == "gelu_tanh" and m.norm == "layernorm" and m.bias
        return transformers.GPT2Config(vocab_size=m.vocab_size, n_positions=m.max_seq_len, n_embd=m.d_model,
                                       n_layer=m.n_layers, n_head=m.n_heads, tie_word_embeddings=m.tie_embeddings)
    common = dict(vocab_size=m.vocab_size, hidden_size=m.d_model, num_hidden_layers=m.n_layers,
                  num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads, intermediate_size=m.d_ff,
                  max_position_embeddings=m.max_seq_len, tie_word_embeddings=m.tie_embeddings, head_dim=m.head_dim)
    if m.moe:
        return transformers.MixtralConfig(num_local_experts=m.moe.n_experts, num_experts_per_tok=m.moe.top_k,
                                          **common)
    if m.qkv_bias:
        return transformers.Qwen2Config(**common)
    if m.sliding_window:
        return transformers.MistralConfig(sliding_window=m.sliding_window, **common)
    return transformers.LlamaConfig(attention_bias=m.bias, mlp_bias=m.bias, **common)


def hf_counts(spec: Spec) -> tuple[int, int]:
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config(spec))
    return model.num_parameters(), model.num_parameters(exclude_embeddings=True)


@pytest.mark.parametrize("name", ["gpt2-124m", "gpt2-1.5b", "llama2-7b", "llama2-70b", "llama3-8b", "llama3-70b",
                                  "llama3-405b", "mistral-7b", "mixtral-8x7b", "qwen2-7b", "tiny", "tiny-gpt2",
                                  "tiny-moe"])
def test_named_specs_match_transformers(name):
    spec = load_spec(name)
    total, non_embedding = hf_counts(spec)
    params = planned(name).params
    assert params["total"] == total
    assert params["non_embedding"] == non_embedding
    if name in PUBLISHED:
        assert params["total"] == PUBLISHED[name]


@pytest.mark.parametrize("sets", [
    ["model.tie_embeddings=true"],  # Llama tied
    ["model.n_kv_heads=1"],  # MQA
    ["model.n_kv_heads=2"],  # GQA
    ["model.bias=true"],  # attention + MLP biases
    ["model.qkv_bias=true"],  # Qwen2-style
    ["model.head_dim=48"],  # head_dim != d_model / n_heads
    ["model.moe={n_experts: 4, top_k: 1}"],
    ["model.moe={n_experts: 8, top_k: 2}", "model.n_kv_heads=1"],
])
def test_variants_match_transformers(sets):
    spec = load_spec("tiny", ["model.tie_embeddings=false", *sets])
    total, non_embedding = hf_counts(spec)
    params = planned("tiny", "model.tie_embeddings=false", *sets).params
    assert (params["total"], params["non_embedding"]) == (total, non_embedding)


def test_gpt2_untied_matches_transformers():
    spec = load_spec("tiny-gpt2", ["model.tie_embeddings=false"])
    assert planned("tiny-gpt2", "model.tie_embeddings=false").params["total"] == hf_counts(spec)[0]


def test_mixtral_active_params_hand_worked():
    # Mixtral-8x7B: 6 of 8 experts idle per token; one expert is 3 × 4096 × 14336 weights, 32 layers.
    p = planned("mixtral-8x7b").params
    assert p["total"] - p["active"] == 32 * 6 * 3 * 4096 * 14336
    assert p["active"] == 12_879_925_248


def test_components_sum_to_total():
    for name in ("llama2-7b", "gpt2-124m", "mixtral-8x7b"):
        p, layers = planned(name).params, load_spec(name).model.n_layers
        one_norm = p["norms"] // (2 * layers + 1)
        assert p["per_layer"] == p["attention_per_layer"] + p["mlp_per_layer"] + p["router_per_layer"] + 2 * one_norm
        assert p["total"] == p["embedding"] + layers * p["per_layer"] + one_norm + p["lm_head"]
