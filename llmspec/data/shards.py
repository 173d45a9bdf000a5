"""Tokens written once to memory-mapped files, and (input, target) windows sampled deterministically.

Every document is encoded and followed by end-of-text; the tail ``val_fraction`` of the token stream is the
validation split. Files hold uint16 when the vocabulary fits, else uint32. A batch is a pure function of
(seed, step, micro-batch, rank), so resuming at a step needs no sampler state and reproduces the same batches.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from llmspec.data.corpus import DataError
from llmspec.data.tokenizer import END_OF_TEXT
from llmspec.files import replaced_atomically, write_atomic


@dataclass(frozen=True)
class Shards:
    train: Path
    val: Path
    dtype: str
    unigram_entropy: float  # nats per token of the training split: the loss of a model that ignores context

    def load(self, split: str) -> np.ndarray:
        return np.memmap(self.train if split == "train" else self.val, dtype=self.dtype, mode="r")


def write_shards(documents: list[str], tokenizer: Tokenizer, directory: Path, val_fraction: float,
                 announce: Callable[[str], None] = lambda line: None) -> Shards:
    """Encode the corpus once into ``directory`` (reused when already there). ``announce``: told when encoding
    starts and ends (it takes a while on a large corpus)."""
    meta_path = directory / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return Shards(directory / "train.bin", directory / "val.bin", meta["dtype"], meta["unigram_entropy"])
    announce(f"data: encoding {len(documents):,} documents into tokens")
    start = time.perf_counter()
    end = tokenizer.token_to_id(END_OF_TEXT)
    dtype = "uint16" if tokenizer.get_vocab_size() <= 2**16 else "uint32"
    pieces = []
    for encoding in tokenizer.encode_batch(documents):
        pieces.append(np.asarray(encoding.ids + [end], dtype=dtype))
    tokens = np.concatenate(pieces)
    split = len(tokens) - max(1, int(len(tokens) * val_fraction))
    directory.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", tokens[:split]), ("val", tokens[split:])):
        with replaced_atomically(directory / f"{name}.bin") as tmp:
            part.tofile(tmp)
    counts = np.bincount(tokens[:split], minlength=tokenizer.get_vocab_size())
    freq = counts[counts > 0] / split
    meta = {"dtype": dtype, "train_tokens": int(split), "val_tokens": int(len(tokens) - split),
            "unigram_entropy": float(-(freq * np.log(freq)).sum())}
    write_atomic(meta_path, json.dumps(meta))  # last: its presence says the shards are whole
    announce(f"data: {len(tokens):,} tokens ({meta['train_tokens']:,} train, {meta['val_tokens']:,} val) encoded "
             f"in {time.perf_counter() - start:.1f} s")
    return Shards(directory / "train.bin", directory / "val.bin", dtype, meta["unigram_entropy"])


class Batches:
    """Random windows of ``seq_len + 1`` tokens: inputs are the first ``seq_len``, targets the last."""

    def __init__(self, tokens: np.ndarray, seq_len: int, micro_batch_size: int, seed: int, split: str):
        if len(tokens) < seq_len + 2:
            raise DataError(f"data: the {split} split has {len(tokens):,} tokens; training.seq_len {seq_len} needs "
                            f"at least {seq_len + 2} (a larger corpus, or a larger data.val_fraction for val)")
        self.tokens, self.seq_len, self.batch, self.seed = tokens, seq_len, micro_batch_size, seed
        self.split_code = 0 if split == "train" else 1

    def get(self, step: int, micro: int, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.split_code, step, micro, rank])
        starts = rng.integers(0, len(self.tokens) - self.seq_len - 1, size=self.batch)
        windows = np.stack([self.tokens[s:s + self.seq_len + 1] for s in starts]).astype(np.int64)
        window = torch.from_numpy(windows)
        return window[:, :-1], window[:, 1:]
