"""Where prepared data lives and what names it: ``$LLMSPEC_CACHE`` (default ``~/.cache/llmspec``), content digests,
the builtin corpus extracted once, and the key a spec's prepared data is found by. Light (no torch, no tokenizers):
the planner reads it."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from llmspec.data.corpus import builtin_documents
from llmspec.files import write_atomic
from llmspec.spec.data import DataSpec

VERSION = 1  # of the shard layout (part of every key)


def cache_dir() -> Path:
    return Path(os.environ.get("LLMSPEC_CACHE") or Path.home() / ".cache" / "llmspec")


def corpus_digest(documents: list[str]) -> str:
    digest = hashlib.sha256()
    for document in documents:
        digest.update(hashlib.sha256(document.encode()).digest())
    return digest.hexdigest()[:20]


def builtin_cached(cache: Path, announce: Callable[[str], None] = lambda line: None) -> list[str]:
    """The builtin corpus's documents, extracted once per Python version (it takes seconds)."""
    path = cache / f"builtin-corpus-py{sys.version_info.major}.{sys.version_info.minor}.json"
    if path.exists():
        return json.loads(path.read_text())
    announce("data: extracting the built-in corpus (the standard library's docstrings)")
    documents = builtin_documents()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(documents))
    return documents


def data_key(data: DataSpec, vocab: int, fingerprints: list[str]) -> str:
    """What identifies a spec's prepared data without preparing it: its data section (less how many workers),
    the vocabulary, the sources' fingerprints."""
    text = json.dumps([data.model_dump(exclude={"workers"}), vocab, fingerprints, VERSION], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def pointer(cache: Path, key: str) -> Path:
    """The file that says where the prepared data of ``data_key`` is."""
    return cache / "prepared" / f"{key}.json"
