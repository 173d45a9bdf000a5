"""Preparation of a generated JSONL corpus against Hugging Face tokenizers' own ``encode_batch``, side by side: the
throughput of `llmspec prepare` (reading, encoding on every worker, writing shards) beside encode_batch's on the same
text with the same tokenizer, on one thread and on all cores; and the peak memory of `llmspec prepare` (its process
and its workers, summed) for each corpus size given.

    python benchmarks/data_prepare.py [--sizes 0.5 3] [--dir DIR] [--sample-mb 64]
                                      [--throughput-only]

Each corpus is written once into --dir (default: llmspec-bench-data in the temporary folder; kept between
runs). Throughput: the first --sample-mb of the first corpus,
encoded by encode_batch (one thread, every core; each in its own process so that RAYON_NUM_THREADS holds) and by
`llmspec prepare` with the same tokenizer, in two alternating rounds, best of each (a shared machine's load drifts;
side by side, each figure meets the same load). Memory: `prepare` of each whole corpus in a fresh cache (its
tokenizer trained on data.tokenizer.sample_bytes, everything encoded), its peak RSS and its tokens per second.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent

SPEC = """name: bench-data
model: {{vocab_size: 8192, d_model: 64, n_layers: 2, n_heads: 4, max_seq_len: 256}}
training: {{seq_len: 256, micro_batch_size: 8, global_batch_size: 8, max_steps: 10}}
cluster: {{gpu: cpu, gpus_per_node: 1, nodes: 1}}
data:
  sources: [{{path: {path}}}]
  tokenizer: {tokenizer}
"""

ENCODE = """
import json, sys, time
from tokenizers import Tokenizer
tokenizer = Tokenizer.from_file(sys.argv[1])
texts = []
with open(sys.argv[2], "rb") as handle:
    size = 0
    for line in handle:
        texts.append(json.loads(line)["text"])
        size += len(line)
        if size > int(sys.argv[3]):
            break
