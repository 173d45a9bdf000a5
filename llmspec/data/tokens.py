"""The corpus encoded once into token shards, streaming, on every core, resumable.

Each source's documents are read in order, cut into chunks of about ``CHUNK_BYTES`` of text, and encoded by worker
processes (``llmspec.data.encode``), at most two chunks per worker in flight; chunks are gathered in order into
shards of about ``SHARD_BYTES`` of text. Memory is bounded by one shard, whatever the corpus's size. Shard k of
source i is four files: ``s{i}-{k}.train.bin`` and ``.val.bin`` (tokens: uint16 when the vocabulary fits, else
uint32; each document followed by end-of-text), ``.npz`` (the documents' lengths and the training tokens' counts),
and ``.json``, written last: a shard is there only once its .json is. Chunk and shard boundaries depend on the text
alone (not on the number of workers), so an interrupted preparation resumes after its last whole shard and writes
byte for byte what an uninterrupted one would have. ``meta.json``, written at the end, marks the whole.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmspec.data import encode
from llmspec.data.cache import VERSION
from llmspec.data.corpus import builtin_documents
from llmspec.data.sources import Source, documents
from llmspec.files import replaced_atomically, write_atomic

CHUNK_BYTES = 1 << 20  # text a worker encodes at a time
SHARD_BYTES = 64 << 20  # text per shard: bounds the memory of preparation
IN_PROCESS_BYTES = 8 << 20  # a corpus this small is encoded in the calling process (starting workers costs more)

# (bytes read, bytes in all, tokens written): told after each chunk
Progress = Callable[[int, int, int], None]


@dataclass(frozen=True)
class Chunk:
    first: int  # the source's index of its first document
    texts: list[str]
    size: int  # bytes of text
    position: int  # bytes of the source read after its last document


def chunks(stream: Iterator[tuple[str, int]], skip: int, chunk_bytes: int) -> Iterator[Chunk]:
    """Consecutive documents of about ``chunk_bytes`` of text, after the first ``skip`` documents."""
    texts: list[str] = []
    size = first = position = 0
    for index, (text, position) in enumerate(stream):
        if index < skip:
            continue
        if not texts:
            first = index
        texts.append(text)
        size += len(text.encode())
        if size >= chunk_bytes:
            yield Chunk(first, texts, size, position)
            texts, size = [], 0
    if texts:
        yield Chunk(first, texts, size, position)


def finished_shards(directory: Path, source: int) -> list[dict]:
    """The whole shards of a source already written (their .json), in order, up to the first missing one."""
    shards = []
    while (path := directory / f"s{source}-{len(shards):05d}.json").is_file():
        shards.append(json.loads(path.read_text()))
    return shards


class _Encoder:
    """Encodes chunks in order: in worker processes (at most two chunks each in flight) or in this process."""

    def __init__(self, tokenizer_json: str, end: int, dtype: str, workers: int):
        self.pool = None
        args = (tokenizer_json, end, dtype)
        if workers > 1:
            # spawn: a fresh interpreter, not a fork of this one (its tokenizer threads or torch state)
            self.pool = multiprocessing.get_context("spawn").Pool(workers, encode.start, args)
        else:
            encode.start(*args)
        self.window = 2 * workers

    def map(self, items: Iterator[Chunk], val_fraction: float) -> Iterator[tuple[Chunk, tuple]]:
        if self.pool is None:
            for chunk in items:
                yield chunk, encode.encode(chunk.texts, chunk.first, val_fraction)
            return
        pending: deque = deque()
        for chunk in items:
            pending.append((chunk, self.pool.apply_async(encode.encode, (chunk.texts, chunk.first, val_fraction))))
            if len(pending) >= self.window:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def write_tokens(sources: list[Source], tokenizer_json: str, end: int, vocab: int, directory: Path,
                 val_fraction: float, workers: int, builtin: Callable[[], list[str]] | None = None,
                 progress: Progress | None = None, chunk_bytes: int = CHUNK_BYTES,
                 shard_bytes: int = SHARD_BYTES) -> dict:
    """Encode every source into ``directory`` (resuming after its whole shards; nothing to do when its meta.json
    is there) and return the meta: per source its documents, tokens and bytes (train and val), its shards."""
    meta_path = directory / "meta.json"
    if meta_path.is_file():
        return json.loads(meta_path.read_text())
    directory.mkdir(parents=True, exist_ok=True)
    dtype = "uint16" if vocab <= 2**16 else "uint32"
    builtin = builtin or builtin_documents
    total = sum(s.size(builtin) for s in sources)
    encoder = _Encoder(tokenizer_json, end, dtype, workers_for(total, workers))
    start, counts, before, done_tokens = time.perf_counter(), np.zeros(vocab, np.int64), 0, 0
    try:
        for i, source in enumerate(sources):
            shards = finished_shards(directory, i)
            for shard in shards:
                counts += np.load(directory / f"s{i}-{shard['index']:05d}.npz")["counts"]
                done_tokens += shard["train_tokens"] + shard["val_tokens"]
            skip = sum(s["documents"] for s in shards)
            stream = chunks(documents(source, builtin), skip, chunk_bytes)
            buffer = _ShardBuffer(directory, i, len(shards), dtype, vocab)
            for chunk, encoded in encoder.map(stream, val_fraction):
                buffer.add(chunk, *encoded)
                done_tokens += len(encoded[0]) + len(encoded[2])
                if buffer.text_bytes >= shard_bytes:
                    shards.append(buffer.flush(counts))
                if progress:
                    progress(before + chunk.position, total, done_tokens)
            if buffer.documents:
                shards.append(buffer.flush(counts))
            before += source.size(builtin)
    finally:
        encoder.close()
    freq = counts[counts > 0] / max(int(counts.sum()), 1)
    meta = {"version": VERSION, "dtype": dtype, "vocab": vocab, "val_fraction": val_fraction,
            "unigram_entropy": float(-(freq * np.log(freq)).sum()),
            "sources": [_summarise(s, finished_shards(directory, i)) for i, s in enumerate(sources)],
            "seconds": round(time.perf_counter() - start, 3)}
    write_atomic(meta_path, json.dumps(meta, indent=1))  # last: its presence says every shard is whole
    return meta


def _summarise(source: Source, shards: list[dict]) -> dict:
    keys = ("documents", "train_documents", "val_documents", "train_tokens", "val_tokens", "text_bytes")
    return {"label": source.label, "path": source.path, "weight": source.weight, "shards": len(shards),
            **{key: sum(s[key] for s in shards) for key in keys}}


class _ShardBuffer:
    """The chunks of the shard being filled, written atomically (its .json last) when full."""

    def __init__(self, directory: Path, source: int, index: int, dtype: str, vocab: int):
        self.directory, self.source, self.index, self.dtype, self.vocab = directory, source, index, dtype, vocab
        self._reset()

    def _reset(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.documents = self.text_bytes = self.position = 0

    def add(self, chunk: Chunk, train: np.ndarray, train_lengths: np.ndarray, val: np.ndarray,
            val_lengths: np.ndarray) -> None:
        self.parts.append((train, train_lengths, val, val_lengths))
        self.documents += len(chunk.texts)
        self.text_bytes += chunk.size
        self.position = chunk.position

    def flush(self, counts: np.ndarray) -> dict:
        train, train_lengths, val, val_lengths = (np.concatenate([p[k] for p in self.parts]) for k in range(4))
        stem = self.directory / f"s{self.source}-{self.index:05d}"
        shard_counts = np.bincount(train, minlength=self.vocab).astype(np.int64)
        counts += shard_counts
        for path, array in ((f"{stem}.train.bin", train), (f"{stem}.val.bin", val)):
            with replaced_atomically(Path(path)) as tmp:
                array.tofile(tmp)
        with replaced_atomically(Path(f"{stem}.npz")) as tmp:
            with open(tmp, "wb") as handle:  # np.savez on a path would add .npz to the temporary name
                np.savez(handle, train_lengths=train_lengths, val_lengths=val_lengths, counts=shard_counts)
        shard = {"index": self.index, "documents": self.documents, "train_documents": len(train_lengths),
                 "val_documents": len(val_lengths), "train_tokens": len(train), "val_tokens": len(val),
                 "text_bytes": self.text_bytes, "position": self.position}
        write_atomic(Path(f"{stem}.json"), json.dumps(shard))  # last: the shard is whole
        self.index += 1
        self._reset()
        return shard


def workers_for(size: int, workers: int) -> int:
    """The worker processes that encode ``size`` bytes: none beside this one for a small corpus."""
    return 1 if size < IN_PROCESS_BYTES else workers


def default_workers() -> int:
    """All the cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
