"""Parameter counts are exact: equal to transformers' own count for the same config (meta device, no weights)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers import minimal, planned  # noqa: E402

from llmspec.planner import plan  # noqa: E402
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


# The 2026 families at released sizes (each model's config.json on the Hub): vocab, d_model, layers, heads,
# kv heads, head_dim, d_ff, tied. Spec and transformers config are built from the same row, so the test checks the
# planner's structure (QK-norms, sandwich and post norms, parallel residual, biases, NoPE, partial rotary, layer
# kinds) against transformers' own modules, not a transcription.
FAMILIES = {
    "qwen3": [(151936, 1024, 28, 16, 8, 128, 3072, True), (151936, 4096, 36, 32, 8, 128, 12288, False),
              (151936, 5120, 64, 64, 8, 128, 25600, False)],
    "gemma2": [(256000, 2304, 26, 8, 4, 256, 9216, True), (256000, 3584, 42, 16, 8, 256, 14336, True),
               (256000, 4608, 46, 32, 16, 128, 36864, True)],
    "gemma3_text": [(262144, 1152, 26, 4, 1, 256, 6912, True), (262208, 3840, 48, 16, 8, 256, 15360, True),
                    (262208, 5376, 62, 32, 16, 128, 21504, True)],
    "olmo2": [(100352, 2048, 16, 16, 16, 128, 8192, False), (100352, 4096, 32, 32, 32, 128, 11008, False),
              (100352, 5120, 40, 40, 40, 128, 13824, False)],
    "phi3": [(32064, 3072, 32, 32, 32, 96, 8192, False), (100352, 5120, 40, 40, 10, 128, 17920, False),
             (200064, 3072, 32, 24, 8, 128, 8192, True)],
    "smollm3": [(128256, 2048, 36, 16, 4, 128, 11008, True)],
    "gpt_neox": [(50304, 768, 12, 12, 12, 64, 3072, False), (50432, 4096, 32, 32, 32, 128, 16384, False)],
}


def family_model(family: str, row: tuple) -> tuple[object, list[str]]:
    """transformers' config of a family at one size, and the same model as spec overrides."""
    vocab, hidden, layers, heads, kv, head_dim, inter, tied = row
    dims = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv, intermediate_size=inter, tie_word_embeddings=tied,
                max_position_embeddings=4096)
    sets = [f"model.vocab_size={vocab}", f"model.d_model={hidden}", f"model.n_layers={layers}",
            f"model.n_heads={heads}", f"model.n_kv_heads={kv}", f"model.head_dim={head_dim}", f"model.d_ff={inter}",
            f"model.tie_embeddings={str(tied).lower()}", "model.max_seq_len=4096", "training.seq_len=4096",
            "model.position=rope", "model.norm=rmsnorm", "model.mlp=swiglu"]
    if family == "qwen3":
        return transformers.Qwen3Config(head_dim=head_dim, **dims), [*sets, "model.qk_norm=head"]
    if family in ("gemma2", "gemma3_text"):
        gemma = ["model.mlp=geglu_tanh", "model.norm_placement=sandwich", f"model.embed_scale={hidden ** 0.5}",
                 "model.query_scale=0.0625", "model.sliding_window=1024"]
        if family == "gemma2":
            config = transformers.Gemma2Config(head_dim=head_dim, sliding_window=1024, **dims)
            return config, [*sets, *gemma, "model.layer_types=[sliding, full]", "model.attn_softcap=50",
                            "model.final_softcap=30"]
        config = transformers.Gemma3TextConfig(head_dim=head_dim, sliding_window=1024, **dims)
        return config, [*sets, *gemma, "model.qk_norm=head", "model.rope_local_theta=10000",
                        "model.layer_types=[sliding, sliding, sliding, sliding, sliding, full]"]
    if family == "olmo2":
        return transformers.Olmo2Config(**dims), [*sets, "model.qk_norm=full", "model.norm_placement=post"]
    if family == "phi3":
        rotary = 0.75 if tied else 1.0  # Phi-4-mini rotates three quarters of each head
        return transformers.Phi3Config(partial_rotary_factor=rotary, **dims), [*sets,
                                                                               f"model.partial_rotary={rotary}"]
    if family == "smollm3":
        return transformers.SmolLM3Config(**dims), [*sets, "model.nope_layers=4"]
    assert family == "gpt_neox"
    config = transformers.GPTNeoXConfig(rotary_pct=0.25, use_parallel_residual=True, **dims)
    return config, [*sets, "model.norm=layernorm", "model.bias=true", "model.mlp=gelu", "model.partial_rotary=0.25",
                    "model.parallel_residual=true"]


@pytest.mark.parametrize("family, row", [(family, row) for family, rows in FAMILIES.items() for row in rows],
                         ids=lambda value: value if isinstance(value, str) else f"{value[1]}x{value[2]}")
def test_2026_families_match_transformers_at_released_sizes(family, row):
    config, sets = family_model(family, row)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    params = plan(minimal(*sets), alternatives=False).params
    assert params["total"] == model.num_parameters()
    assert params["non_embedding"] == model.num_parameters(exclude_embeddings=True)
