"""``llmspec generate``: sample from a run's latest checkpoint."""

from __future__ import annotations

import sys
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
    """Sample from the latest checkpoint of a run; the text is printed as it is generated."""
    from llmspec.train.generate import generate as run_generate

    streamed = []

    def show(piece: str) -> None:
        streamed.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()

    text = run_generate(run_dir, prompt, max_new_tokens, temperature, top_k, top_p, seed, chat, on_text=show,
                        on_notice=lambda line: print(f"note: {line}", file=sys.stderr, flush=True))
    print("" if streamed else text)  # a reward model's score comes whole
