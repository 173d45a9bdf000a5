"""Hugging Face interop: random transformers models → import-hf → build → equal logits → export-hf → equal again."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Qwen2Config,
)
from typer.testing import CliRunner

from llmspec.cli.app import app
from llmspec.compile.build import build
from llmspec.compile.loading import load_model_module, model_module
from llmspec.errors import LLMSpecError
from llmspec.interop.hf import export_hf, import_hf
from llmspec.spec.loading import load_spec

SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 16}
CONFIGS = {
    "gpt2": GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                       eos_token_id=0),
    "gpt2-relu-untied": GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64, n_inner=40,
                                   activation_function="relu", tie_word_embeddings=False, bos_token_id=0,
                                   eos_token_id=0),
    "llama": LlamaConfig(**SMALL, rope_theta=500000.0, rms_norm_eps=1e-5),
    "llama-tied-mqa-llama3-rope": LlamaConfig(**{**SMALL, "num_key_value_heads": 1}, tie_word_embeddings=True,
                                              rope_scaling=LLAMA3_SCALING),
    "llama-linear-rope-biases": LlamaConfig(**SMALL, rope_scaling={"rope_type": "linear", "factor": 2.0},
                                            attention_bias=True, mlp_bias=True, head_dim=16),
    "mistral": MistralConfig(**SMALL, sliding_window=8),
    "mixtral": MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2, sliding_window=None),
    "qwen2": Qwen2Config(**SMALL, rope_theta=1e6),
}


def _random_model(config):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for param in model.parameters():  # larger than the default init, so that differences would show
            param.normal_(0.0, 0.1)
    return model


def _logits(model, idx):
    with torch.no_grad():
        out = model(idx)
    return out[0] if isinstance(out, tuple) else out.logits


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_round_trip_gives_equal_logits(case, tmp_path):
    hf = _random_model(CONFIGS[case])
    hf.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "imported")
    spec = load_spec(tmp_path / "imported" / "spec.yaml")
    build(spec, tmp_path / "build")
    ours = load_model_module(tmp_path / "build" / "model.py").Model().eval()
    ours.load_state_dict(load_file(tmp_path / "imported" / "model.safetensors"), strict=True)
    idx = torch.randint(0, 97, (2, 40))  # longer than mistral's window and llama3's original context
    expected = _logits(hf, idx)
    assert (_logits(ours, idx) - expected).abs().max().item() <= 1e-4

    export_hf(tmp_path / "imported" / "model.safetensors", spec, tmp_path / "exported")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    assert type(back) is type(hf)
    assert (_logits(back, idx) - expected).abs().max().item() <= 1e-4
    _assert_same_config(spec, CONFIGS[case], AutoConfig.from_pretrained(tmp_path / "exported"))


def _rope(config) -> tuple[float, str, float | None]:
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    kind = params.get("rope_type") or scaling.get("rope_type") or "default"
    return theta, kind, params.get("factor", scaling.get("factor"))


def _assert_same_config(spec, original, exported):
    mo = spec.model
    for config in (original, exported):
        assert config.tie_word_embeddings == mo.tie_embeddings
        if config.model_type == "gpt2":
            assert (config.n_embd, config.n_layer, config.n_head, config.layer_norm_epsilon) == (
                mo.d_model, mo.n_layers, mo.n_heads, mo.norm_eps)
            continue
        assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
                config.num_key_value_heads, config.rms_norm_eps) == (mo.d_model, mo.n_layers, mo.n_heads,
                                                                     mo.n_kv_heads, mo.norm_eps)
        theta, kind, factor = _rope(config)
        assert theta == mo.rope_theta
        assert kind == (mo.rope_scaling.type if mo.rope_scaling else "default")
        assert factor == (mo.rope_scaling.factor if mo.rope_scaling else None)
        assert getattr(config, "sliding_window", None) == mo.sliding_window


def test_sharded_and_bin_checkpoints_import(tmp_path):
    hf = _random_model(CONFIGS["llama"])
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    import_hf(tmp_path / "sharded", tmp_path / "a")
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "bin").mkdir()
    (tmp_path / "pytorch_model.bin").rename(tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "sharded" / "config.json").read_text())
    import_hf(tmp_path / "bin", tmp_path / "b")
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_config_only_directory_gives_a_spec(tmp_path):
    CONFIGS["mistral"].save_pretrained(tmp_path / "cfg")
    written = import_hf(tmp_path / "cfg", tmp_path / "out", name="my model/v1")
    assert [p.name for p in written] == ["spec.yaml"]
    spec = load_spec(tmp_path / "out" / "spec.yaml")
    assert spec.name == "my-model-v1" and spec.model.sliding_window == 8 and spec.model.n_kv_heads == 2


@pytest.mark.parametrize("change,message", [
    ({"model_type": "bert"}, "supported families: gpt2, llama, mistral, mixtral, qwen2"),
    ({"attention_bias": True}, "attention_bias=True with mlp_bias=False"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}, "rope_parameters": None}, "rope type 'yarn'"),
    ({"hidden_act": "tanh"}, "hidden_act 'tanh'"),
    ({"hidden_size": None}, "hidden_size is missing"),
])
def test_unsupported_configs_are_refused_with_the_key(tmp_path, change, message):
    config = json.loads(LlamaConfig(**SMALL).to_json_string())
    config.update(change)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(config))
    with pytest.raises(LLMSpecError, match=message.replace("(", r"\(")):
        import_hf(tmp_path / "cfg", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    hf = _random_model(CONFIGS["llama"])
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(LLMSpecError, match="missing tensor model.layers.2"):
        import_hf(tmp_path / "hf", tmp_path / "out")


def test_export_refuses_specs_no_transformers_family_computes(tmp_path):
    spec = load_spec("tiny", ["model.norm=layernorm"])
    with pytest.raises(LLMSpecError, match="need norm rmsnorm"):
        export_hf(tmp_path / "missing.safetensors", spec, tmp_path / "out")
    with pytest.raises(LLMSpecError, match="GPT-2 .* needs .*n_kv_heads"):
        export_hf(tmp_path / "missing.safetensors", load_spec("tiny-gpt2", ["model.n_kv_heads=1"]), tmp_path / "o")


def test_cli_round_trip_and_errors(tmp_path):
    _random_model(CONFIGS["qwen2"]).save_pretrained(tmp_path / "hf")
    runner = CliRunner()
    result = runner.invoke(app, ["import-hf", str(tmp_path / "hf"), "-o", str(tmp_path / "ours")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export-hf", str(tmp_path / "ours"), "-o", str(tmp_path / "back")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "back" / "config.json").read_text())["model_type"] == "qwen2"
    result = runner.invoke(app, ["export-hf", str(tmp_path / "ours" / "model.safetensors"), "-o", str(tmp_path)])
    assert result.exit_code == 2 and "--spec" in result.output
    result = runner.invoke(app, ["export-hf", str(tmp_path / "ours" / "model.safetensors"), "--spec", "tiny",
                                 "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "does not match spec 'tiny'" in result.output
    result = runner.invoke(app, ["export-hf", str(tmp_path / "nope"), "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and f"{tmp_path / 'nope'}: no such file or directory" in result.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    result = runner.invoke(app, ["import-hf", str(tmp_path / "bad"), "-o", str(tmp_path / "y")])
    assert result.exit_code == 2 and "not valid JSON" in result.output


def _saved(tmp_path, name="gpt2"):
    hf = tmp_path / "hf"
    _random_model(CONFIGS[name]).save_pretrained(hf)
    return hf


@pytest.mark.parametrize("relation", ["same", "inside", "contains"])
def test_import_never_writes_into_its_input(tmp_path, relation):
    hf = _saved(tmp_path)
    before = {p.name: p.read_bytes() for p in hf.iterdir()}
    out = {"same": hf, "inside": hf / "sub", "contains": tmp_path}[relation]
    with pytest.raises(LLMSpecError, match="the input"):
        import_hf(hf, out)
    assert {p.name: p.read_bytes() for p in hf.iterdir()} == before
    assert not (hf / "sub").exists()


def test_export_never_writes_into_its_input(tmp_path):
    hf = _saved(tmp_path)
    imported = tmp_path / "imported"
    import_hf(hf, imported)
    before = {p.name: p.read_bytes() for p in imported.iterdir()}
    result = CliRunner().invoke(app, ["export-hf", str(imported), "-o", str(imported)])
    assert result.exit_code == 2 and "the input" in result.stderr and "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in imported.iterdir()} == before


def test_import_keeps_the_tokenizer_dropout_and_file_modes(tmp_path):
    hf = _saved(tmp_path)
    (hf / "tokenizer.json").write_text('{"version": "1.0"}')
    (hf / "tokenizer_config.json").write_text("{}")
    written = import_hf(hf, tmp_path / "imported")
    assert (tmp_path / "imported" / "tokenizer.json").read_text() == '{"version": "1.0"}'
    assert tmp_path / "imported" / "tokenizer_config.json" in written
    assert load_spec(tmp_path / "imported" / "spec.yaml").model.dropout == CONFIGS["gpt2"].resid_pdrop == 0.1
    assert (tmp_path / "imported" / "model.safetensors").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(("name", "sets"), [("tiny-reward", []), ("tiny-gpt2", ["post_training.method=reward"])])
def test_a_reward_model_exports_as_a_sequence_classifier_with_its_scores(name, sets, tmp_path):
    """transformers' *ForSequenceClassification (one label) reads the score where llmspec does: after the last
    token; the base's tensors keep their names."""
    import transformers

    from llmspec.interop.hf import export_reward_state

    spec = load_spec(name, sets)
    torch.manual_seed(0)
    model = model_module(spec).Model().eval()
    export_reward_state(model.state_dict(), spec, tmp_path / "hf")
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert theirs.config.num_labels == 1 and type(theirs).__name__.endswith("ForSequenceClassification")
    idx = torch.randint(0, spec.model.vocab_size, (1, 17))
    with torch.no_grad():
        ours = model(idx)[0][0, -1]
        assert theirs(idx).logits[0, 0].item() == pytest.approx(ours.item(), abs=1e-5)
