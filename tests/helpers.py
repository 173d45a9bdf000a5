"""Shared test helpers: specs with overrides, plans, the tiny base, `llmspec` as a subprocess, metrics read back.

Test modules import these as ``from helpers import ...`` (pytest puts tests/ on the path: pyproject's pythonpath);
fixtures live in tests/conftest.py. No test module imports another test module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from llmspec.planner import Plan, plan
from llmspec.spec.loading import load_spec, parse_spec

MINIMAL = """
name: t
model: {vocab_size: 1000, d_model: 64, n_layers: 2, n_heads: 4, max_seq_len: 128}
training: {seq_len: 128, global_batch_size: 8, max_steps: 10}
"""

# The `tiny` run (600 steps on the built-in corpus) exported with `export-hf`: the post-training tests import it as a
# user would (`import-hf`, the `base` fixture), so no test needs a 4-minute pretraining run.
TINY_HF = Path(__file__).parent / "fixtures" / "tiny-hf"

LORA = ["post_training.adapter.type=lora", "post_training.adapter.r=16", "post_training.adapter.alpha=32",
        "post_training.adapter.targets=all-linear"]

# Published layouts that differ from a measured named spec only in what measure does not read (the number of
# nodes, the global batch, the overlap of communication): test_measure skips them, test_published asserts the claim.
MEASURED_AS = {"published/llama3-405b-8k": "llama3-405b", "published/llama3-405b-16k": "llama3-405b"}


def planned(name: str, *sets: str, alternatives: bool = False) -> Plan:
    return plan(load_spec(name, list(sets)), alternatives=alternatives)


def minimal(*sets: str):
    return parse_spec(MINIMAL, sets=list(sets))


def cli(*args: str, cwd: Path) -> subprocess.Popen:
    """`llmspec ARGS` as a user runs it: its own process (one compute thread), stdout and stderr as one text stream."""
    return subprocess.Popen([sys.executable, "-m", "llmspec", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def losses(run_dir: Path) -> list[tuple]:
    """(step, loss, lr, val_loss) of every record a run logged."""
    from llmspec.train.metrics import read_metrics

    return [(r["step"], r.get("loss"), r.get("lr"), r.get("val_loss")) for r in read_metrics(run_dir / "metrics.jsonl")]


def killed_and_resumed(spec, tmp_path) -> list[dict]:
    """Run ``spec`` whole, and again killed (SIGKILL) right after its first checkpoint, then ``--resume``d; assert
    the two metrics.jsonl agree in every logged number but the timings; return the whole run's records."""
    import signal
    import time

    from llmspec.spec.loading import dump_spec
    from llmspec.train.checkpoint import list_checkpoints
    from llmspec.train.metrics import read_metrics

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(dump_spec(spec))
    whole = cli("run", str(spec_file), "--out", str(tmp_path / "whole"), cwd=tmp_path)
    assert whole.wait(timeout=600) == 0, whole.stdout.read()
    killed = cli("run", str(spec_file), "--out", str(tmp_path / "killed"), cwd=tmp_path)
    deadline = time.time() + 300
    while not list_checkpoints(tmp_path / "killed" / "checkpoints") and time.time() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert len(losses(tmp_path / "killed")) < len(losses(tmp_path / "whole")), "killed too late"
    resumed = cli("run", str(spec_file), "--out", str(tmp_path / "killed"), "--resume", cwd=tmp_path)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0 and "resumed from" in output, output

    def records(run_dir):
        return [{k: v for k, v in r.items() if k not in ("tokens_per_second", "mfu", "phase_seconds", "peak_memory")}
                for r in read_metrics(run_dir / "metrics.jsonl")]

    assert records(tmp_path / "killed") == records(tmp_path / "whole")
    return records(tmp_path / "whole")


