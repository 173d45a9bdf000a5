"""Batches from prepared token shards (``llmspec.data.tokens``): packed sequences in one pass per epoch, sources
mixed by weight, a pure function of (seed, step, micro-batch, rank).

Each source's training tokens are one stream (its shards memory-mapped end to end); sequence k of a source is
tokens [k·T, k·T + T + 1): inputs the first T, targets the last T, so every token of the stream is an input once
per pass. Batch slot p (row b of rank r's micro-batch m of step t: p = ((t·A + m)·R + r)·B + b) goes to a source by
weight: each block of ``BLOCK`` slots holds round(BLOCK·share) slots of each source, in a seeded order, so shares are
exact to 1/BLOCK over any whole block. A source's j-th slot reads its sequence π_e(j mod n) of epoch e = j div n,
where π_e is a seeded permutation of its n sequences (a Feistel network: no table, whatever n). With
``document_masking`` a batch carries a third tensor, the document index of each input position within its row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmspec.data.corpus import DataError

BLOCK = 4096  # mixture slots whose shares are exact (to rounding)
_MULTIPLIERS = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


class Stream:
    """One split of one source: its shards' tokens as one sequence, memory-mapped, and where its documents start;
    ``lo``/``hi`` take a part of it (a source too small to hold out documents: the tail of its training tokens)."""

    def __init__(self, paths: list[Path], dtype: str, lengths: np.ndarray, lo: int = 0, hi: int | None = None):
        self.paths, self.dtype, self.lengths = paths, dtype, lengths
        self.parts = [np.memmap(p, dtype=dtype, mode="r") for p in paths if p.stat().st_size]
        self.ends = np.cumsum([len(p) for p in self.parts], dtype=np.int64)
        self.doc_starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        self.lo, self.hi = lo, int(self.ends[-1]) if hi is None and len(self.ends) else (hi or 0)

    def __len__(self) -> int:
        return self.hi - self.lo

    def part(self, lo: int, hi: int) -> Stream:
        return Stream(self.paths, self.dtype, self.lengths, self.lo + lo, self.lo + hi)

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of this stream (across shard boundaries) as int64."""
        begin, out, filled = self.lo + start, np.empty(length, dtype=np.int64), 0
        part = int(np.searchsorted(self.ends, begin, side="right"))
        while filled < length:
            offset = begin + filled - (self.ends[part - 1] if part else 0)
            piece = self.parts[part][offset:offset + length - filled]
            out[filled:filled + len(piece)] = piece
            filled += len(piece)
            part += 1
        return out

    def segments(self, start: int, length: int) -> np.ndarray:
        """The document index of positions [start, start + length) counted from the first one's document."""
        positions = np.arange(self.lo + start, self.lo + start + length)
        documents = np.searchsorted(self.doc_starts, positions, side="right")
        return documents - documents[0]


def permute(index: np.ndarray, n: int, key: list[int]) -> np.ndarray:
    """A seeded bijection of [0, n) applied to ``index``: a four-round Feistel network on the smallest even number
    of bits that covers n, cycle-walking the values that land at n or above back into range."""
    if n <= 1:
        return index.copy()
    half = ((n - 1).bit_length() + 1) // 2
    mask = np.uint64((1 << half) - 1)
    rounds = np.random.default_rng(key).integers(0, 2**63, size=4, dtype=np.uint64)
    out = index.astype(np.uint64)
    todo = np.ones(len(out), dtype=bool)
    while todo.any():
        x = out[todo]
        left, right = x >> np.uint64(half), x & mask
        for k in rounds:
            left, right = right, left ^ (_mix(right ^ k) & mask)
        out[todo] = (left << np.uint64(half)) | right
        todo = out >= np.uint64(n)
    return out.astype(np.int64)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit flips about half the output bits."""
    with np.errstate(over="ignore"):
        z = (z + np.uint64(_MULTIPLIERS[0])) * np.uint64(_MULTIPLIERS[1])
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MULTIPLIERS[2])
        return z ^ (z >> np.uint64(31))


def block_counts(weights: list[float], block: int = BLOCK) -> np.ndarray:
    """Slots of each source in a block: block·share rounded by largest remainder (they sum to the block)."""
    shares = np.asarray(weights, dtype=np.float64) / sum(weights) * block
    counts = np.floor(shares).astype(np.int64)
    counts[np.argsort(-(shares - counts), kind="stable")[:block - counts.sum()]] += 1
    return counts


class Mixture:
    """Which source each batch slot reads, and the how-manieth slot of that source it is."""

    def __init__(self, weights: list[float], seed: int, split: int):
        self.counts, self.key, self._cache = block_counts(weights), [seed, split], {}

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        if block not in self._cache:
            labels = np.repeat(np.arange(len(self.counts)), self.counts)
            labels = np.random.default_rng([*self.key, block]).permutation(labels)
            ordinal = np.empty(len(labels), dtype=np.int64)
            for source in range(len(self.counts)):
                where = np.flatnonzero(labels == source)
                ordinal[where] = np.arange(len(where)) + block * self.counts[source]
            self._cache = {block: (labels, ordinal)}  # batches walk the blocks in order: keep the last one
        return self._cache[block]

    def assign(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(self.counts) == 1:
            return np.zeros(len(slots), dtype=np.int64), slots.astype(np.int64)
        sources, ordinals = np.empty(len(slots), np.int64), np.empty(len(slots), np.int64)
        for i, slot in enumerate(slots):
            labels, ordinal = self._block(int(slot) // BLOCK)
            sources[i], ordinals[i] = labels[slot % BLOCK], ordinal[slot % BLOCK]
        return sources, ordinals


@dataclass(frozen=True)
class Layout:
    """How the loop's (step, micro, rank) map to batch slots: A micro-batches per step on each of R replicas."""
    micro_batch_size: int
    accumulation: int = 1
    replicas: int = 1

    def slots(self, step: int, micro: int, rank: int) -> np.ndarray:
        first = ((step * self.accumulation + micro) * self.replicas + rank) * self.micro_batch_size
        return np.arange(first, first + self.micro_batch_size)


