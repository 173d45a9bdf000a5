"""End to end: each source format trains tiny, a weighted mixture trains and reports its epochs, and a killed
preparation started again writes the bytes an uninterrupted one writes."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llmspec.runner import run
from llmspec.spec.loading import load_spec
from llmspec.train.metrics import read_metrics

pytestmark = pytest.mark.integration

SENTENCES = ["Return the number of items in the container.", "This module provides functions for text.",
             "The quick brown fox jumps over the lazy dog.", "Open the file and read every line of it.",
             "Raise an error when the value is not valid.", "Close the socket once the reply has arrived."]


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(SENTENCES, size=int(rng.integers(2, 12)))) for _ in range(n)]


def _write(folder: Path, kind: str, texts: list[str], field: str = "text") -> Path:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = "".join(json.dumps({field: t}) + "\n" for t in texts)
    if kind == "parquet":
        pq.write_table(pa.table({field: texts}), folder / "c.parquet", row_group_size=100)
        return folder / "c.parquet"
    if kind == "arrow":
        datasets.Dataset.from_dict({field: texts}).save_to_disk(str(folder / "saved"))
        return folder / "saved"
    if kind == "jsonl.gz":
        (folder / "c.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
        return folder / "c.jsonl.gz"
    (folder / "c.jsonl").write_text(lines)
    return folder / "c.jsonl"


def small(*sets: str):
    return load_spec("tiny", ["model.d_model=64", "model.n_heads=4", "model.n_kv_heads=2", "model.d_ff=128",
                              "model.n_layers=2", "model.vocab_size=320", "model.max_seq_len=64",
                              "training.seq_len=64", "training.micro_batch_size=4", "training.global_batch_size=8",
                              "training.max_steps=30", "training.log_interval=1", "training.eval_interval=30",
                              "training.checkpoint_interval=30", "training.schedule.warmup_steps=5", *sets])


@pytest.mark.parametrize("kind, field", [("parquet", "text"), ("arrow", "text"), ("jsonl.gz", "text"),
                                         ("jsonl", "content")])
def test_each_format_trains_tiny(tmp_path, kind, field):
    path = _write(tmp_path, kind, _texts(400), field)
    summary = run(small(f"data.sources=[{{path: '{path}', text_field: {field}}}]"), tmp_path / "r",
                  announce=lambda *a: None)
    records = read_metrics(tmp_path / "r" / "metrics.jsonl")
    steps = [r["loss"] for r in records if "loss" in r]
    assert steps[-1] < steps[0] - 1.0 and summary.val_loss is not None and np.isfinite(summary.val_loss)


def test_a_weighted_mixture_trains_and_says_its_epochs(tmp_path):
    sources = []
    for i, weight in enumerate((0.6, 0.3, 0.1)):
        (tmp_path / str(i)).mkdir()
        path = _write(tmp_path / str(i), "jsonl", _texts(150 * (i + 1), seed=i))
        sources.append(f"{{path: '{path}', weight: {weight}}}")
    said: list[str] = []
    run(small(f"data.sources=[{', '.join(sources)}]"), tmp_path / "r", announce=said.append)
    line = next(s for s in said if "epochs over each source" in s)
    epochs = [float(part.rsplit(" ", 1)[1]) for part in line.split(": ", 2)[2].split(", ")]
    assert len(epochs) == 3 and epochs[0] > epochs[1] > epochs[2] > 0  # 0.6/150 docs > 0.3/300 > 0.1/450


PREPARE = """
import sys
from pathlib import Path
from llmspec.data.pipeline import prepare_data
from llmspec.spec.data import DataSpec
prepare_data(DataSpec(corpus=sys.argv[1], workers=2), 300, cache=Path(sys.argv[2]), shard_bytes=1 << 18)
"""


def _prepare(corpus: Path, cache: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PREPARE, str(corpus), str(cache)], env=os.environ)


def test_a_killed_preparation_run_again_writes_the_same_shards(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts(60_000)))  # ~10 MB, ~40 shards
    assert _prepare(corpus, tmp_path / "whole").wait(timeout=600) == 0
    killed = _prepare(corpus, tmp_path / "cut")
    deadline = time.time() + 300
    while not list((tmp_path / "cut").glob("tokens/*/s0-00002.json")) and time.time() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    directory = next((tmp_path / "cut" / "tokens").iterdir())
    assert not (directory / "meta.json").exists(), "killed too late"
    assert _prepare(corpus, tmp_path / "cut").wait(timeout=600) == 0
    whole = next((tmp_path / "whole" / "tokens").iterdir())
    names = sorted(p.name for p in whole.iterdir() if not p.name.startswith(".") and p.name != "meta.json")
    assert names == sorted(p.name for p in directory.iterdir() if not p.name.startswith(".") and
                           p.name != "meta.json")
    assert all((whole / n).read_bytes() == (directory / n).read_bytes() for n in names)
