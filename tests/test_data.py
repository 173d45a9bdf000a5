"""Data: corpus reading, the BPE tokenizer, token shards and deterministic batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmspec.data.corpus import DataError, read_documents
from llmspec.data.shards import Batches, write_shards
from llmspec.data.tokenizer import END_OF_TEXT, load_tokenizer, tokenizer_for, train_tokenizer

TEXT = ("The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
        "Return the number of items in the container. This module provides functions for working with text. ") * 40


def test_reads_txt_jsonl_and_directories(tmp_path):
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "b.jsonl").write_text('{"text": "second"}\n\n{"text": "third", "id": 3}\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("fourth")
    (tmp_path / "ignored.csv").write_text("x")
    assert read_documents(str(tmp_path)) == ["first document", "second", "third", "fourth"]
    assert read_documents([str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]) == [
        "first document", "second", "third"]


@pytest.mark.parametrize("content,message", [
    ("", "no text in"),
    ('{"text": "ok"}\n{"txt": "bad"}\n', r'b\.jsonl:2: expected an object with a "text" string'),
    ('{"text": "ok"}\nnot json\n', r"b\.jsonl:2: not valid JSON"),
])
def test_bad_corpora_name_the_place(tmp_path, content, message):
    (tmp_path / "b.jsonl").write_text(content)
    with pytest.raises(DataError, match=message):
        read_documents(str(tmp_path / "b.jsonl"))


def test_missing_and_binary_corpora(tmp_path):
    with pytest.raises(DataError, match="data.corpus: .*nowhere.txt does not exist"):
        read_documents(str(tmp_path / "nowhere.txt"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(DataError, match="not UTF-8"):
        read_documents(str(tmp_path / "bin.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .txt or .jsonl"):
        read_documents(str(tmp_path / "empty"))


def test_tokenizer_has_the_exact_vocab_and_round_trips(tmp_path):
    tokenizer = train_tokenizer([TEXT], 300)
    assert tokenizer.get_vocab_size() == 300 and tokenizer.token_to_id(END_OF_TEXT) is not None
    text = "The lazy dog saves 9 items — ünïcode too."
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    with pytest.raises(DataError, match="data.tokenizer.vocab_size: 50000 is too large for this corpus"):
        train_tokenizer([TEXT], 50_000)


def test_tokenizer_cache_and_loading(tmp_path):
    first, path = tokenizer_for([TEXT], 280, tmp_path)
    second, again = tokenizer_for([TEXT], 280, tmp_path)
    assert path == again and first.to_str() == second.to_str()
    assert load_tokenizer(path, 280).get_vocab_size() == 280
    with pytest.raises(DataError, match="more than model.vocab_size 100"):
        load_tokenizer(path, 100)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="not a tokenizer.json"):
        load_tokenizer(tmp_path / "bad.json", 1000)


def test_shards_split_and_batches_are_deterministic(tmp_path):
    tokenizer = train_tokenizer([TEXT], 300)
    shards = write_shards([TEXT, TEXT[:500]], tokenizer, tmp_path / "s", val_fraction=0.1)
    train, val = shards.load("train"), shards.load("val")
    assert train.dtype == np.uint16 and len(val) == int((len(train) + len(val)) * 0.1)
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["train_tokens"] == len(train) and 0 < shards.unigram_entropy < np.log(300)
    batches = Batches(train, 32, 4, seed=7, split="train")
    x, y = batches.get(step=3, micro=1, rank=0)
    assert x.shape == (4, 32) and x.dtype == torch.int64 and torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(batches.get(3, 1, 0)[0], x)
    assert not torch.equal(batches.get(3, 1, 1)[0], x) and not torch.equal(batches.get(4, 1, 0)[0], x)
    with pytest.raises(DataError, match="val split has"):
        Batches(val, len(val), 1, seed=0, split="val")


def test_the_cheap_corpus_check_reads_each_files_head_only(tmp_path):
    """check_corpus (a dry run's, and a run's before it reads everything) reads the first HEAD_BYTES of each file:
    a character cut at that boundary is no error, a bad record beyond it is the full read's to find."""
    from llmspec.data.corpus import HEAD_BYTES, check_corpus

    (tmp_path / "accents.txt").write_text("a" + "é" * HEAD_BYTES)  # a 2-byte character straddles the boundary
    check_corpus(str(tmp_path / "accents.txt"))
    lines = [json.dumps({"text": TEXT})] * (HEAD_BYTES // len(TEXT) + 2)
    (tmp_path / "long.jsonl").write_text("\n".join([*lines, '{"body": 1}']) + "\n")
    check_corpus(str(tmp_path / "long.jsonl"))
    with pytest.raises(DataError, match=rf'long\.jsonl:{len(lines) + 1}: expected an object with a "text" string'):
        read_documents(str(tmp_path / "long.jsonl"))
    (tmp_path / "nul.txt").write_text("text\0with a NUL")
    (tmp_path / "blank.jsonl").write_text('{"text": "  "}\n\n')
    for check in (check_corpus, read_documents):
        with pytest.raises(DataError, match=r"nul\.txt: binary, not text \(a NUL character at 4\)"):
            check(str(tmp_path / "nul.txt"))
        with pytest.raises(DataError, match="data.corpus: no text in"):
            check(str(tmp_path / "blank.jsonl"))


@pytest.mark.parametrize("name, content, message", [
    ("data.csv", b"a,b\n", r"data\.csv: CSV is not a pretraining corpus, which is builtin, \.txt files"),
    ("data.parquet", b"PAR1", r"Parquet is not a pretraining corpus.*\(fine-tuning data, post_training, reads "
                              r"Parquet and Arrow\)"),
    ("notes", b"text", r"notes: a file without a suffix is not a pretraining corpus"),
])
def test_a_corpus_file_of_another_kind_is_refused_saying_what_is_accepted(tmp_path, name, content, message):
    from llmspec.data.corpus import check_corpus

    (tmp_path / name).write_bytes(content)
    for check in (check_corpus, read_documents):
        with pytest.raises(DataError, match=message):
            check(str(tmp_path / name))


def test_the_cheap_check_of_fine_tuning_records(tmp_path):
    from llmspec.data.instructions import check_records, read_records

    (tmp_path / "ok.jsonl").write_text('{"prompt": "a", "response": "b"}\n' * 8)
    check_records(tmp_path / "ok.jsonl")
    for content, message in (('{"prompt": "a"}\n[1]\n', r"x\.jsonl:2: expected an object"),
                             ('{"prompt": "a"}\n{"prompt": \n', r"x\.jsonl:2: not valid JSON")):
        (tmp_path / "x.jsonl").write_text(content)
        with pytest.raises(DataError, match=message):
            check_records(tmp_path / "x.jsonl")
    (tmp_path / "x.parquet").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"x\.parquet: not a Parquet file"):
        check_records(tmp_path / "x.parquet")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9", "response": "b"}\n')
    for check in (check_records, read_records):
        with pytest.raises(DataError, match=r"latin1\.jsonl(:1)?: not UTF-8 text"):
            check(tmp_path / "latin1.jsonl")
