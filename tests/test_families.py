"""The 2026 families (Qwen3, Gemma 2, Gemma 3, OLMo 2, Phi-3/Phi-4, SmolLM3, GPT-NeoX/Pythia) through import-hf and
export-hf: tiny random transformers models with every feature on give the compiled model's logits and come back; a
config alone gives a spec that plans; released configs give the named specs and transformers' parameter counts."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers import CHATML, chatml_checkpoint, logits, random_hf_model, tiny_hf_configs
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPTNeoXConfig,
    Olmo2Config,
    Phi3Config,
    Qwen3Config,
    SmolLM3Config,
)

from llmspec.compile.build import build
from llmspec.compile.loading import load_model_module
from llmspec.errors import LLMSpecError
from llmspec.interop.hf import export_hf, import_hf, imported_spec
from llmspec.interop.hf_config import hf_config, hf_family
from llmspec.interop.hf_config_read import DEFAULTS
from llmspec.interop.hf_weights import fuse, unfuse
from llmspec.planner import plan
from llmspec.spec.loading import load_spec

S, F = "sliding_attention", "full_attention"
TINY = tiny_hf_configs()


@pytest.mark.parametrize("case", sorted(TINY))
def test_import_gives_transformers_logits_and_export_gives_them_back(case, tmp_path):
    hf = random_hf_model(TINY[case])
    hf.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "imported")
    spec = load_spec(tmp_path / "imported" / "spec.yaml")
    build(spec, tmp_path / "build")
    ours = load_model_module(tmp_path / "build" / "model.py").Model().eval()
    ours.load_state_dict(load_file(tmp_path / "imported" / "model.safetensors"), strict=True)
    idx = torch.randint(0, 97, (2, 40))  # past every window and every pretraining context above
    expected = logits(hf, idx)
    assert (logits(ours, idx) - expected).abs().max().item() <= 1e-5

    export_hf(tmp_path / "imported" / "model.safetensors", spec, tmp_path / "exported")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    assert type(back) is type(hf)
    assert (logits(back, idx) - expected).abs().max().item() <= 1e-5
    _assert_same_meaning(AutoConfig.from_pretrained(tmp_path / "exported"), TINY[case])


def _assert_same_meaning(config, original) -> None:
    assert config.model_type == original.model_type
    assert _semantics(config) == _semantics(original)
    ours, theirs = _rope_tables(config), _rope_tables(original)
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6)


def _semantics(config) -> dict:
    """What a transformers config makes its model compute, as transformers resolves it (defaults, legacy keys,
    derived layer types and RoPE parameters)."""
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "hidden_act", "hidden_activation", "rms_norm_eps", "layer_norm_eps",
            "tie_word_embeddings", "layer_types", "query_pre_attn_scalar", "attn_logit_softcapping",
            "final_logit_softcapping", "no_rope_layers", "use_parallel_residual", "attention_bias", "mlp_bias",
            "n_embd", "n_layer", "n_head", "n_inner", "activation_function", "layer_norm_epsilon", "num_local_experts",
            "num_experts_per_tok")
    out = {key: getattr(config, key, None) for key in keys if key in config.to_dict()}
    out["head_dim"] = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if config.model_type == "gpt2":
        out["n_inner"] = config.n_inner or 4 * config.n_embd  # GPT-2's MLP width when n_inner is null
    windowed = S in (getattr(config, "layer_types", None) or []) or config.model_type in ("phi3", "mistral", "mixtral")
    out["sliding_window"] = config.sliding_window if windowed else None
    return out


def _rope_tables(config) -> dict:
    """cos and sin as the family's rotary module computes them, within the pretraining context and past it (longrope
    switches factors there), per layer type where the family has one RoPE per type (Gemma 3)."""
    torch.manual_seed(0)
    rotary = getattr(AutoModelForCausalLM.from_config(config).base_model, "rotary_emb", None)
    if rotary is None:
        return {}  # learned positions (GPT-2)
    kinds = sorted(set(config.layer_types)) if config.model_type == "gemma3_text" else [None]
    tables = {}
    for length in (16, 64):
        positions = torch.arange(length)[None]
        for kind in kinds:
            extra = {"layer_type": kind} if kind else {}
            tables[(length, kind)] = torch.stack(rotary(torch.zeros(1, length, 1), positions, **extra))
    return tables


def test_config_alone_round_trips_through_the_spec(tmp_path):
    """No weights, no compiled model: every family's config → spec → config means the same to transformers."""
    for case, config in TINY.items():
        config.save_pretrained(tmp_path / case)
        spec = imported_spec(json.loads((tmp_path / case / "config.json").read_text()), case, "config.json")
        _assert_same_meaning(AutoConfig.for_model(**hf_config(spec)), config)


