"""Data: sources of every format read as a stream, the BPE tokenizer, streamed token shards (resumable, the same
bytes for any number of workers), packed batches (each token once an epoch, mixture shares, segments)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from llmspec.data import tokens as token_shards
from llmspec.data.attention import mean_attended_keys
from llmspec.data.corpus import DataError
from llmspec.data.encode import held_out
from llmspec.data.packed import Layout, PackedBatches, block_counts, permute
from llmspec.data.pipeline import prepare_data, read_all, report
from llmspec.data.sources import check, resolve
from llmspec.data.tokenizer import END_OF_TEXT, load_tokenizer, tokenizer_for, train_tokenizer
from llmspec.spec.data import DataSpec

TEXT = ("The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
        "Return the number of items in the container. This module provides functions for working with text. ") * 40
WORDS = TEXT.split()


def _documents(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 120)))) for _ in range(n)]


def _jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def _all(**data) -> list[str]:
    return list(read_all(DataSpec(**data)))


def test_reads_txt_jsonl_directories_and_globs(tmp_path):
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "b.jsonl").write_text('{"text": "second"}\n\n{"text": "third", "id": 3}\n{"text": null}\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("fourth")
    (tmp_path / "ignored.csv").write_text("x")
    assert _all(corpus=str(tmp_path)) == ["first document", "second", "third", "fourth"]
    assert _all(corpus=[str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]) == ["first document", "second", "third"]
    assert len(resolve(DataSpec(corpus=[str(tmp_path / "a.txt"), "builtin"]))) == 1  # a list is one source, in order
    assert _all(sources=[{"path": str(tmp_path / "**" / "*.txt")}]) == ["first document", "fourth"]


def test_reads_compressed_jsonl_parquet_and_arrow_with_any_text_field(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    texts = _documents(30)
    lines = "".join(json.dumps({"body": t}) + "\n" for t in texts).encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.table({"body": texts, "n": list(range(30))}), tmp_path / "a.parquet", row_group_size=7)
    datasets.Dataset.from_dict({"body": texts}).save_to_disk(str(tmp_path / "saved"))
    with pa.OSFile(str(tmp_path / "a.arrow"), "wb") as sink, pa.ipc.new_file(sink, pa.schema([("body", pa.string())])
                                                                              ) as writer:
        writer.write_table(pa.table({"body": texts}))
    for name in ("a.jsonl.gz", "a.jsonl.zst", "a.parquet", "saved", "a.arrow"):
        assert _all(sources=[{"path": str(tmp_path / name), "text_field": "body"}]) == texts, name
    assert _all(sources=[{"path": str(tmp_path / "a.parquet"), "text_field": "body", "format": "parquet"}]) == texts


@pytest.mark.parametrize("name, content, message", [
    ("b.jsonl", '{"text": "ok"}\n{"txt": "bad"}\n', r'b\.jsonl:2: expected an object with a "text" string'),
    ("b.jsonl", '{"text": "ok"}\nnot json\n', r"b\.jsonl:2: not valid JSON"),
    ("b.jsonl", '{"text": "  "}\n\n', r"data\.corpus: no text in"),
    ("b.txt", b"\xff\xfe\x00abc", "not UTF-8"),
    ("b.txt", "text\0with a NUL", r"b\.txt: binary, not text \(a NUL character at 4\)"),
    ("b.csv", "a,b\n", r"b\.csv: CSV is not a pretraining corpus, which is builtin, \.txt files, \.jsonl files"),
    ("b.parquet", b"PAR1", r"b\.parquet: not a Parquet file"),
    ("b.jsonl.gz", b"not gzip", r"b\.jsonl\.gz: not a valid jsonl\.gz file"),
])
def test_bad_sources_are_one_line_naming_file_and_record_before_any_work(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(DataError, match=message):
        check(resolve(DataSpec(corpus=str(path))))


def test_missing_paths_and_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pytest.raises(DataError, match=r"data\.corpus: .*nowhere\.txt does not exist"):
        resolve(DataSpec(corpus=str(tmp_path / "nowhere.txt")))
    with pytest.raises(DataError, match=r"data\.sources\[0\]: .*\*\.jsonl matches no files"):
        resolve(DataSpec(sources=[{"path": str(tmp_path / "*.jsonl")}]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no files of an accepted format"):
        resolve(DataSpec(corpus=str(tmp_path / "empty")))
    pq.write_table(pa.table({"content": ["a"], "n": [1]}), tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r't\.parquet: no column "text" \(columns: content, n\); set text_field'):
        check(resolve(DataSpec(corpus=str(tmp_path / "t.parquet"))))
    with pytest.raises(DataError, match=r'column "n" holds int64, not text'):
        check(resolve(DataSpec(sources=[{"path": str(tmp_path / "t.parquet"), "text_field": "n"}])))


def test_the_spec_takes_sources_or_corpus_not_both():
    with pytest.raises(ValueError, match="give data.sources or data.corpus, not both"):
        DataSpec(corpus="a.txt", sources=[{"path": "x"}])
    with pytest.raises(ValueError, match="weight"):
        DataSpec(sources=[{"path": "x", "weight": 0}])


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


def test_the_tokenizer_trains_on_a_bounded_sample(tmp_path):
    corpus = _jsonl(tmp_path / "a.jsonl", _documents(400))
    small = prepare_data(DataSpec(corpus=str(corpus), tokenizer={"sample_bytes": 2000}), 300, cache=tmp_path / "c")
    whole = prepare_data(DataSpec(corpus=str(corpus)), 300, cache=tmp_path / "c")
    assert small.tokenizer_file != whole.tokenizer_file  # trained on the first ~2 kB only: another tokenizer
    again = prepare_data(DataSpec(corpus=str(corpus), tokenizer={"sample_bytes": 2000}), 300, cache=tmp_path / "c")
    assert again.tokenizer_file == small.tokenizer_file and again.prepared.directory == small.prepared.directory


def test_held_out_documents_are_one_in_every_one_over_f():
    assert held_out(0, 100, 0.05).sum() == 5 and held_out(0, 19, 0.05).sum() == 0
    whole = held_out(0, 1000, 0.1)
    assert np.array_equal(np.concatenate([held_out(0, 333, 0.1), held_out(333, 667, 0.1)]), whole)


def _prepare(tmp_path, texts, cache="c", **kwargs):
    corpus = _jsonl(tmp_path / "corpus.jsonl", texts)
    return prepare_data(DataSpec(corpus=str(corpus), **kwargs.pop("data", {})), 300, cache=tmp_path / cache,
                        chunk_bytes=kwargs.pop("chunk_bytes", 3000), shard_bytes=kwargs.pop("shard_bytes", 12000),
                        **kwargs)


def _shard_bytes(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name != "meta.json"}


def test_shards_are_bounded_whole_and_the_same_for_any_number_of_workers(tmp_path, monkeypatch):
    texts = _documents(600)
    one = _prepare(tmp_path, texts, data={"workers": 1})
    meta = one.prepared.meta
    assert meta["sources"][0]["shards"] > 3 and meta["sources"][0]["documents"] == 600
    assert meta["sources"][0]["val_documents"] == 30  # floor(600 · 0.05)
    monkeypatch.setattr(token_shards, "IN_PROCESS_BYTES", 0)  # the worker pool even for a corpus this small
    two = _prepare(tmp_path, texts, cache="c2", data={"workers": 2})
    assert _shard_bytes(one.prepared.directory) == _shard_bytes(two.prepared.directory)
    tokens = sum(len(s) for split in ("train", "val") for s in one.prepared.streams(split))
    assert tokens == meta["sources"][0]["train_tokens"] + meta["sources"][0]["val_tokens"]
    lengths = np.concatenate([one.prepared.lengths(0, "train"), one.prepared.lengths(0, "val")])
    assert lengths.sum() == tokens and len(lengths) == 600
    first = one.prepared.streams("train")[0]
    end = load_tokenizer(one.tokenizer_file, 300).token_to_id(END_OF_TEXT)
    assert first.window(int(first.doc_starts[1]) - 1, 1)[0] == end  # every document ends with end-of-text


def test_an_interrupted_preparation_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    texts = _documents(600)
    whole = _prepare(tmp_path, texts, cache="whole")
    flush, written = token_shards._ShardBuffer.flush, []

    def dies_after_two(self, counts):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(flush(self, counts))
        return written[-1]

    monkeypatch.setattr(token_shards._ShardBuffer, "flush", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        _prepare(tmp_path, texts, cache="cut")
    monkeypatch.setattr(token_shards._ShardBuffer, "flush", flush)
    directory = next((tmp_path / "cut" / "tokens").iterdir())
    assert not (directory / "meta.json").exists() and len(list(directory.glob("*.json"))) == 2
    resumed = _prepare(tmp_path, texts, cache="cut")
    assert _shard_bytes(resumed.prepared.directory) == _shard_bytes(whole.prepared.directory)


def test_every_training_token_is_an_input_once_per_epoch_and_batches_are_pure(tmp_path):
    prepared = _prepare(tmp_path, _documents(300)).prepared
    streams = prepared.streams("train")
    layout = Layout(micro_batch_size=4, accumulation=2, replicas=3)
    batches = PackedBatches(streams, [1.0], 16, layout, seed=5, split="train")
    n = batches.sequences[0]
    per_step = 4 * 2 * 3
    seen = np.concatenate([batches.starts(step, micro, rank)[1] for step in range(n // per_step + 1)
                           for micro in range(2) for rank in range(3)])
    epoch = seen[:n]
    assert np.array_equal(np.sort(epoch), np.arange(n) * 16) and not np.array_equal(epoch, np.arange(n) * 16)
    x, y = batches.get(3, 1, 2)
    assert x.shape == (4, 16) and x.dtype == torch.int64 and torch.equal(x[:, 1:], y[:, :-1])
    again = PackedBatches(streams, [1.0], 16, layout, seed=5, split="train").get(3, 1, 2)
    assert torch.equal(again[0], x) and not torch.equal(batches.get(3, 1, 1)[0], x)
    start = int(batches.starts(3, 1, 2)[1][0])
    assert torch.equal(x[0], torch.from_numpy(streams[0].window(start, 16)))
    assert batches.epochs(2 * n) == [pytest.approx(2.0)]


def test_a_mixture_draws_each_source_by_weight_and_reports_its_epochs(tmp_path):
    streams = []
    for i, n in enumerate((300, 200, 100)):
        (tmp_path / f"s{i}").mkdir()
        streams.append(_prepare(tmp_path / f"s{i}", _documents(n, seed=i)).prepared.streams("train")[0])
    batches = PackedBatches(streams, [0.6, 0.3, 0.1], 8, Layout(16), seed=0, split="train")
    sources = np.concatenate([batches.starts(step, 0)[0] for step in range(1000)])
    shares = np.bincount(sources, minlength=3) / len(sources)
    assert np.abs(shares - [0.6, 0.3, 0.1]).max() < 0.01
    assert list(block_counts([0.6, 0.3, 0.1], 10)) == [6, 3, 1]
    drawn = np.bincount(sources, minlength=3) / np.asarray(batches.sequences)  # passes over each source
    assert batches.epochs(len(sources)) == pytest.approx(drawn, rel=0.01)


def test_segments_number_the_documents_of_each_row(tmp_path):
    prepared = _prepare(tmp_path, _documents(200)).prepared
    stream = prepared.streams("train")[0]
    batches = PackedBatches([stream], [1.0], 64, Layout(8), seed=1, split="train", masking=True)
    x, _, segments = batches.get(0, 0)
    end = load_tokenizer(prepared.directory.parent.parent / "tokenizers" /
                         next((prepared.directory.parent.parent / "tokenizers").iterdir()).name, 300
                         ).token_to_id(END_OF_TEXT)
    # a new document starts after each end-of-text
    expected = torch.cat([torch.zeros(8, 1, dtype=torch.int64), torch.cumsum(x[:, :-1] == end, dim=1)], dim=1)
    assert segments.dtype == torch.int64 and torch.equal(segments, expected) and segments.max() > 0


def test_permute_is_a_bijection_for_any_size():
    for n in (1, 2, 3, 17, 1000, 4097):
        out = permute(np.arange(n), n, [0, 1])
        assert np.array_equal(np.sort(out), np.arange(n))
    assert not np.array_equal(permute(np.arange(1000), 1000, [0]), permute(np.arange(1000), 1000, [1]))


def test_mean_attended_keys_counts_each_query_keys_within_its_document():
    rng = np.random.default_rng(0)
    for _ in range(5):
        lengths, seq_len = rng.integers(1, 50, size=20), 16
        document = np.repeat(np.arange(len(lengths)), lengths)
        keys = sum(int((row[: i + 1] == row[i]).sum()) for start in range(0, len(document), seq_len)
                   for row in [document[start:start + seq_len]] for i in range(len(row)))
        assert mean_attended_keys(lengths, seq_len) == pytest.approx(keys / len(document))
    assert mean_attended_keys(np.array([1000]), 10) == 5.5  # one long document: plain causal attention


def test_report_gives_documents_tokens_bytes_and_the_distribution(tmp_path):
    data = _prepare(tmp_path, _documents(100))
    result = report(data, sequences=1000, seq_len=32)
    row = result["sources"][0]
    assert row["documents"] == result["documents"] == 100 and row["tokens"] == result["tokens"]
    assert row["bytes"] == sum(len(t.encode()) for t in _documents(100))
    spread = result["document_tokens"]
    assert spread["min"] <= spread["p50"] <= spread["max"] and row["epochs"] > 0


def test_the_random_sampler_draws_seeded_windows_with_replacement(tmp_path):
    stream = _prepare(tmp_path, _documents(200)).prepared.streams("train")[0]
    batches = PackedBatches([stream], [1.0], 32, Layout(64), seed=3, split="train", sampler="random")
    starts = np.concatenate([batches.starts(step, 0)[1] for step in range(50)])
    assert starts.min() >= 0 and starts.max() <= len(stream) - 33 and len(np.unique(starts)) < len(starts)
    assert np.array_equal(batches.starts(7, 0)[1], PackedBatches([stream], [1.0], 32, Layout(64), seed=3,
                                                                 split="train", sampler="random").starts(7, 0)[1])


def test_the_loss_hands_segments_to_the_forward_only_when_the_batch_has_them():
    from llmspec.train.methods.pretrain import NextToken

    calls = []

    def forward(inputs, targets, **kwargs):
        calls.append(kwargs)
        return None, torch.tensor(1.0)

    x = torch.zeros(2, 4, dtype=torch.int64)
    NextToken()(forward, x, x)
    NextToken()(forward, x, x, x + 1)
    assert calls[0] == {} and torch.equal(calls[1]["segments"], x + 1)


def test_the_progress_line_gives_bytes_tokens_per_second_and_time_left():
    from llmspec.data.progress import ProgressLine, describe

    assert describe(1 << 30, 3 << 30, 2_000_000, 10.0) == (
        "data: 1.00 GiB / 3.00 GiB (33%), 200k tokens/s, 0m20s left")
    said: list[str] = []
    progress = ProgressLine(said.append, interval=0.0)
    progress(0, 100, 500)  # tokens an interrupted preparation had written: not counted in the rate
    progress(50, 100, 1500)
    assert len(said) == 1 and said[0].startswith("data: 50 B / 100 B (50%), ")
