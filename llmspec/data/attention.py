"""What document masking saves in attention: the mean number of keys a query attends to when attention stays
within each document of a packed sequence, from the documents' token counts. The planner reads it (numpy only:
no torch, no tokenizers).

Packed rows of T tokens cut the stream of documents (each with its end-of-text) at every multiple of T; under
causal attention a query at position i of a row sees i + 1 keys, (T + 1)/2 on average. Under document masking a
piece of a document that lies in one row, of length L, holds L queries seeing 1 .. L keys: L(L + 1)/2 in all. The
mean over the stream is exact for the packing (the shuffle reorders rows, not what is in them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def mean_attended_keys(lengths: np.ndarray, seq_len: int) -> float:
    """Mean keys per query under document masking for documents of ``lengths`` tokens packed into rows of
    ``seq_len`` (causal attention without masking: (seq_len + 1) / 2)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return (seq_len + 1) / 2
    documents = np.cumsum(lengths)[:-1]
    rows = np.arange(seq_len, total, seq_len, dtype=np.int64)
    cuts = np.union1d(documents, rows)
    pieces = np.diff(np.concatenate([[0], cuts, [total]])).astype(np.float64)
    return float((pieces * (pieces + 1) / 2).sum() / total)


def attended_keys(spec, cache: Path | None = None) -> float | None:
    """Under document masking, the mean keys per query of the spec's prepared corpus at its sequence length (what
    ``plan`` hands the planner, which counts causal keys without it); None without masking or prepared data."""
    if not spec.data.document_masking or spec.post_training is not None:
        return None
    lengths = prepared_lengths(spec, cache)
    return None if lengths is None else mean_attended_keys(lengths, spec.training.seq_len)


def prepared_lengths(spec, cache: Path | None = None) -> np.ndarray | None:
    """The training documents' token counts of the spec's corpus where ``llmspec prepare`` (or ``run``) prepared
    it already (None otherwise: nothing is read beyond the sources' fingerprints)."""
    from llmspec.data.cache import builtin_cached, cache_dir, corpus_digest, data_key, pointer
    from llmspec.data.corpus import DataError
    from llmspec.data.sources import fingerprint, resolve

    cache = cache or cache_dir()
    vocab = spec.data.tokenizer.vocab_size or spec.model.vocab_size
    try:
        sources = resolve(spec.data)
        fingerprints = [fingerprint(s, lambda: corpus_digest(builtin_cached(cache))) for s in sources]
    except (DataError, OSError):
        return None
    try:
        directory = Path(json.loads(pointer(cache, data_key(spec.data, vocab, fingerprints)).read_text())["tokens"])
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError, KeyError):
        return None
    parts = [np.load(directory / f"s{i}-{k:05d}.npz")["train_lengths"]
             for i, source in enumerate(meta["sources"]) for k in range(source["shards"])]
    return np.concatenate(parts) if parts else None