def test_fused_projections_split_as_transformers_computes_them():
    """Phi-3's stacked qkv_proj and gate_up_proj, GPT-NeoX's per-head interleaved query_key_value: the parts
    ``unfuse`` gives compute what transformers' own forward takes from the fused tensor, and ``fuse`` is exact."""
    torch.manual_seed(0)
    x = torch.randn(3, 32)
    neox = random_hf_model(TINY["gpt_neox"])
    spec = imported_spec(neox.config.to_dict(), "neox", "config.json")
    attention = neox.gpt_neox.layers[0].attention
    fused = {f"gpt_neox.layers.0.attention.query_key_value.{p}": t for p, t in
             attention.query_key_value.named_parameters()}
    parts = unfuse(fused, "gpt_neox", spec.model)
    qkv = attention.query_key_value(x).view(3, 4, 3 * 8)  # transformers: heads, then [q k v] of each
    for index, part in enumerate("qkv"):
        name = f"gpt_neox.layers.0.attention.{part}_proj."
        ours = torch.nn.functional.linear(x, parts[name + "weight"], parts[name + "bias"]).view(3, 4, 8)
        torch.testing.assert_close(ours, qkv.chunk(3, dim=-1)[index], rtol=0, atol=1e-6)
    assert all(torch.equal(fuse(parts, "gpt_neox", spec.model)[n], t) for n, t in fused.items())

    phi = random_hf_model(TINY["phi3"])
    spec = imported_spec(phi.config.to_dict(), "phi", "config.json")
    layer = phi.model.layers[0]
    fused = {"model.layers.0.self_attn.qkv_proj.weight": layer.self_attn.qkv_proj.weight,
             "model.layers.0.mlp.gate_up_proj.weight": layer.mlp.gate_up_proj.weight}
    parts = unfuse(fused, "phi3", spec.model)
    q = x @ parts["model.layers.0.self_attn.q_proj.weight"].T
    torch.testing.assert_close(q, layer.self_attn.qkv_proj(x)[:, :32], rtol=0, atol=1e-6)
    gate, up = parts["model.layers.0.mlp.gate_proj.weight"], parts["model.layers.0.mlp.up_proj.weight"]
    torch.testing.assert_close(layer.mlp(x[None])[0], layer.mlp.down_proj(torch.nn.functional.silu(x @ gate.T) *
                                                                           (x @ up.T)), rtol=0, atol=1e-6)
    assert all(torch.equal(fuse(parts, "phi3", spec.model)[n], t) for n, t in fused.items())


def test_family_defaults_are_transformers_own():
    """A key left out of config.json takes the default of the family's transformers config class."""
    classes = {"qwen3": Qwen3Config, "gemma2": Gemma2Config, "gemma3_text": Gemma3TextConfig, "olmo2": Olmo2Config,
               "phi3": Phi3Config, "smollm3": SmolLM3Config, "gpt_neox": GPTNeoXConfig}
    for family, defaults in DEFAULTS.items():
        fields = classes[family].__dataclass_fields__
        for key, value in defaults.items():
            assert fields[key].default == value, (family, key)