class PackedBatches:
    """(inputs, targets[, segments]) of ``seq_len`` tokens from weighted streams (see the module's docstring).
    ``sampler``: packed (one pass per epoch, shuffled) or random (windows at seeded random offsets, with
    replacement); ``shuffle`` False reads the sequences in order (validation)."""

    def __init__(self, streams: list[Stream], weights: list[float], seq_len: int, layout: Layout, seed: int,
                 split: str, masking: bool = False, sampler: str = "packed", shuffle: bool = True,
                 labels: list[str] | None = None):
        self.split_code = 0 if split == "train" else 1
        for stream, label in zip(streams, labels or [f"source {i}" for i in range(len(streams))], strict=True):
            if len(stream) < seq_len + 1:
                raise DataError(f"data: the {split} split of {label} has {len(stream):,} tokens; training.seq_len "
                                f"{seq_len} needs at least {seq_len + 1} (a larger corpus, or a larger "
                                "data.val_fraction for val)")
        self.streams, self.seq_len, self.layout, self.seed = streams, seq_len, layout, seed
        self.masking, self.sampler, self.shuffle = masking, sampler, shuffle
        self.sequences = [(len(s) - 1) // seq_len for s in streams]
        self.mixture = Mixture(weights, seed, self.split_code)

    def starts(self, step: int, micro: int, rank: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(source, first token) of each row of a micro-batch."""
        sources, ordinals = self.mixture.assign(self.layout.slots(step, micro, rank))
        starts = np.empty(len(sources), dtype=np.int64)
        if self.sampler == "random":
            rng = np.random.default_rng([self.seed, self.split_code, step, micro, rank])
            for i, s in enumerate(sources):
                starts[i] = rng.integers(0, len(self.streams[s]) - self.seq_len)
            return sources, starts
        for s in np.unique(sources):
            rows = sources == s
            n = self.sequences[s]
            epoch, index = np.divmod(ordinals[rows], n)
            for e in np.unique(epoch):
                at = epoch == e
                if self.shuffle:
                    index[at] = permute(index[at], n, [self.seed, self.split_code, int(s), int(e)])
            starts[rows] = index * self.seq_len
        return sources, starts

    def get(self, step: int, micro: int, rank: int = 0) -> tuple[torch.Tensor, ...]:
        sources, starts = self.starts(step, micro, rank)
        rows = list(zip(sources.tolist(), starts.tolist(), strict=True))
        windows = np.stack([self.streams[s].window(a, self.seq_len + 1) for s, a in rows])
        window = torch.from_numpy(windows)
        if not self.masking:
            return window[:, :-1], window[:, 1:]
        segments = np.stack([self.streams[s].segments(a, self.seq_len) for s, a in rows])
        return window[:, :-1], window[:, 1:], torch.from_numpy(segments)

    def epochs(self, sequences: int) -> list[float]:
        """Passes over each source's sequences that ``sequences`` drawn slots make."""
        shares = self.mixture.counts / self.mixture.counts.sum()
        return [float(sequences * share / n) for share, n in zip(shares, self.sequences, strict=True)]


class Prepared:
    """A prepared corpus (``llmspec.data.tokens``' directory): each source's train and val streams."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.meta = json.loads((self.directory / "meta.json").read_text())
        self.unigram_entropy: float = self.meta["unigram_entropy"]
        self.dtype: str = self.meta["dtype"]

    @property
    def sources(self) -> list[dict]:
        return self.meta["sources"]

    def lengths(self, source: int, split: str) -> np.ndarray:
        """Token counts of a source's documents in a split (each with its end-of-text)."""
        parts = [np.load(self.directory / f"s{source}-{k:05d}.npz")[f"{split}_lengths"]
                 for k in range(self.sources[source]["shards"])]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def streams(self, split: str) -> list[Stream]:
        """Each source's stream of a split. A source with no held-out document (fewer than 1/val_fraction
        documents) holds out the tail val_fraction of its training tokens instead."""
        out = []
        for i, source in enumerate(self.sources):
            train = self._stream(i, "train")
            if source["val_documents"]:
                out.append(train if split == "train" else self._stream(i, "val"))
                continue
            cut = len(train) - max(1, int(len(train) * self.meta["val_fraction"]))
            out.append(train.part(0, cut) if split == "train" else train.part(cut, len(train)))
        return out

    def _stream(self, source: int, split: str) -> Stream:
        paths = [self.directory / f"s{source}-{k:05d}.{split}.bin" for k in range(self.sources[source]["shards"])]
        return Stream(paths, self.dtype, self.lengths(source, split))
