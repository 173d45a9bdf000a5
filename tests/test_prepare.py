"""`llmspec prepare`: the data step alone, its JSON, its one-line refusals, and `run` reusing what it made."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from llmspec.cli.app import app
from llmspec.data.attention import mean_attended_keys, prepared_lengths
from llmspec.spec.loading import load_spec

WORDS = "return the number of items in this module with text open file read every line raise value".split()
SMALL = ["model.vocab_size=320", "training.seq_len=32", "training.micro_batch_size=4", "training.global_batch_size=8",
         "training.max_steps=50"]


def _corpus(path, n=200, seed=0):
    rng = np.random.default_rng(seed)
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 60))))}) + "\n"
                            for _ in range(n)))
    return path


def _prepare(*sets: str):
    args = ["prepare", "tiny", "--json"]
    for item in [*SMALL, *sets]:
        args += ["--set", item]
    return CliRunner().invoke(app, args)


def test_prepare_reports_documents_tokens_bytes_and_epochs_per_source(tmp_path):
    a, b = _corpus(tmp_path / "a.jsonl"), _corpus(tmp_path / "b.jsonl", 100, seed=1)
    sources = f"data.sources=[{{path: '{a}', weight: 3}}, {{path: '{b}'}}]"
    result = _prepare(sources)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = report["sources"]
    assert [r["documents"] for r in rows] == [200, 100] and report["documents"] == 300
    assert report["bytes"] == sum(len(json.loads(line)["text"].encode()) for f in (a, b)
                                  for line in f.read_text().splitlines())
    assert report["tokens"] == sum(r["tokens"] for r in rows) and all(r["val_documents"] > 0 for r in rows)
    assert rows[0]["epochs"] > 0 and report["document_tokens"]["max"] >= report["document_tokens"]["p50"]
    # what run and the planner find again: the same shards, their documents' lengths
    again = json.loads(_prepare(sources).stdout)
    assert again["directory"] == report["directory"]
    lengths = prepared_lengths(load_spec("tiny", [*SMALL, sources]))
    assert lengths is not None and lengths.sum() == sum(r["train_tokens"] for r in rows)
    assert mean_attended_keys(lengths, 32) < (32 + 1) / 2
    assert prepared_lengths(load_spec("tiny", [*SMALL, f"data.sources=[{{path: '{a}'}}]"])) is None


def test_prepare_refuses_in_one_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    result = _prepare(f"data.corpus={tmp_path / 'bad.jsonl'}")
    assert result.exit_code == 2 and result.stderr.strip() == (
        f'error: {tmp_path / "bad.jsonl"}:2: expected an object with a "text" string')
    result = CliRunner().invoke(app, ["prepare", "tiny-sft"])
    assert result.exit_code == 2 and "a fine-tune (post_training) prepares its records when it runs" in result.stderr


def test_what_the_planner_reads_imports_neither_torch_nor_tokenizers():
    import subprocess
    import sys

    code = ("import sys; from llmspec.data.attention import prepared_lengths; from llmspec.spec.loading import "
            "load_spec; prepared_lengths(load_spec('tiny', ['data.document_masking=true'])); "
            "print(sorted({'torch', 'tokenizers'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_plan_counts_the_keys_within_documents_once_the_corpus_is_prepared(tmp_path):
    """Under document masking `plan` counts the keys each query sees within its document from the prepared
    documents' lengths (before preparation, causal attention's: an upper bound), and what SDPA computes under the
    mask: every key."""
    sets = [*SMALL, f"data.sources=[{{path: '{_corpus(tmp_path / 'a.jsonl')}'}}]", "data.document_masking=true"]

    def attention() -> tuple[float, float]:
        args = ["plan", "tiny", "--json", "--no-alternatives"] + [arg for item in sets for arg in ("--set", item)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        flops = json.loads(result.stdout)["flops"]
        return flops["attention_per_token"], flops["attention_executed_per_token"]

    spec = load_spec("tiny", sets)
    per_key = 4 * spec.model.n_heads * spec.model.head_dim * spec.model.n_layers  # QKᵀ and AV per key, forward
    assert attention() == (per_key * (32 + 1) / 2, per_key * 32)
    assert _prepare(*sets[len(SMALL):]).exit_code == 0
    keys = mean_attended_keys(prepared_lengths(spec), 32)
    attended, executed = attention()
    assert attended == per_key * keys and keys < (32 + 1) / 2 and executed == per_key * 32