# (family, change to the tiny config, the one line)
REFUSED = [
    ("qwen3", {"attention_bias": True}, "attention_bias=true (biases on q, k, v and o, none in the MLP)"),
    ("qwen3", {"partial_rotary_factor": 0.5}, "partial_rotary_factor 0.5: transformers' qwen3 rotates every dim"),
    ("qwen3", {"use_sliding_window": False}, "use_sliding_window: layer_types has sliding_attention layers"),
    ("qwen3", {"layer_types": [F, "chunked_attention", F, F]}, "layer_types[1] 'chunked_attention'"),
    ("qwen3", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, "rope type 'dynamic'"),
    ("qwen3", {"attention_dropout": 0.1}, "attention_dropout=0.1 (dropout on the attention probabilities)"),
    ("gemma2", {"use_bidirectional_attention": True}, "use_bidirectional_attention=true"),
    ("gemma2", {"hidden_activation": "relu"}, "hidden_activation 'relu' is not supported"),
    ("gemma3_text", {"rope_parameters": {"full_attention": {"rope_type": "default"},
                                         "sliding_attention": {"rope_type": "linear", "factor": 2.0}}},
     "rope_parameters.sliding_attention: rope type 'linear'"),
    ("gemma3_text", {"attn_logit_softcapping": 50.0}, "attn_logit_softcapping=50.0 is not applied by transformers'"),
    ("olmo2", {"attention_bias": True}, "attention_bias=true"),
    ("phi3", {"rope_parameters": {"rope_type": "longrope", "short_factor": [1.0, 1.0]}},
     "rope_parameters.long_factor is missing (needed for rope type 'longrope')"),
    ("phi3", {"resid_pdrop": 0.1}, "resid_pdrop=0.1 (dropout on the sub-blocks' outputs but not the embeddings)"),
    ("smollm3", {"mlp_bias": False}, "attention_bias=True with mlp_bias=False"),
    ("smollm3", {"no_rope_layers": [1, 0]}, "no_rope_layers has 2 entries for num_hidden_layers 4"),
    ("gpt_neox", {"attention_bias": False}, "attention_bias=false (no attention biases"),
    ("gpt_neox", {"hidden_act": "silu"}, "hidden_act 'silu' is not supported"),
]


