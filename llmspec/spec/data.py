"""The ``data`` section: the corpus ``run`` trains on, its tokenizer, the validation split."""

from __future__ import annotations

from pydantic import Field

from llmspec.spec.section import Positive, Section


class Tokenizer(Section):
    vocab_size: Positive | None = None
    path: str | None = None


class DataSpec(Section):
    corpus: str | list[str] = "builtin"
    tokenizer: Tokenizer = Tokenizer()
    val_fraction: float = Field(0.05, gt=0, lt=1)
