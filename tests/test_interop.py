"""Hugging Face interop: checkpoints read and written (sharded, .bin, config alone), files and runs carried (tokenizer,
chat template, token ids, adapters, reward models), what is refused; each family's logits round trip is in
test_families."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers import CHATML, chatml_checkpoint, random_hf_model, tiny_hf_configs
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig
from typer.testing import CliRunner

from llmspec.cli.app import app
from llmspec.compile.build import build
from llmspec.compile.loading import load_model_module, model_module
from llmspec.errors import LLMSpecError
from llmspec.interop.hf import export_hf, import_hf
from llmspec.spec.loading import load_spec

SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
CONFIGS = tiny_hf_configs()  # of each family


def test_sharded_and_bin_checkpoints_import(tmp_path):
    hf = random_hf_model(CONFIGS["llama"])
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
    assert written[0].name == "spec.yaml" and "model.safetensors" not in [p.name for p in written]
    spec = load_spec(tmp_path / "out" / "spec.yaml")
    assert spec.name == "my-model-v1" and spec.model.sliding_window == 8 and spec.model.n_kv_heads == 2


@pytest.mark.parametrize("change,message", [
    ({"model_type": "bert"}, "supported families: gpt2, llama, mistral, mixtral, qwen2, qwen3, gemma2, gemma3_text"),
    ({"attention_bias": True}, "attention_bias=True with mlp_bias=False"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}, "rope_parameters": None}, "rope type 'dynamic'"),
    # transformers 5 reads a legacy rope_scaling over rope_parameters: dynamic NTK would be applied: refused
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}}, "rope_scaling: rope type 'dynamic' (transformers"),
    ({"rope_scaling": {"rope_type": "llama3"}}, "rope_scaling.factor is missing (needed for rope type 'llama3')"),
    ({"hidden_act": "tanh"}, "hidden_act 'tanh'"),
    ({"hidden_size": None}, "hidden_size is missing"),
])
def test_unsupported_configs_are_refused_with_the_key(tmp_path, change, message):
    config = json.loads(LlamaConfig(**SMALL).to_json_string())
    config.update(change)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(config))
    with pytest.raises(LLMSpecError, match=re.escape(message)):
        import_hf(tmp_path / "cfg", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    hf = random_hf_model(CONFIGS["llama"])
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(LLMSpecError, match="missing tensor model.layers.2"):
        import_hf(tmp_path / "hf", tmp_path / "out")


def test_export_refuses_specs_no_transformers_family_computes(tmp_path):
    spec = load_spec("tiny", ["model.norm=layernorm"])  # LayerNorm with RoPE is GPT-NeoX's, whose MLP is not gated
    with pytest.raises(LLMSpecError, match="GPT-NeoX .* needs a non-gated MLP"):
        export_hf(tmp_path / "missing.safetensors", spec, tmp_path / "out")
    spec = load_spec("tiny", ["model.mlp=gelu"])
    with pytest.raises(LLMSpecError, match="need norm rmsnorm and a gated mlp"):
        export_hf(tmp_path / "missing.safetensors", spec, tmp_path / "out")
    spec = load_spec("tiny", ["model.qk_norm=head", "model.parallel_residual=true"])  # Qwen3 has no parallel block
    with pytest.raises(LLMSpecError, match="transformers' qwen3 .* has no parallel_residual"):
        export_hf(tmp_path / "missing.safetensors", spec, tmp_path / "out")
    with pytest.raises(LLMSpecError, match="GPT-2 .* needs .*n_kv_heads"):
        export_hf(tmp_path / "missing.safetensors", load_spec("tiny-gpt2", ["model.n_kv_heads=1"]), tmp_path / "o")


def test_cli_round_trip_and_errors(tmp_path):
    random_hf_model(CONFIGS["qwen2"]).save_pretrained(tmp_path / "hf")
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
    random_hf_model(CONFIGS[name]).save_pretrained(hf)
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


# ---- what travels with a tokenizer; token ids; nothing overwritten; NaN; config keys; PEFT's base ----------------

def test_import_keeps_a_transformers_5_chat_template_and_the_generation_config(tmp_path):
    from llmspec.data.chat import ChatTemplate

    tokenizer = chatml_checkpoint(tmp_path / "hf")
    written = import_hf(tmp_path / "hf", tmp_path / "imported")
    out = tmp_path / "imported"
    for name in ("chat_template.jinja", "additional_chat_templates/tool_use.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (tmp_path / "hf" / name).read_bytes() and out / name in written
    template = ChatTemplate.beside(out / "tokenizer.json")  # what a fine-tune of the import trains on
    assert template.jinja == CHATML and template.end == "<|im_end|>"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == \
        tokenizer.token_to_id("<|im_end|>")
    assert json.loads((out / "imported_from.json").read_text())["path"] == str((tmp_path / "hf").resolve())


def test_import_derives_the_generation_config_from_config_json_as_transformers_does(tmp_path):
    random_hf_model(CONFIGS["llama"]).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "generation_config.json").unlink(missing_ok=True)
    import_hf(tmp_path / "hf", tmp_path / "imported")
    saved = json.loads((tmp_path / "imported" / "generation_config.json").read_text())
    assert (saved["bos_token_id"], saved["eos_token_id"]) == (CONFIGS["llama"].bos_token_id,
                                                              CONFIGS["llama"].eos_token_id)


def test_import_records_the_hub_repository_of_a_cached_checkpoint(tmp_path):
    from llmspec.interop.hf_files import import_record

    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2-0.5B-Instruct" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert import_record(snapshot) == {"path": str(snapshot.resolve()), "repo_id": "Qwen/Qwen2-0.5B-Instruct"}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_import_refuses_weights_that_are_not_finite_naming_the_tensor(tmp_path, bad):
    hf = random_hf_model(CONFIGS["llama"])
    with torch.no_grad():
        hf.model.layers[1].mlp.up_proj.weight[0, :3] = bad
    hf.save_pretrained(tmp_path / "hf")
    result = CliRunner().invoke(app, ["import-hf", str(tmp_path / "hf"), "-o", str(tmp_path / "out")])
    what = "3 NaN" if bad != bad else "3 infinite"
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"tensor model.layers.1.mlp.up_proj.weight holds {what} value(s)" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_config_errors_name_the_config_json_key_and_its_line(tmp_path):
    config = json.loads(LlamaConfig(**SMALL).to_json_string())
    config["hidden_size"] = 30
    del config["head_dim"]  # (derived then, from hidden_size)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(config, indent=2))
    line = next(i for i, text in enumerate(json.dumps(config, indent=2).splitlines(), 1)
                if '"num_attention_heads"' in text)
    result = CliRunner().invoke(app, ["import-hf", str(tmp_path / "cfg"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {tmp_path / 'cfg' / 'config.json'}:{line}: num_attention_heads: "
                                     "hidden_size 30 "
                                     "is not divisible by num_attention_heads 4; change num_attention_heads or set "
                                     "head_dim explicitly")


def test_legacy_rope_scaling_beside_rope_parameters_is_read_as_transformers_reads_it(tmp_path):
    config = json.loads(LlamaConfig(**SMALL).to_json_string())
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}
    config.update(rope_scaling={"type": "linear", "factor": 4.0}, rope_theta=5e5)
    theirs = LlamaConfig.from_dict(config).rope_parameters
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(config))
    import_hf(tmp_path / "cfg", tmp_path / "out")
    model = load_spec(tmp_path / "out" / "spec.yaml").model
    assert (model.rope_theta, model.rope_scaling.type, model.rope_scaling.factor) == (
        theirs["rope_theta"], theirs["rope_type"], theirs["factor"]) == (5e5, "linear", 4.0)


def _invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def _contents(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_import_replaces_only_what_it_wrote(tmp_path):
    hf, out = _saved(tmp_path, "llama"), tmp_path / "out"
    assert _invoke("import-hf", hf, "-o", out).exit_code == 0
    assert _invoke("import-hf", hf, "-o", out).exit_code == 0  # its own files: replaced
    (out / "spec.yaml").write_text((out / "spec.yaml").read_text() + "# my edit\n")
    before = _contents(out)
    result = _invoke("import-hf", hf, "-o", out)
    assert result.exit_code == 2 and f"{out / 'spec.yaml'}: edited since llmspec import-hf" in result.output
    assert _contents(out) == before
    assert _invoke("import-hf", hf, "-o", out, "--force").exit_code == 0
    assert "# my edit" not in (out / "spec.yaml").read_text()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "spec.yaml").write_text("name: mine\n")
    result = _invoke("import-hf", hf, "-o", mine)
    assert result.exit_code == 2 and "spec.yaml: not written by llmspec import-hf; --force" in result.output
    assert [p.name for p in mine.iterdir()] == ["spec.yaml"] and (mine / "spec.yaml").read_text() == "name: mine\n"


@pytest.mark.parametrize("command", ["import-hf", "export-hf"])
def test_import_and_export_refuse_a_run_directory(tmp_path, command):
    hf = _saved(tmp_path, "llama")
    import_hf(hf, tmp_path / "imported")
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    source = hf if command == "import-hf" else tmp_path / "imported"
    result = _invoke(command, source, "-o", run_dir)
    assert result.exit_code == 2 and "is a run directory (it holds metrics.jsonl)" in result.output
    assert [p.name for p in run_dir.iterdir()] == ["metrics.jsonl"]
    assert _invoke(command, source, "-o", run_dir, "--force").exit_code == 0


def test_export_replaces_only_what_it_wrote(tmp_path):
    import_hf(_saved(tmp_path, "llama"), tmp_path / "imported")
    out = tmp_path / "hf-out"
    out.mkdir()
    (out / "config.json").write_text('{"mine": true}\n')
    result = _invoke("export-hf", tmp_path / "imported", "-o", out)
    assert result.exit_code == 2 and "config.json: not written by llmspec export-hf" in result.output
    assert _contents(out) == {out / "config.json": b'{"mine": true}\n'}
    (out / "config.json").unlink()
    assert _invoke("export-hf", tmp_path / "imported", "-o", out).exit_code == 0
    assert _invoke("export-hf", tmp_path / "imported", "-o", out).exit_code == 0  # its own: replaced


def _fake_run(run_dir, spec, tokenizer_folder, template_files=()):
    """A run directory as `llmspec run` leaves one (spec, build, a checkpoint of random weights, the tokenizer and
    what travels with it), without training."""
    import shutil

    from llmspec.spec.loading import dump_spec
    from llmspec.train.checkpoint import save_checkpoint

    build(spec, run_dir / "build")
    (run_dir / "spec.yaml").write_text(dump_spec(spec))
    torch.manual_seed(0)
    save_checkpoint(run_dir / "checkpoints", 1, {"model": load_model_module(run_dir / "build" / "model.py")
                                                 .Model().state_dict()})
    for name in ("tokenizer.json", *template_files):
        shutil.copyfile(tokenizer_folder / name, run_dir / name)
    (run_dir / "metrics.jsonl").write_text("")


def test_a_pretrained_runs_export_ends_text_where_its_tokenizer_does(tmp_path):
    from helpers import TINY_HF
    from tokenizers import Tokenizer

    from llmspec.train.export_hf import export_run

    _fake_run(tmp_path / "run", load_spec("tiny"), TINY_HF)
    export_run(tmp_path / "run", tmp_path / "hf")
    end = Tokenizer.from_file(str(TINY_HF / "tokenizer.json")).token_to_id("<|endoftext|>")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert [config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")] == [end] * 3
    assert [generation[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")] == [end] * 3
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert back.generation_config.eos_token_id == end  # not LlamaConfig's default 2


def test_a_chatml_runs_export_agrees_on_the_end_of_turn_token_and_keeps_the_template(tmp_path):
    from transformers import AutoTokenizer

    from llmspec.interop.hf_files import TEMPLATE_FILES
    from llmspec.train.export_hf import export_run

    tokenizer = chatml_checkpoint(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "imported")
    spec = load_spec(tmp_path / "imported" / "spec.yaml")
    _fake_run(tmp_path / "run", spec, tmp_path / "imported",
              [n for n in TEMPLATE_FILES if (tmp_path / "imported" / n).is_file()])
    export_run(tmp_path / "run", tmp_path / "out")
    out = tmp_path / "out"
    end = tokenizer.token_to_id("<|im_end|>")
    theirs = AutoTokenizer.from_pretrained(out)
    assert theirs.eos_token == "<|im_end|>" and theirs.chat_template == CHATML
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == end
    assert AutoModelForCausalLM.from_pretrained(out).generation_config.eos_token_id == end
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == tokenizer.token_to_id("<|endoftext|>")


def test_an_import_exports_back_with_its_template_tokenizer_and_stop_tokens(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = chatml_checkpoint(tmp_path / "hf")
    assert _invoke("import-hf", tmp_path / "hf", "-o", tmp_path / "imported").exit_code == 0
    assert _invoke("export-hf", tmp_path / "imported", "-o", tmp_path / "back").exit_code == 0
    back, end = tmp_path / "back", tokenizer.token_to_id("<|im_end|>")
    assert AutoTokenizer.from_pretrained(back).chat_template == AutoTokenizer.from_pretrained(tmp_path / "hf"
                                                                                           ).chat_template
    assert (back / "additional_chat_templates" / "tool_use.jinja").is_file()
    assert json.loads((back / "config.json").read_text())["eos_token_id"] == end
    assert AutoModelForCausalLM.from_pretrained(back).generation_config.eos_token_id == end


def test_a_second_export_removes_what_only_the_first_wrote(tmp_path):
    from helpers import TINY_HF

    from llmspec.train.export_hf import export_run

    _fake_run(tmp_path / "chat", load_spec("tiny"), TINY_HF)
    (tmp_path / "chat" / "chat_template.jinja").write_text(CHATML)  # (its end token is the tokenizer's eos)
    (tmp_path / "chat" / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"}')
    export_run(tmp_path / "chat", tmp_path / "hf")
    assert (tmp_path / "hf" / "chat_template.jinja").is_file()
    _fake_run(tmp_path / "plain", load_spec("tiny"), TINY_HF)
    export_run(tmp_path / "plain", tmp_path / "hf")
    # transformers would read a left-over chat_template.jinja over the default template of the new tokenizer config
    assert not (tmp_path / "hf" / "chat_template.jinja").exists()


@pytest.mark.parametrize("storage", ["fp32", "nf4"])
def test_a_peft_adapter_names_its_hugging_face_base_and_says_when_it_was_quantised(tmp_path, storage):
    from llmspec.interop.peft_adapter import adapter_files
    from llmspec.train.export_hf import hf_base

    import_hf(_saved(tmp_path, "llama"), tmp_path / "imported")
    spec = load_spec("tiny-lora", [f"training.init_from={tmp_path / 'imported'}",
                                   f"post_training.base_precision={storage}"])
    assert hf_base(spec) == str((tmp_path / "hf").resolve())
    state = model_module(spec.model_copy(update={"post_training": spec.post_training.model_copy(
        update={"base_precision": "fp32"})})).Model().state_dict()
    files = adapter_files(state, spec, hf_base(spec))
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == str((tmp_path / "hf").resolve())
    assert ("quantised base" in files["README.md"]) == (storage == "nf4")
    assert hf_base(load_spec("tiny-lora")) is None  # runs/tiny: no Hugging Face base; the merged folder is named
    merged = adapter_files(state, load_spec("tiny-lora"), str(tmp_path / "merged"), tmp_path / "merged")
    assert "already holds this adapter" in merged["README.md"]


@pytest.mark.integration
def test_a_chatml_fine_tune_exports_a_model_whose_generate_stops_where_llmspec_generate_chat_does(tmp_path):
    """A ChatML model saved by transformers, imported, fine-tuned (SFT), exported: transformers' greedy generate()
    on the export stops at <|im_end|> exactly where `llmspec generate --chat` stops, under the base's template."""
    from transformers import AutoTokenizer

    from llmspec.data.chat import ChatTemplate
    from llmspec.runner import run
    from llmspec.train.export_hf import export_run
    from llmspec.train.generate import generate

    hf, imported, run_dir, out = tmp_path / "hf", tmp_path / "imported", tmp_path / "sft", tmp_path / "out"
    tokenizer = chatml_checkpoint(hf)
    import_hf(hf, imported)
    words = "the cat sat on mat hello there yes it is larger first word".split()
    corpus = tmp_path / "sft.jsonl"
    corpus.write_text("".join(json.dumps({"prompt": f"Say yes: {a} {b}", "response": "yes"}) + "\n"
                              for a in words for b in words))
    spec = load_spec(imported / "spec.yaml", [
        "post_training.method=sft", f"data.corpus={corpus}", f"training.init_from={imported}",
        "training.precision=fp32", "training.seq_len=64", "training.micro_batch_size=8",
        "training.global_batch_size=8", "training.max_steps=40", "training.schedule.warmup_steps=4",
        "training.optimizer.lr=3e-3", "training.eval_interval=40", "training.checkpoint_interval=40",
        "training.log_interval=10", "cluster.gpu=cpu", "cluster.gpus_per_node=1", "cluster.nodes=1"])
    run(spec, run_dir, announce=lambda *a: None)
    assert ChatTemplate.beside(run_dir / "tokenizer.json").jinja == CHATML  # trained on the base's template
    export_run(run_dir, out)

    prompt, budget, end = "Say yes: cat mat", 20, tokenizer.token_to_id("<|im_end|>")
    ours = generate(run_dir, prompt, max_new_tokens=budget, temperature=0, chat=True)
    base_tokenizer, theirs_tokenizer = AutoTokenizer.from_pretrained(hf), AutoTokenizer.from_pretrained(out)
    assert (out / "chat_template.jinja").read_text() == (hf / "chat_template.jinja").read_text()
    conversation = [{"role": "user", "content": prompt}]
    text = theirs_tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert text == base_tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    ids = theirs_tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert theirs_tokenizer.eos_token_id == model.config.eos_token_id == end
    with torch.no_grad():
        new = model.generate(ids, max_new_tokens=budget, do_sample=False)[0, ids.shape[1]:].tolist()
    assert new[-1] == end and len(new) < budget, theirs_tokenizer.decode(new)  # it stopped, at <|im_end|>
    assert theirs_tokenizer.decode(new[:-1]).strip() == ours  # where llmspec stopped