@pytest.mark.parametrize(("family", "change", "message"), REFUSED, ids=[f"{f}-{next(iter(c))}" for f, c, _ in REFUSED])
def test_keys_that_change_the_math_are_refused_by_name(family, change, message, tmp_path):
    config = json.loads(TINY[family].to_json_string())
    config.update(change)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(config))
    with pytest.raises(LLMSpecError, match=re.escape(message)) as info:
        import_hf(tmp_path / "cfg", tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


# The released config.json of each named spec, as its model card's repository has it (the keys that shape the model).
RELEASED = {
    "qwen3-8b": {"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 4096, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12288,
                 "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000, "rope_scaling": None,
                 "max_position_embeddings": 40960, "max_window_layers": 36, "sliding_window": None,
                 "use_sliding_window": False, "attention_bias": False, "tie_word_embeddings": False},
    "gemma2-9b": {"model_type": "gemma2", "vocab_size": 256000, "hidden_size": 3584, "num_hidden_layers": 42,
                  "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "intermediate_size": 14336,
                  "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
                  "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 8192,
                  "query_pre_attn_scalar": 256, "sliding_window": 4096, "attn_logit_softcapping": 50.0,
                  "final_logit_softcapping": 30.0, "attention_bias": False},
    "gemma3-12b": {"model_type": "gemma3_text", "vocab_size": 262208, "hidden_size": 3840, "num_hidden_layers": 48,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "intermediate_size": 15360,
                   "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                   "rope_local_base_freq": 10000.0, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                   "max_position_embeddings": 131072, "query_pre_attn_scalar": 256, "sliding_window": 1024,
                   "sliding_window_pattern": 6, "final_logit_softcapping": None, "attn_logit_softcapping": None},
    "olmo2-7b": {"model_type": "olmo2", "vocab_size": 100352, "hidden_size": 4096, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 11008,
                 "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 500000, "rope_scaling": None,
                 "max_position_embeddings": 4096, "attention_bias": False, "tie_word_embeddings": False},
    "phi4": {"model_type": "phi3", "vocab_size": 100352, "hidden_size": 5120, "num_hidden_layers": 40,
             "num_attention_heads": 40, "num_key_value_heads": 10, "intermediate_size": 17920, "hidden_act": "silu",
             "rms_norm_eps": 1e-5, "rope_theta": 250000, "rope_scaling": None, "max_position_embeddings": 16384,
             "original_max_position_embeddings": 16384, "sliding_window": None, "resid_pdrop": 0.0,
             "embd_pdrop": 0.0, "tie_word_embeddings": False},
    "smollm3-3b": {"model_type": "smollm3", "vocab_size": 128256, "hidden_size": 2048, "num_hidden_layers": 36,
                   "num_attention_heads": 16, "num_key_value_heads": 4, "intermediate_size": 11008,
                   "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 5000000.0, "rope_scaling": None,
                   "max_position_embeddings": 65536, "no_rope_layer_interval": 4,
                   "no_rope_layers": [int((i + 1) % 4 != 0) for i in range(36)], "use_sliding_window": False,
                   "sliding_window": None, "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": True},
    "pythia-6.9b": {"model_type": "gpt_neox", "vocab_size": 50432, "hidden_size": 4096, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "intermediate_size": 16384, "hidden_act": "gelu",
                    "layer_norm_eps": 1e-5, "rotary_emb_base": 10000, "rotary_pct": 0.25,
                    "max_position_embeddings": 2048, "use_parallel_residual": True, "tie_word_embeddings": False},
}
# Other released sizes of the same families (their config.json's shaping keys over the family's defaults).
OTHER_SIZES = {
    "qwen3-0.6b": {**RELEASED["qwen3-8b"], "hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16,
                   "intermediate_size": 3072, "tie_word_embeddings": True},
    "qwen3-32b": {**RELEASED["qwen3-8b"], "hidden_size": 5120, "num_hidden_layers": 64, "num_attention_heads": 64,
                  "intermediate_size": 25600},
    "gemma2-2b": {**RELEASED["gemma2-9b"], "hidden_size": 2304, "num_hidden_layers": 26, "num_attention_heads": 8,
                  "num_key_value_heads": 4, "intermediate_size": 9216},
    "gemma2-27b": {**RELEASED["gemma2-9b"], "hidden_size": 4608, "num_hidden_layers": 46, "num_attention_heads": 32,
                   "num_key_value_heads": 16, "head_dim": 128, "intermediate_size": 36864,
                   "query_pre_attn_scalar": 144},
    "gemma3-1b": {**RELEASED["gemma3-12b"], "vocab_size": 262144, "hidden_size": 1152, "num_hidden_layers": 26,
                  "num_attention_heads": 4, "num_key_value_heads": 1, "intermediate_size": 6912,
                  "sliding_window": 512, "rope_scaling": None, "max_position_embeddings": 32768},
    "gemma3-27b": {**RELEASED["gemma3-12b"], "hidden_size": 5376, "num_hidden_layers": 62, "num_attention_heads": 32,
                   "num_key_value_heads": 16, "head_dim": 128, "intermediate_size": 21504,
                   "query_pre_attn_scalar": 168},
    "olmo2-13b": {**RELEASED["olmo2-7b"], "hidden_size": 5120, "num_hidden_layers": 40, "num_attention_heads": 40,
                  "num_key_value_heads": 40, "intermediate_size": 13824},
    "phi3-mini-4k": {**RELEASED["phi4"], "vocab_size": 32064, "hidden_size": 3072, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 8192,
                     "rope_theta": 10000.0, "max_position_embeddings": 4096, "original_max_position_embeddings": 4096,
                     "sliding_window": 2047},
    "phi4-mini": {**RELEASED["phi4"], "vocab_size": 200064, "hidden_size": 3072, "num_hidden_layers": 32,
                  "num_attention_heads": 24, "num_key_value_heads": 8, "intermediate_size": 8192,
                  "rope_theta": 10000.0, "partial_rotary_factor": 0.75, "max_position_embeddings": 131072,
                  "original_max_position_embeddings": 4096, "tie_word_embeddings": True,
                  "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [2.0] * 48}},
    "pythia-160m": {**RELEASED["pythia-6.9b"], "vocab_size": 50304, "hidden_size": 768, "num_hidden_layers": 12,
                    "num_attention_heads": 12, "intermediate_size": 3072},
    "pythia-12b": {**RELEASED["pythia-6.9b"], "vocab_size": 50688, "hidden_size": 5120, "num_hidden_layers": 36,
                   "num_attention_heads": 40, "intermediate_size": 20480},
}
EXPORTED_AS = {"qwen3-8b": "qwen3", "gemma2-9b": "gemma2", "gemma3-12b": "gemma3_text", "olmo2-7b": "olmo2",
               "phi4": "llama", "smollm3-3b": "smollm3", "pythia-6.9b": "gpt_neox"}


def _config_only(tmp_path, config: dict):
    """A config-only checkpoint directory, imported: its spec."""
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(config))
    import_hf(tmp_path / "cfg", tmp_path / "out")
    return load_spec(tmp_path / "out" / "spec.yaml")


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_named_specs_are_their_released_configs(name, tmp_path):
    imported = _config_only(tmp_path, RELEASED[name])
    named = load_spec(name)
    assert imported.model == named.model
    assert hf_family(named) == EXPORTED_AS[name]


def _meta_count(config: dict) -> tuple[int, int]:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    return model.num_parameters(), model.num_parameters(exclude_embeddings=True)


@pytest.mark.parametrize("name", sorted(RELEASED) + sorted(OTHER_SIZES))
def test_a_released_config_plans_with_transformers_parameter_count(name, tmp_path):
    """A user plans any of these models from its config.json alone; the plan counts what transformers builds."""
    config = RELEASED.get(name) or OTHER_SIZES[name]
    params = plan(_config_only(tmp_path, config)).params
    assert (params["total"], params["non_embedding"]) == _meta_count(config)


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_named_specs_export_configs_transformers_counts_alike(name):
    spec = load_spec(name)
    assert plan(spec).params["total"] == _meta_count(hf_config(spec))[0]


TINY_SPECS = {"tiny-qwen3": "Qwen3ForCausalLM", "tiny-gemma2": "Gemma2ForCausalLM",
              "tiny-gemma3": "Gemma3ForCausalLM", "tiny-olmo2": "Olmo2ForCausalLM", "tiny-phi3": "Phi3ForCausalLM",
              "tiny-smollm3": "SmolLM3ForCausalLM", "tiny-pythia": "GPTNeoXForCausalLM"}


@pytest.mark.parametrize("name", sorted(TINY_SPECS))
def test_a_model_llmspec_built_exports_to_its_family_with_the_same_logits(name, tmp_path):
    """The other way round: a spec written for llmspec (derived RoPE factors, no import behind it), its compiled
    model's weights exported, transformers' class of the family computes the same logits."""
    from llmspec.interop.hf import export_state

    spec = load_spec(name)
    build(spec, tmp_path / "build")
    torch.manual_seed(0)
    ours = load_model_module(tmp_path / "build" / "model.py").Model().eval()
    with torch.no_grad():
        for param_name, param in ours.named_parameters():
            if "norm" in param_name:
                param.add_(torch.randn_like(param) * 0.2)
    export_state(ours.state_dict(), spec, tmp_path / "hf")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == TINY_SPECS[name]
    idx = torch.randint(0, spec.model.vocab_size, (2, spec.model.max_seq_len))  # the whole context
    assert (logits(theirs, idx) - logits(ours, idx)).abs().max().item() <= 1e-5


@pytest.mark.integration
@pytest.mark.parametrize("family", ["qwen3", "gemma3_text"])
def test_lora_sft_from_an_imported_model_exports_and_reloads_with_its_template(family, tmp_path):
    """Import a tiny Qwen3 / Gemma 3 with a chat template, fine-tune it with LoRA (SFT), export: transformers reloads
    the merged model with the run's logits, PEFT applies the adapter to the original checkpoint with the same
    logits, and the chat template and end-of-turn token come through."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from llmspec.runner import run
    from llmspec.train.export_hf import export_run
    from llmspec.train.generate import load_run

    hf, imported, run_dir, out = tmp_path / "hf", tmp_path / "imported", tmp_path / "sft", tmp_path / "out"
    config = TINY[family].__class__.from_dict(TINY[family].to_dict())
    tokenizer = chatml_checkpoint(hf, config)
    import_hf(hf, imported)
    corpus = tmp_path / "sft.jsonl"
    words = "the cat sat on mat hello there yes it is".split()
    corpus.write_text("".join(json.dumps({"prompt": f"Say yes: {a} {b}", "response": "yes"}) + "\n"
                              for a in words for b in words))
    spec = load_spec(imported / "spec.yaml", [
        "post_training.method=sft", "post_training.adapter={type: lora, r: 4, alpha: 8, targets: all-linear}",
        f"data.corpus={corpus}", f"training.init_from={imported}", "training.precision=fp32", "training.seq_len=48",
        "training.micro_batch_size=8", "training.global_batch_size=8", "training.max_steps=6",
        "training.schedule.warmup_steps=1", "training.optimizer.lr=1e-2", "training.eval_interval=6",
        "training.checkpoint_interval=6", "training.log_interval=2", "cluster.gpu=cpu", "cluster.gpus_per_node=1",
        "cluster.nodes=1"])
    run(spec, run_dir, announce=lambda *a: None)
    export_run(run_dir, out)

    idx = torch.randint(0, 320, (2, 40))
    _, model, _ = load_run(run_dir)
    expected = logits(model.eval(), idx)
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(merged).__name__ == {"qwen3": "Qwen3ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}[family]
    assert (logits(merged, idx) - expected).abs().max().item() <= 1e-4
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(hf), out / "adapter").eval()
    assert (logits(adapted, idx) - expected).abs().max().item() <= 1e-4
    assert (logits(adapted, idx) - logits(AutoModelForCausalLM.from_pretrained(hf).eval(), idx)).abs().max() > 1e-3
    theirs = AutoTokenizer.from_pretrained(out)
    assert theirs.chat_template == AutoTokenizer.from_pretrained(hf).chat_template and theirs.eos_token == "<|im_end|>"
    assert (out / "chat_template.jinja").read_text() == CHATML
    assert merged.config.eos_token_id == merged.generation_config.eos_token_id == tokenizer.token_to_id("<|im_end|>")


def test_a_multimodal_gemma3_checkpoint_imports_its_language_model(tmp_path):
    """Gemma 3 4B and up are saved as Gemma3ForConditionalGeneration: import reads its text_config and its language
    model's weights (the vision tower is left behind), with the text-only logits of the whole model."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    # the multimodal config ties the head, whatever its text_config says
    text = {**TINY["gemma3_text"].to_dict(), "tie_word_embeddings": False, "final_logit_softcapping": None}
    config = Gemma3Config(text_config=text, vision_config={
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "image_size": 28, "patch_size": 14}, mm_tokens_per_image=4, image_token_index=96, boi_token_index=94,
        eoi_token_index=95)
    torch.manual_seed(0)
    whole = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for param_name, param in whole.named_parameters():
            param.add_(torch.randn_like(param) * 0.1) if "norm" in param_name else param.normal_(0.0, 0.1)
    whole.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "imported")
    spec = load_spec(tmp_path / "imported" / "spec.yaml")
    assert spec.model.qk_norm == "head" and spec.model.rope_local_theta == 1e4 and spec.model.tie_embeddings
    build(spec, tmp_path / "build")
    ours = load_model_module(tmp_path / "build" / "model.py").Model().eval()
    ours.load_state_dict(load_file(tmp_path / "imported" / "model.safetensors"), strict=True)
    idx = torch.randint(0, 94, (2, 40))  # text tokens only
    assert (logits(ours, idx) - logits(whole, idx)).abs().max().item() <= 1e-5


