"""`run --dry-run` makes every check a run makes before it reads the data whole (issue 30, items 2, 4 and 10): a bad
corpus, a bad tokenizer, a run directory that holds a user's files, a damaged Parquet corpus, each refused on one line
with exit 2 by the dry run and by the run alike, with nothing written; a GPU spec on a machine without one says what
the run will do."""

from __future__ import annotations

import json
import os

import pytest
from tokenizers import Tokenizer, models
from typer.testing import CliRunner

from llmspec.backends.runnable import ENGINES
from llmspec.cli.app import app
from llmspec.errors import LLMSpecError
from llmspec.spec.loading import load_spec
from llmspec.train import preflight
from llmspec.train.job import prepare

SMALL = ["model.vocab_size=320", "model.max_seq_len=64", "training.seq_len=64", "training.max_steps=2"]
TEXT = "The quick brown fox jumps over the lazy dog. " * 40


def _tokenizer_file(path, tokens: int) -> str:
    vocab = {"<|endoftext|>": 0, **{f"t{i}": i + 1 for i in range(tokens - 1)}}
    Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(str(path))
    return str(path)


def _case(name: str, folder) -> list[str]:
    """The --set flags of one bad input, its files written into ``folder``."""
    if name == "missing corpus":
        return [f"data.corpus={folder / 'nowhere.txt'}"]
    if name == "empty file":
        (folder / "empty.txt").write_text(" \n")
        return [f"data.corpus={folder / 'empty.txt'}"]
    if name == "broken JSONL line":
        (folder / "b.jsonl").write_text('{"text": "ok"}\n{"text": "cut\n')
        return [f"data.corpus={folder / 'b.jsonl'}"]
    if name == "record without text":
        (folder / "b.jsonl").write_text('{"text": "ok"}\n{"body": "no text field"}\n')
        return [f"data.corpus={folder / 'b.jsonl'}"]
    if name == "binary .txt":
        (folder / "b.txt").write_bytes(b"PK\x03\x04\x00\x00\x08\x00" * 64)
        return [f"data.corpus={folder / 'b.txt'}"]
    if name == "not UTF-8":
        (folder / "b.txt").write_bytes(TEXT.encode() + b"\xff\xfe caf\xe9")
        return [f"data.corpus={folder / 'b.txt'}"]
    if name == ".csv":
        (folder / "c.csv").write_text("id,text\n1,hello\n")
        return [f"data.corpus={folder / 'c.csv'}"]
    if name == "Parquet":
        (folder / "c.parquet").write_bytes(b"PAR1")
        return [f"data.corpus={folder / 'c.parquet'}"]
    if name == "missing tokenizer":
        return [f"data.tokenizer.path={folder / 'nowhere.json'}"]
    if name == "corrupt tokenizer":
        (folder / "tok.json").write_text('{"model": {"type": "BPE", "vocab": ')
        return [f"data.tokenizer.path={folder / 'tok.json'}"]
    if name == "tokenizer larger than the vocabulary":
        return [f"data.tokenizer.path={_tokenizer_file(folder / 'tok.json', 400)}"]
    if name == "tokenizer vocab_size larger than the model's":
        return ["data.tokenizer.vocab_size=500"]
    raise AssertionError(name)


BAD = {
    "missing corpus": "nowhere.txt does not exist",
    "empty file": "data.corpus: no text in",
    "broken JSONL line": "b.jsonl:2: not valid JSON",
    "record without text": 'b.jsonl:2: expected an object with a "text" string',
    "binary .txt": "b.txt: binary, not text",
    "not UTF-8": "b.txt: not UTF-8 text",
    ".csv": "c.csv: CSV is not a pretraining corpus, which is builtin, .txt files, .jsonl files",
    "Parquet": "c.parquet: not a Parquet file",
    "missing tokenizer": "nowhere.json does not exist",
    "corrupt tokenizer": "tok.json is not a tokenizer.json",
    "tokenizer larger than the vocabulary": "tok.json has 400 tokens, more than model.vocab_size 320",
    "tokenizer vocab_size larger than the model's": "data.tokenizer.vocab_size",
}


def _run(*args: str, sets: list[str]) -> object:
    for item in sets:
        args += ("--set", item)
    return CliRunner().invoke(app, ["run", "tiny", *args])


@pytest.mark.parametrize("dry", [True, False], ids=["dry run", "run"])
@pytest.mark.parametrize("name", list(BAD))
def test_the_dry_run_refuses_what_the_run_refuses(tmp_path, name, dry):
    sets = [*SMALL, *_case(name, tmp_path)]
    result = _run("--out", str(tmp_path / "r"), *(["--dry-run"] if dry else []), sets=sets)
    assert result.exit_code == 2, result.output
    assert BAD[name] in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "r").exists()


def test_a_good_corpus_and_tokenizer_pass_the_dry_run(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text(TEXT)
    (tmp_path / "c" / "b.jsonl").write_text("".join(json.dumps({"text": TEXT}) + "\n" for _ in range(3)))
    (tmp_path / "c" / "ignored.csv").write_text("id,text\n")  # a directory's other files are not the corpus
    sets = [*SMALL, f"data.corpus={tmp_path / 'c'}", f"data.tokenizer.path={_tokenizer_file(tmp_path / 't.json', 300)}"]
    result = _run("--out", str(tmp_path / "r"), "--dry-run", sets=sets)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "r").exists()


