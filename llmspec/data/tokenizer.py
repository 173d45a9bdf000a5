"""Byte-level BPE (the GPT-2 scheme) trained with Hugging Face ``tokenizers``, cached by corpus and vocab size."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llmspec.data.cache import corpus_digest
from llmspec.data.corpus import DataError
from llmspec.files import replaced_atomically

END_OF_TEXT = "<|endoftext|>"


def train_tokenizer(documents: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer with exactly ``vocab_size`` tokens (256 bytes + merges + end-of-text)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(documents, trainer=trainer, length=len(documents))
    found = tokenizer.get_vocab_size()
    if found < vocab_size:
        raise DataError(f"data.tokenizer.vocab_size: {vocab_size} is too large for this corpus; BPE found only "
                        f"{found} tokens (use a larger corpus or a vocab_size ≤ {found})")
    return tokenizer


def tokenizer_for(documents: list[str], vocab_size: int, cache: Path,
                  announce: Callable[[str], None] = lambda line: None) -> tuple[Tokenizer, Path]:
    """Train (or reuse the cached) tokenizer for this corpus and vocab size; returns it and its file.
    ``announce``: told when training starts and ends (it takes a while on a large corpus)."""
    path = cache / "tokenizers" / f"{corpus_digest(documents)}-{vocab_size}.json"
    if path.exists():
        return Tokenizer.from_file(str(path)), path
    announce(f"data: training a {vocab_size:,}-token BPE tokenizer on {len(documents):,} documents")
    start = time.perf_counter()
    tokenizer = train_tokenizer(documents, vocab_size)
    announce(f"data: tokenizer trained in {time.perf_counter() - start:.1f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as tmp:
        tokenizer.save(str(tmp))
    return tokenizer, path


def load_tokenizer(path: str | Path, model_vocab: int, end: str | None = END_OF_TEXT) -> Tokenizer:
    """A tokenizer.json that fits the model's vocabulary and holds ``end`` (the token documents or responses end
    with; None: checked by the caller)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data.tokenizer.path: {path} does not exist")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # noqa: BLE001 - the tokenizers library raises its own exception types
        why = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise DataError(f"data.tokenizer.path: {path} is not a tokenizer.json ({why})") from None
    if tokenizer.get_vocab_size() > model_vocab:
        raise DataError(f"data.tokenizer.path: {path} has {tokenizer.get_vocab_size()} tokens, more than "
                        f"model.vocab_size {model_vocab}")
    if end is not None and tokenizer.token_to_id(end) is None:
        raise DataError(f"data.tokenizer.path: {path} has no {end} token")
    return tokenizer
