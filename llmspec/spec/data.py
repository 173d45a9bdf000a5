"""The ``data`` section: the corpus ``run`` trains on (one ``corpus``, or a weighted mixture of ``sources``), its
tokenizer, the held-out validation documents, how many processes encode it, and document masking."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictBool, model_validator

from llmspec.spec.section import Positive, Section

# what a source's files may be; inferred from the file names when `format` is absent
FORMATS = ("txt", "jsonl", "jsonl.gz", "jsonl.zst", "parquet", "arrow")


class Source(Section):
    """One source of a pretraining mixture: a file, a glob, a directory, or a Hugging Face ``datasets`` directory
    written by ``save_to_disk``."""

    path: str = Field(description="a file, a glob (data/*.jsonl.gz), a directory (its files of the accepted "
                      "formats, recursively), or a `datasets` save_to_disk directory (its train split)")
    weight: float = Field(1.0, gt=0, description="share of the training sequences drawn from this source: "
                          "weight / the sum of the weights")
    text_field: str = Field("text", min_length=1, description="the field (JSON Lines) or column (Parquet, Arrow) "
                            "that holds each document's text")
    format: Literal["txt", "jsonl", "jsonl.gz", "jsonl.zst", "parquet", "arrow"] | None = Field(
        None, description="derived from the file names: .txt (one document a file), .jsonl, .jsonl.gz, .jsonl.zst, "
        ".parquet, .arrow")


class Tokenizer(Section):
    vocab_size: Positive | None = None
    path: str | None = None
    sample_bytes: Positive = Field(64_000_000, description="text a new tokenizer trains on: the first bytes of "
                                   "each source, shared by weight, streamed (deterministic)")


class DataSpec(Section):
    corpus: str | list[str] = "builtin"
    sources: list[Source] | None = Field(None, min_length=1, description="a weighted mixture of sources "
                                         "(instead of corpus, which is one source of weight 1)")
    tokenizer: Tokenizer = Tokenizer()
    val_fraction: float = Field(0.05, gt=0, lt=1, description="share of each source's documents held out for "
                                "validation")
    workers: Positive | None = Field(None, description="derived: this machine's cores; processes that encode the "
                                     "corpus")
    document_masking: StrictBool = Field(False, description="attention stays within each document of a packed "
                                         "sequence, and positions restart at each document")
    sampler: Literal["packed", "random"] = Field(
        "packed", description="packed: one pass per epoch over shuffled sequences; random: windows drawn with "
        "replacement (some text seen several times, some never)")

    @model_validator(mode="after")
    def _one_kind_of_corpus(self) -> DataSpec:
        # corpus: builtin (the default) gives way to sources; any other corpus beside them is ambiguous
        if self.sources is not None and self.corpus != "builtin":
            raise ValueError("give data.sources or data.corpus, not both (corpus is one source of weight 1)")
        return self