def test_a_long_corpus_is_checked_by_its_head_only(tmp_path):
    """The dry run reads the first records, not the whole corpus: a bad line far down is the run's to find."""
    lines = [json.dumps({"text": TEXT}) for _ in range(2000)]
    (tmp_path / "big.jsonl").write_text("\n".join([*lines, "not json"]) + "\n")
    result = _run("--out", str(tmp_path / "r"), "--dry-run", sets=[*SMALL, f"data.corpus={tmp_path / 'big.jsonl'}"])
    assert result.exit_code == 0, result.output


def test_a_fine_tunes_records_are_checked_by_the_dry_run(base, tmp_path):
    (tmp_path / "sft.jsonl").write_text('{"prompt": "a", "response": "b"}\n[1, 2]\n')
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    for corpus, needle in (("sft.jsonl", "sft.jsonl:2: expected an object"), ("none.jsonl", "none.jsonl does not "
                                                                              "exist"),
                           ("bad.parquet", "bad.parquet: not a Parquet file")):
        result = CliRunner().invoke(app, ["run", "tiny-sft", "--dry-run", "--out", str(tmp_path / "r"), "--set",
                                          f"training.init_from={base}", "--set", f"data.corpus={tmp_path / corpus}"])
        assert result.exit_code == 2 and needle in result.stderr and "Traceback" not in result.output, result.output
        assert not (tmp_path / "r").exists()


# ---- item 2: a run directory of someone else's files --------------------------------------------------------


@pytest.mark.parametrize("dry", [True, False], ids=["dry run", "run"])
def test_a_directory_of_a_users_files_is_refused(tmp_path, dry):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"an": "unrelated file"}\n')
    (out / "notes.md").write_text("mine")
    result = _run("--out", str(out), *(["--dry-run"] if dry else []), sets=SMALL)
    assert result.exit_code == 2, result.output
    assert f"{out}: holds files a run did not write (metrics.jsonl, notes.md); " in result.stderr
    assert "--force" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "notes.md"]
    assert (out / "metrics.jsonl").read_text() == '{"an": "unrelated file"}\n'


def test_force_and_an_empty_or_hidden_only_directory_pass(tmp_path):
    spec = load_spec("tiny", SMALL)
    torch_engine = ENGINES["torch"].refusals
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_text("")
    prepare(spec, tmp_path / "empty", False, torch_engine, dry_run=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(LLMSpecError, match="holds files a run did not write"):
        prepare(spec, tmp_path / "mine", False, torch_engine, dry_run=True)
    prepare(spec, tmp_path / "mine", False, torch_engine, dry_run=True, force=True)


# ---- item 10: a GPU spec on a machine without one -------------------------------------------------------------


def test_a_dry_run_of_a_gpu_spec_without_a_gpu_says_it_trains_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "local_gpus", lambda: [])
    said: list[str] = []
    prepare(load_spec("tiny", ["cluster.gpu=A100-80GB"]), tmp_path / "r", False, ENGINES["torch"].refusals,
            dry_run=True, announce=said.append)
    assert len(said) == 1 and said[0].startswith("no GPU on this machine: tiny trains on its CPU instead of "
                                                 "1 × A100-80GB (there the plan needs ")
    assert not (tmp_path / "r").exists()
    said.clear()
    prepare(load_spec("tiny"), tmp_path / "r", False, ENGINES["torch"].refusals, dry_run=True, announce=said.append)
    assert said == []  # a CPU spec on a CPU does what it says


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_corpus_file_is_named(tmp_path):
    (tmp_path / "locked.txt").write_text(TEXT)
    (tmp_path / "locked.txt").chmod(0)
    result = _run("--out", str(tmp_path / "r"), "--dry-run", sets=[*SMALL, f"data.corpus={tmp_path / 'locked.txt'}"])
    assert result.exit_code == 2 and "locked.txt: cannot read it (Permission denied)" in result.stderr


def test_force_trains_in_a_directory_of_a_users_files_and_keeps_the_others(tmp_path):
    import random

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 7))) for _ in range(300)]
    (tmp_path / "corpus.txt").write_text("\n".join(" ".join(rng.choices(words, k=12)) for _ in range(400)))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    sets = [*SMALL, f"data.corpus={tmp_path / 'corpus.txt'}", "training.micro_batch_size=2",
            "training.global_batch_size=2", "model.n_layers=1"]
    assert _run("--out", str(out), "--dry-run", "--force", sets=sets).exit_code == 0
    result = _run("--out", str(out), "--force", sets=sets)
    assert result.exit_code == 0, result.output
    assert (out / "notes.md").read_text() == "mine" and (out / "metrics.jsonl").is_file()
    again = _run("--out", str(out), "--dry-run", sets=sets)  # a run's directory now: its checkpoints are named
    assert again.exit_code == 2 and "holds checkpoints" in again.stderr


def test_the_cli_dry_run_of_a_gpu_spec_without_a_gpu_prints_what_the_run_will_do(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "local_gpus", lambda: [])
    result = _run("--out", str(tmp_path / "r"), "--dry-run", sets=["cluster.gpu=A100-80GB"])
    assert result.exit_code == 0, result.output
    assert "no GPU on this machine: tiny trains on its CPU instead of 1 × A100-80GB" in result.output
    assert "dry run: tiny would train" in result.output and not (tmp_path / "r").exists()