# Hugging Face checkpoints for the interop tests (test_interop, test_families): transformers is imported only here.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def random_hf_model(config):
    """A transformers model of ``config`` with every weight off its initial value, large enough that a difference
    would show: norms moved around their init (Gemma's 0, the others' 1), the rest drawn from N(0, 0.1)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.2)
            else:
                param.normal_(0.0, 0.1)
    return model


def logits(model, idx):
    """The logits of a transformers model or a compiled one (which returns them, or a tuple starting with them)."""
    import torch

    with torch.no_grad():
        out = model(idx)
    return out[0] if isinstance(out, tuple) else out.logits


def chatml_checkpoint(folder: Path, config=None, generation_config: bool = True):
    """A ChatML model as transformers 5 saves one: a tiny model of ``config``'s family (a Qwen2 by default) with a
    320-token vocabulary, a small byte-level BPE tokenizer with <|im_start|>/<|im_end|>, its template in
    chat_template.jinja (tokenizer_config.json has none) and a named one in additional_chat_templates/, eos
    <|im_end|> in config.json and generation_config.json. Returns the tokenizer."""
    import json

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = ["Say yes: the cat sat on the mat. Larger: 3 or 9. First word: hello there, yes it is."] * 20
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                            chat_template={"default": CHATML, "tool_use": CHATML + "{# tools #}"}
                            ).save_pretrained(folder)
    assert (folder / "chat_template.jinja").is_file()
    assert "chat_template" not in json.loads((folder / "tokenizer_config.json").read_text())
    config = config or Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, tie_word_embeddings=True)
    config.update({"vocab_size": 320, "max_position_embeddings": 128, "bos_token_id": None,
                   "eos_token_id": tokenizer.token_to_id("<|im_end|>"),
                   "pad_token_id": tokenizer.token_to_id("<|endoftext|>")})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    if not generation_config:
        (folder / "generation_config.json").unlink()
    return tokenizer


def tiny_hf_configs() -> dict:
    """A tiny transformers config of each family llmspec imports, every feature of the family on, windows and
    pretraining contexts shorter than 40 tokens: the round trips of test_families, the checkpoints of test_interop."""
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        MixtralConfig,
        Olmo2Config,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
        SmolLM3Config,
    )

    two = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64)
    four = {**two, "num_hidden_layers": 4, "bos_token_id": None, "eos_token_id": None,
            "pad_token_id": None}  # (the families' default ids lie outside this vocabulary)
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 16}
    s, f = "sliding_attention", "full_attention"
    return {
        "gpt2": GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                           eos_token_id=0),
        "gpt2-relu-untied": GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64, n_inner=40,
                                       activation_function="relu", tie_word_embeddings=False, bos_token_id=0,
                                       eos_token_id=0),
        "llama": LlamaConfig(**two, rope_theta=500000.0, rms_norm_eps=1e-5),
        "llama-tied-mqa-llama3-rope": LlamaConfig(**{**two, "num_key_value_heads": 1}, tie_word_embeddings=True,
                                                  rope_scaling=llama3),
        "llama-linear-rope-biases": LlamaConfig(**two, rope_scaling={"rope_type": "linear", "factor": 2.0},
                                                attention_bias=True, mlp_bias=True, head_dim=16),
        "mistral": MistralConfig(**two, sliding_window=8),
        "mixtral": MixtralConfig(**two, num_local_experts=4, num_experts_per_tok=2, sliding_window=None),
        "qwen2": Qwen2Config(**two, rope_theta=1e6),
        "qwen3": Qwen3Config(**four, head_dim=12, use_sliding_window=True, sliding_window=8,
                             layer_types=[f, s, f, s], rope_parameters={
                                 "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                 "rope_theta": 1e6}),
        "gemma2": Gemma2Config(**four, head_dim=12, query_pre_attn_scalar=20, sliding_window=8,
                               attn_logit_softcapping=2.0, final_logit_softcapping=1.0),
        "gemma3_text": Gemma3TextConfig(
            **four, head_dim=12, query_pre_attn_scalar=20, sliding_window=8, layer_types=[s, s, f, s],
            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
            final_logit_softcapping=1.0, tie_word_embeddings=False),
        "gemma3_text-all-sliding": Gemma3TextConfig(  # one RoPE: the local one, the full layers' scaling unused
            **four, head_dim=12, sliding_window=8, layer_types=[s] * 4,
            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 2e4}}),
        "olmo2": Olmo2Config(**four, rope_parameters={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16, "rope_theta": 5e5}),
        "phi3": Phi3Config(**four, original_max_position_embeddings=16, sliding_window=12, rope_parameters={
            "rope_type": "longrope", "short_factor": [1.0, 1.5], "long_factor": [2.0, 3.0], "rope_theta": 1e4,
            "partial_rotary_factor": 0.5}),
        "smollm3": SmolLM3Config(**four, no_rope_layer_interval=2, attention_bias=True, mlp_bias=True),
        "gpt_neox": GPTNeoXConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=64, rotary_pct=0.5,
                                  bos_token_id=None, eos_token_id=None),
        "gpt_neox-sequential-tied": GPTNeoXConfig(
            vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=64, rotary_pct=0.25, use_parallel_residual=False, tie_word_embeddings=True,
            bos_token_id=None, eos_token_id=None),
    }
