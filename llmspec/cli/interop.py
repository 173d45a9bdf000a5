"""``llmspec import-hf`` and ``export-hf``: transformers checkpoints in and out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmspec.cli.common import SetOpt
from llmspec.errors import LLMSpecError


def import_hf(hf_dir: Annotated[Path, typer.Argument(help="a transformers checkpoint directory (config.json)")],
              out: Annotated[Path, typer.Option("-o", "--out", help="output directory")],
              name: Annotated[str | None, typer.Option(help="spec name (default: the directory's)")] = None) -> None:
    """A transformers checkpoint → spec.yaml (+ model.safetensors in the compiled model's names)."""
    from llmspec.interop.hf import import_hf as run_import

    for path in run_import(hf_dir, out, name):
        print(path)


def export_hf(weights: Annotated[Path, typer.Argument(
                  help="a run directory (llmspec run), weights in the compiled model's names (.safetensors or "
                       ".pt), or a directory holding spec.yaml and model.safetensors (what import-hf writes)")],
              out: Annotated[Path, typer.Option("-o", "--out", help="output directory")],
              spec: Annotated[str | None, typer.Option(help="the spec the weights belong to")] = None,
              set_: SetOpt = None) -> None:
    """Weights of the compiled model → config.json + model.safetensors that transformers loads."""
    from llmspec.interop.hf import export_hf as run_export
    from llmspec.spec.loading import load_spec

    if not weights.exists():
        raise LLMSpecError(f"{weights}: no such file or directory")
    if weights.is_dir() and (weights / "checkpoints").is_dir():
        from llmspec.train.generate import export_run

        for path in export_run(weights, out):
            print(path)
        return
    if weights.is_dir():
        spec = spec or str(weights / "spec.yaml")
        weights = weights / "model.safetensors"
    if spec is None:
        raise LLMSpecError(f"{weights}: pass --spec SPEC (the spec these weights were built from)")
    for path in run_export(weights, load_spec(spec, set_ or []), out):
        print(path)
