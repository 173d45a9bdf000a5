"""What a tokenising worker process does: encode a chunk of documents, each followed by end-of-text, and split it
into training and held-out documents. A pure function of its arguments, so any number of workers (or none: the
same function runs in the calling process) writes the same tokens.

Imports only numpy and tokenizers: a worker starts in a fraction of a second.
"""

from __future__ import annotations

import os

import numpy as np

_state: dict = {}


def start(tokenizer_json: str, end: int, dtype: str) -> None:
    """A worker's initialiser: one thread (the workers are the parallelism; Rust threads inside each would fight
    over the same cores), and the tokenizer."""
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _state.update(tokenizer=Tokenizer.from_str(tokenizer_json), end=end, dtype=dtype)


def held_out(first: int, count: int, val_fraction: float) -> np.ndarray:
    """Which of documents ``first .. first + count - 1`` of a source are validation documents: document j is when
    floor((j + 1)·f) > floor(j·f), one in every 1/f spread evenly through the source (a source of n documents holds
    out floor(n·f))."""
    j = np.arange(first, first + count, dtype=np.float64)
    return np.floor((j + 1) * val_fraction) > np.floor(j * val_fraction)


def encode(texts: list[str], first: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                        np.ndarray]:
    """(train tokens, train document lengths, val tokens, val document lengths) of documents ``first ..`` of a
    source; a document's length counts its end-of-text."""
    tokenizer, end, dtype = _state["tokenizer"], _state["end"], _state["dtype"]
    ids: list[int] = []
    lengths = np.empty(len(texts), dtype=np.int64)
    for i, encoding in enumerate(tokenizer.encode_batch_fast(texts)):
        ids += encoding.ids
        ids.append(end)
        lengths[i] = len(encoding.ids) + 1
    tokens = np.array(ids, dtype=dtype)
    val = held_out(first, len(texts), val_fraction)
    if not val.any():
        return tokens, lengths, tokens[:0], lengths[:0]
    in_val = np.repeat(val, lengths)
    return tokens[~in_val], lengths[~val], tokens[in_val], lengths[val]
