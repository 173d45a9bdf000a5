"""``llmspec import-hf`` and ``export-hf``: transformers checkpoints in and out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmspec.cli.common import SetOpt
from llmspec.errors import LLMSpecError

ForceOpt = Annotated[bool, typer.Option("--force", help="replace files in the output directory that this command "
                                                         "did not write (or that were edited since), or write "
                                                         "into a run directory")]


def import_hf(hf_dir: Annotated[Path, typer.Argument(help="a transformers checkpoint directory (config.json)")],
              out: Annotated[Path, typer.Option("-o", "--out", help="output directory")],
              name: Annotated[str | None, typer.Option(help="spec name (default: the directory's)")] = None,
              force: ForceOpt = False) -> None:
    """A transformers checkpoint → spec.yaml (+ model.safetensors in the compiled model's names, the tokenizer and
    its chat template)."""
    from llmspec.interop.hf import import_hf as run_import

    for path in run_import(hf_dir, out, name, force=force):
        print(path)


def export_hf(weights: Annotated[Path, typer.Argument(
                  help="a run directory (llmspec run), weights in the compiled model's names (.safetensors or "
                       ".pt), or a directory holding spec.yaml and model.safetensors (what import-hf writes)")],
              out: Annotated[Path, typer.Option("-o", "--out", help="output directory")],
              spec: Annotated[str | None, typer.Option(help="the spec the weights belong to")] = None,
              set_: SetOpt = None, force: ForceOpt = False) -> None:
    """Weights of the compiled model → config.json + model.safetensors that transformers loads (a run's also
    with its tokenizer, chat template and generation_config.json)."""
    from llmspec.interop.hf import export_hf as run_export
    from llmspec.spec.loading import load_spec

    if not weights.exists():
        raise LLMSpecError(f"{weights}: no such file or directory")
    if weights.is_dir() and (weights / "checkpoints").is_dir():
        from llmspec.train.export_hf import export_run

        for path in export_run(weights, out, force=force):
            print(path)
        return
    if weights.is_dir():  # an import-hf output: with its tokenizer, chat template and token ids
        from llmspec.train.export_hf import export_folder

        for path in export_folder(weights, load_spec(spec or str(weights / "spec.yaml"), set_ or []), out,
                                  force=force):
            print(path)
        return
    if spec is None:
        raise LLMSpecError(f"{weights}: pass --spec SPEC (the spec these weights were built from)")
    for path in run_export(weights, load_spec(spec, set_ or []), out, force=force):
        print(path)