def test_the_released_multimodal_gemma3_config_plans_as_gemma3_12b(tmp_path):
    """google/gemma-3-12b-pt's config.json is the multimodal model's: its text_config is the named spec."""
    config = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], "mm_tokens_per_image": 256,
              "text_config": RELEASED["gemma3-12b"], "vision_config": {"model_type": "siglip_vision_model",
                                                                       "hidden_size": 1152, "num_hidden_layers": 27}}
    assert _config_only(tmp_path, config).model == load_spec("gemma3-12b").model


def test_plan_reads_the_spec_a_config_alone_imports(tmp_path):
    """The command line: import-hf on a folder holding only config.json, then plan the spec it wrote."""
    from typer.testing import CliRunner

    from llmspec.cli.app import app

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(RELEASED["gemma2-9b"]))
    runner = CliRunner()
    imported = runner.invoke(app, ["import-hf", str(tmp_path / "cfg"), "-o", str(tmp_path / "out")])
    assert imported.exit_code == 0, imported.output
    planned = runner.invoke(app, ["plan", str(tmp_path / "out" / "spec.yaml"), "--json"])
    assert planned.exit_code in (0, 3), planned.output  # 3: planned, and the placeholder cluster is too small
    assert json.loads(planned.output)["params"]["total"] == _meta_count(RELEASED["gemma2-9b"])[0]