start = time.perf_counter()
tokens = sum(len(e.ids) for e in tokenizer.{method}(texts))
print(json.dumps({{"tokens": tokens, "seconds": time.perf_counter() - start}}))
"""


def generate(path: Path, gigabytes: float, seed: int = 0) -> None:
    """JSON Lines of synthetic English-like text: documents drawn from a pool of 20,000, each of Zipf-distributed
    words from a 30,000-word vocabulary, lengths log-normal (median about 2 kB), so BPE has real merges to find."""
    if path.exists() and path.stat().st_size >= gigabytes * 1e9:
        return
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    weights = 1 / np.arange(1, 27) ** 0.9
    words = ["".join(rng.choice(letters, size=int(rng.integers(1, 11)), p=weights / weights.sum()))
             for _ in range(30_000)]
    zipf = np.cumsum(1 / np.arange(1, len(words) + 1))
    zipf /= zipf[-1]
    pool = []
    for _ in range(20_000):
        n = int(np.clip(rng.lognormal(5.8, 0.9), 5, 20_000))
        chosen = np.minimum(np.searchsorted(zipf, rng.random(n)), len(words) - 1)
        sentence = " ".join(words[i] for i in chosen).replace(" q", ". Q")
        pool.append(json.dumps(sentence))
    target, written, i = int(gigabytes * 1e9), 0, 0
    with open(path.with_suffix(".tmp"), "w") as out:
        while written < target:
            line = f'{{"id": {i}, "text": {pool[int(rng.integers(len(pool)))]}}}\n'
            out.write(line)
            written += len(line)
            i += 1
    path.with_suffix(".tmp").rename(path)


def prepare(corpus: Path, sample: int, tokenizer: str | None = None, keep: Path | None = None) -> dict:
    """`llmspec prepare --json` in a fresh cache (the tokenizer given, or trained on ``sample`` bytes: copied to
    ``keep``), its peak memory (the process tree's summed RSS, sampled)."""
    cache = tempfile.mkdtemp(prefix="llmspec-bench-cache-")
    spec = Path(cache) / "spec.yaml"
    given = f"{{path: {tokenizer}}}" if tokenizer else f"{{sample_bytes: {sample}}}"
    spec.write_text(SPEC.format(path=corpus, tokenizer=given))
    args = [sys.executable, "-m", "llmspec", "prepare", str(spec), "--json"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                               env={**os.environ, "LLMSPEC_CACHE": cache})
    tree, peak, start = psutil.Process(process.pid), 0, time.perf_counter()
    while process.poll() is None:
        try:
            rss = tree.memory_info().rss + sum(c.memory_info().rss for c in tree.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.1)
    out, err = process.communicate()
    if process.returncode:
        raise SystemExit(f"prepare failed: {err[-2000:]}")
    result = json.loads(out)
    result.update(peak_rss=peak, wall=time.perf_counter() - start)
    if keep:
        shutil.copyfile(result["tokenizer"], keep)
    shutil.rmtree(cache)
    return result


def encode_batch(tokenizer: str, corpus: Path, sample_bytes: int, threads: int, method: str) -> float:
    """Tokens per second of encode_batch on the corpus's first ``sample_bytes``, on ``threads`` threads."""
    out = subprocess.run([sys.executable, "-c", ENCODE.format(method=method), tokenizer, str(corpus),
                          str(sample_bytes)], capture_output=True, text=True, check=True,
                         env={**os.environ, "RAYON_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "true"})
    result = json.loads(out.stdout)
    return result["tokens"] / result["seconds"]


def head(corpus: Path, size: int) -> Path:
    """The corpus's first lines up to ``size`` bytes, as a file of its own."""
    path = corpus.with_name(f"{corpus.stem}-head-{size // 10**6}mb.jsonl")
    if not path.exists():
        with open(corpus, "rb") as source, open(path, "wb") as out:
            written = 0
            for line in source:
                out.write(line)
                written += len(line)
                if written >= size:
                    break
    return path


def throughput(corpus: Path, sample: int, cores: int) -> dict[str, float]:
    """Tokens per second on the same text with the same tokenizer: encode_batch (1 thread, every core; the fast
    variant without offsets) and prepare's encoding, best of two alternating rounds."""
    text = head(corpus, sample)
    tokenizer = text.with_suffix(".tokenizer.json")
    prepare(text, min(sample, 16 * 10**6), keep=tokenizer)
    best: dict[str, float] = {}
    for _ in range(2):
        rates = {"encode_batch, 1 thread": encode_batch(str(tokenizer), text, sample, 1, "encode_batch"),
                 f"encode_batch, {cores} threads": encode_batch(str(tokenizer), text, sample, cores, "encode_batch"),
                 f"encode_batch_fast, {cores} threads": encode_batch(str(tokenizer), text, sample, cores,
                                                                     "encode_batch_fast")}
        result = prepare(text, sample, str(tokenizer))
        rates[f"llmspec prepare, {cores} workers"] = result["tokens"] / result["encoding_seconds"]
        best = {name: max(rate, best.get(name, 0.0)) for name, rate in rates.items()}
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.5, 3.0], help="corpus sizes in GB")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "llmspec-bench-data")
    parser.add_argument("--sample-mb", type=float, default=64, help="text the throughput is measured on (MB)")
    parser.add_argument("--tokenizer-sample-mb", type=float, default=64, help="data.tokenizer.sample_bytes (MB)")
    parser.add_argument("--throughput-only", action="store_true", help="skip the whole-corpus preparations")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    corpora = []
    for size in args.sizes:
        corpus = args.dir / f"corpus-{size:g}gb.jsonl"
        started = time.perf_counter()
        generate(corpus, size)
        print(f"corpus {corpus} ({corpus.stat().st_size / 1e9:.2f} GB) ready in {time.perf_counter() - started:.0f} s",
              flush=True)
        corpora.append((size, corpus))
    rates = throughput(corpora[0][1], int(args.sample_mb * 1e6), cores)
    one, every = rates["encode_batch, 1 thread"], rates[f"encode_batch, {cores} threads"]
    print(f"\nthe first {args.sample_mb:g} MB, same tokenizer{'tokens/s':>21s}{f'vs {cores} × 1 thread':>18s}"
          f"{f'vs {cores} threads':>14s}")
    for name, rate in rates.items():
        print(f"  {name:44s}{rate:11,.0f}{rate / (cores * one):18.2f}{rate / every:14.2f}")
    if args.throughput_only:
        return
    print(f"\n{'corpus':>8s}{'tokens':>16s}{'documents':>12s}{'tokens/s':>11s}{'peak RSS':>12s}{'vs first':>10s}"
          f"{'wall':>9s}")
    first = None
    for size, corpus in corpora:
        result = prepare(corpus, int(args.tokenizer_sample_mb * 1e6))
        first = first or result["peak_rss"]
        print(f"{size:6g}GB{result['tokens']:16,}{result['documents']:12,}"
              f"{result['tokens'] / result['encoding_seconds']:11,.0f}{result['peak_rss'] / 2**30:10.2f}Gi"
              f"{result['peak_rss'] / first:10.2f}{result['wall']:8.0f}s", flush=True)

if __name__ == "__main__":
    main()
