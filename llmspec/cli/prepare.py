"""``llmspec prepare``: the data step of a pretraining spec alone (on a CPU box, before the GPUs are rented): the
tokenizer and the token shards, cached where ``run`` finds them; the work is ``llmspec.train.job.pretraining_data``."""

from __future__ import annotations

import sys

from llmspec.cli.common import JsonOpt, SetOpt, SpecArg, load, new_console, print_json


def prepare(spec: SpecArg, set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Check the sources, train the tokenizer on a sample, encode the corpus into token shards on every core
    (resuming an interrupted preparation); report documents, tokens and bytes per source, the documents' token
    counts, the epochs a run makes of each source, and the time."""
    from llmspec.data.pipeline import report
    from llmspec.train.job import pretraining_data

    loaded = load(spec, set_)
    tr = loaded.training
    data = pretraining_data(loaded, lambda line: print(line, file=sys.stderr))
    result = report(data, tr.steps * tr.global_batch_size, tr.seq_len)
    if json_:
        print_json(result)
        return
    _render(result)


def _render(result: dict) -> None:
    from rich.table import Table

    from llmspec.spec.units import fmt_bytes

    table = Table(title="prepared data", title_justify="left")
    for name in ("source", "weight", "docs", "tokens", "text", "val docs", "epochs"):
        table.add_column(name, justify="left" if name == "source" else "right")
    for row in result["sources"]:
        table.add_row(row["path"], f"{row['weight']:g}", f"{row['documents']:,}", f"{row['tokens']:,}",
                      fmt_bytes(row["bytes"]), f"{row['val_documents']:,}", f"{row.get('epochs', 0):.3g}")
    console = new_console()
    console.print(table)
    spread = result["document_tokens"]
    console.print(f"{result['documents']:,} documents, {result['tokens']:,} tokens, {fmt_bytes(result['bytes'])} of "
                  f"text in {result['seconds']:.1f} s; tokens per document: mean {spread.get('mean', 0):,}, "
                  f"min {spread.get('min', 0):,}, p10 {spread.get('p10', 0):,}, p50 {spread.get('p50', 0):,}, "
                  f"p90 {spread.get('p90', 0):,}, p99 {spread.get('p99', 0):,}, max {spread.get('max', 0):,}")
    console.print(f"token shards: {result['directory']} (llmspec run reuses them)")
