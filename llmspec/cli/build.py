"""``llmspec build``: compile a spec into model.py, ds_config.json, launch.sh, plan.json, spec.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmspec.cli.common import HostfileOpt, SetOpt, SpecArg, load_with_hosts


def build(spec: SpecArg, out: Annotated[Path, typer.Option("-o", "--out", help="output directory")],
          set_: SetOpt = None, hostfile: HostfileOpt = None,
          force: Annotated[bool, typer.Option("--force", help="overwrite files edited since the last build")]
          = False) -> None:
    """Compile the spec: model.py (standalone PyTorch), ds_config.json, launch.sh, plan.json, spec.yaml."""
    from llmspec.compile.build import build as make_build

    loaded = load_with_hosts(spec, set_, hostfile)
    for path in make_build(loaded, out, force=force):
        print(path)
