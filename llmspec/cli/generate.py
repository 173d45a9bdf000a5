"""``llmspec generate``: sample from a run's latest checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def generate(run_dir: Annotated[Path, typer.Argument(help="a run directory (llmspec run)")],
             prompt: Annotated[str, typer.Argument(help="text to continue")],
             max_new_tokens: Annotated[int, typer.Option(min=1)] = 100,
             temperature: Annotated[float, typer.Option(help="0 is greedy")] = 0.8,
             top_k: Annotated[int | None, typer.Option(min=1)] = 50,
             top_p: Annotated[float | None, typer.Option()] = None,
             seed: int = 0,
             chat: Annotated[bool, typer.Option(help="answer the prompt as a user message under the run's chat "
                                                     "template; print the reply only")] = False) -> None:
    """Sample from the latest checkpoint of a run."""
    from llmspec.train.generate import generate as run_generate

    print(run_generate(run_dir, prompt, max_new_tokens, temperature, top_k, top_p, seed, chat))
