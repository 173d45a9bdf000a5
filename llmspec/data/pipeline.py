"""The data step of a pretraining run, alone: sources checked, a tokenizer trained on a bounded sample (or the given
one), the corpus encoded into token shards. ``llmspec prepare`` runs it on a CPU box before the GPUs are rented;
``run`` calls it too and finds its work done: tokenizers and shards are cached under ``$LLMSPEC_CACHE`` (default
``~/.cache/llmspec``) by what they are made of (the sources' fingerprints, the tokenizer, the split).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmspec.data import sources as src
from llmspec.data.cache import VERSION, builtin_cached, cache_dir, corpus_digest, data_key, pointer
from llmspec.data.corpus import DataError
from llmspec.data.packed import Prepared
from llmspec.data.tokenizer import END_OF_TEXT, tokenizer_for
from llmspec.data.tokens import Progress, default_workers, workers_for, write_tokens
from llmspec.files import write_atomic
from llmspec.spec.data import DataSpec
from llmspec.spec.units import fmt_bytes


def tokenizer_sample(sources: list[src.Source], budget: int, builtin: Callable[[], list[str]]) -> list[str]:
    """The first documents of each source up to its share (by weight) of ``budget`` bytes, streamed: the text a new
    tokenizer trains on, the same every time."""
    total = sum(s.weight for s in sources)
    sample: list[str] = []
    for source in sources:
        share, taken = budget * source.weight / total, 0
        for text, _ in src.documents(source, builtin):
            if taken >= share:
                break
            sample.append(text)
            taken += len(text.encode())
    return sample


@dataclass(frozen=True)
class PreparedData:
    """What ``prepare_data`` made: the token shards (``prepared``) and the tokenizer's file."""
    prepared: Prepared
    tokenizer_file: Path
    seconds: float
    sources: list[src.Source]


def prepare_data(data: DataSpec, vocab: int, tokenizer: tuple[object, Path] | None = None,
                 cache: Path | None = None, announce: Callable[[str], None] = lambda line: None,
                 progress: Progress | None = None, chunk_bytes: int | None = None,
                 shard_bytes: int | None = None) -> PreparedData:
    """Check the sources (before any work), train the tokenizer on a bounded sample unless ``tokenizer`` (loaded,
    with its file) is given, encode the sources (resuming an interrupted preparation), and record where the result
    is for the planner (``document_lengths``)."""
    cache = cache or cache_dir()
    started = time.perf_counter()
    sources = src.resolve(data)
    src.check(sources)
    builtin_docs: list[str] = []

    def builtin() -> list[str]:
        if not builtin_docs:
            builtin_docs.extend(builtin_cached(cache, announce))
        return builtin_docs

    if tokenizer is None:
        sample = tokenizer_sample(sources, data.tokenizer.sample_bytes, builtin)
        tokenizer = tokenizer_for(sample, vocab, cache, announce)
    loaded, tokenizer_file = tokenizer
    text = loaded.to_str()
    fingerprints = [src.fingerprint(s, lambda: corpus_digest(builtin())) for s in sources]
    key = hashlib.sha256(json.dumps([fingerprints,
                                     [s.weight for s in sources], corpus_digest([text]), data.val_fraction,
                                     VERSION]).encode()).hexdigest()[:20]
    directory = cache / "tokens" / key
    if not (directory / "meta.json").is_file():
        size = sum(s.size(builtin) for s in sources)
        workers = workers_for(size, data.workers or default_workers())
        announce(f"data: encoding {fmt_bytes(size)} with {workers} worker{'s' * (workers > 1)} into {directory}")
    sizes = {k: v for k, v in (("chunk_bytes", chunk_bytes), ("shard_bytes", shard_bytes)) if v}
    meta = write_tokens(sources, text, loaded.token_to_id(END_OF_TEXT), loaded.get_vocab_size(), directory,
                        data.val_fraction, data.workers or default_workers(), builtin, progress, **sizes)
    for source in meta["sources"]:
        if not source["documents"]:
            raise DataError(f"{source['label']}: no text in {source['path']}")
    found = pointer(cache, data_key(data, vocab, fingerprints))
    found.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(found, json.dumps({"tokens": str(directory), "tokenizer": str(tokenizer_file)}))
    return PreparedData(Prepared(directory), Path(tokenizer_file), time.perf_counter() - started, sources)


def report(data: PreparedData, sequences: int | None = None, seq_len: int | None = None) -> dict:
    """The ``prepare --json`` object: documents, tokens and bytes in all and per source, the distribution of the
    documents' token counts, the time; with ``sequences`` (a run's training sequences) and ``seq_len``, the epochs
    each source's training split makes."""
    prepared, rows = data.prepared, []
    for i, source in enumerate(prepared.sources):
        lengths = np.concatenate([prepared.lengths(i, "train"), prepared.lengths(i, "val")])
        row = {"path": source["path"], "weight": source["weight"], "documents": source["documents"],
               "tokens": source["train_tokens"] + source["val_tokens"], "bytes": source["text_bytes"],
               "train_tokens": source["train_tokens"], "val_tokens": source["val_tokens"],
               "val_documents": source["val_documents"], "document_tokens": distribution(lengths)}
        rows.append(row)
    if sequences is not None and seq_len is not None:
        weights = np.asarray([r["weight"] for r in rows]) / sum(r["weight"] for r in rows)
        for row, share, stream in zip(rows, weights, prepared.streams("train"), strict=True):
            row["epochs"] = round(float(sequences * share / max((len(stream) - 1) // seq_len, 1)), 4)
    every = np.concatenate([np.concatenate([prepared.lengths(i, "train"), prepared.lengths(i, "val")])
                            for i in range(len(rows))])
    return {"documents": sum(r["documents"] for r in rows), "tokens": sum(r["tokens"] for r in rows),
            "bytes": sum(r["bytes"] for r in rows), "seconds": round(data.seconds, 3),
            "encoding_seconds": prepared.meta["seconds"], "document_tokens": distribution(every),
            "directory": str(prepared.directory), "tokenizer": str(data.tokenizer_file), "sources": rows}


def distribution(lengths: np.ndarray) -> dict:
    """Token counts of documents: mean and percentiles."""
    if not len(lengths):
        return {}
    points = np.percentile(lengths, [0, 10, 50, 90, 99, 100])
    return {"mean": round(float(lengths.mean()), 1),
            **{name: int(v) for name, v in zip(("min", "p10", "p50", "p90", "p99", "max"), points, strict=True)}}


def read_all(data: DataSpec, cache: Path | None = None) -> Iterator[str]:
    """Every document of the spec's sources in order (small corpora and tests; a run streams instead)."""
    cache = cache or cache_dir()
    for source in src.resolve(data):
        for text, _ in src.documents(source, lambda: builtin_cached(cache)):
            yield text
