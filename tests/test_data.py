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
