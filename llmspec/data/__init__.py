"""Data for ``llmspec run``: the corpus, a byte-level BPE tokenizer, token shards and deterministic batches."""
