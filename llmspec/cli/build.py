"""``llmspec build``: compile a spec into model.py, ds_config.json, launch.sh, plan.json, spec.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmspec.cli.common import SetOpt, SpecArg


def build(spec: SpecArg, out: Annotated[Path, typer.Option("-o", "--out", help="output directory")],
          set_: SetOpt = None,
          force: Annotated[bool, typer.Option("--force", help="overwrite files edited since the last build")]
          = False) -> None:
    """Compile the spec: model.py (standalone PyTorch), ds_config.json, launch.sh, plan.json, spec.yaml."""
    from llmspec.compile.build import build as make_build
    from llmspec.spec.loading import load_spec

    loaded = load_spec(spec, set_ or [])
    for path in make_build(loaded, out, force=force):
        print(path)
