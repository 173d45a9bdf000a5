"""Document masking: the compiled model's logits for a packed batch equal those of each document run alone
(attention stays within each document and positions restart at each), and a masked spec trains end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmspec.compile.loading import model_module
from llmspec.runner import run
from llmspec.spec.loading import load_spec
from llmspec.train.metrics import read_metrics

SMALL = ["model.d_model=64", "model.n_heads=4", "model.n_kv_heads=2", "model.d_ff=128", "model.n_layers=2",
         "model.vocab_size=320", "model.max_seq_len=64", "training.seq_len=64", "data.document_masking=true"]


def test_packed_batch_logits_equal_each_document_alone():
    module = model_module(load_spec("tiny", SMALL))
    torch.manual_seed(0)
    model = module.Model(module.ModelConfig()).eval()
    rows = [[5, 9, 3, 15], [20, 12]]  # the documents' lengths in each row of 32 tokens
    generator = torch.Generator().manual_seed(1)
    documents = [[torch.randint(0, 320, (n,), generator=generator) for n in row] for row in rows]
    packed = torch.stack([torch.cat(row) for row in documents])
    segments = torch.stack([torch.repeat_interleave(torch.arange(len(row)), torch.tensor(row)) for row in rows])
    with torch.no_grad():
        logits = model(packed, segments=segments)[0]
        for b, row in enumerate(documents):
            alone = torch.cat([model(document[None])[0][0] for document in row])
            torch.testing.assert_close(logits[b], alone, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model(packed)[0], logits, atol=1e-3)  # unmasked, the documents see each other


@pytest.mark.integration
def test_a_masked_spec_trains_tiny(tmp_path):
    rng = np.random.default_rng(0)
    words = "return the number of items in this module with text open file read every line raise value".split()
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(rng.choice(words, size=int(rng.integers(3, 30))))}) + "\n"
                              for _ in range(600)))
    spec = load_spec("tiny", [*SMALL, f"data.corpus={corpus}", "training.micro_batch_size=4",
                              "training.global_batch_size=8", "training.max_steps=30", "training.log_interval=1",
                              "training.eval_interval=30", "training.checkpoint_interval=30",
                              "training.schedule.warmup_steps=5"])
    summary = run(spec, tmp_path / "r", announce=lambda *a: None)
    losses = [r["loss"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < losses[0] - 1.0 and np.isfinite(summary.val_loss)
