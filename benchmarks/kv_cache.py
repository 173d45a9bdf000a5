"""Sampling with the compiled model's KV cache beside re-running the window for every token (the sampler without
the cache), same model, same prompts, same generator, in one run.

GRPO's rollouts of the `tiny` architecture: 8 prompts × 8 responses of 24 tokens after a 20-token prompt, 2
threads, median of 5 repetitions each, alternating. Prints seconds per batch of 64 rollouts and the ratio, and
checks the two draw the same tokens.
"""

from __future__ import annotations

import statistics
import time

import torch

from llmspec.compile.loading import model_module
from llmspec.spec.loading import load_spec
from llmspec.train.sampling import sample

PROMPTS, GROUP, PROMPT_LEN, NEW_TOKENS, REPEATS = 8, 8, 20, 24, 5


class WithoutCache(torch.nn.Module):
    """The same model, minus start_cache: the sampler then re-reads the window every token."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, idx):
        return self.model(idx)


def rollouts(model: torch.nn.Module, prompts: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    start = time.perf_counter()
    out = [sample(model, row.expand(GROUP, -1), NEW_TOKENS, 256, temperature=1.0,
                  generator=torch.Generator().manual_seed(i)) for i, row in enumerate(prompts)]
    return time.perf_counter() - start, out


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = model_module(load_spec("tiny")).Model().eval()
    prompts = torch.randint(0, 2048, (PROMPTS, 1, PROMPT_LEN))
    cached, plain = [], []
    for _ in range(REPEATS):
        seconds, with_cache = rollouts(model, prompts)
        cached.append(seconds)
        seconds, without = rollouts(WithoutCache(model).eval(), prompts)
        plain.append(seconds)
        assert all(torch.equal(a, b) for a, b in zip(with_cache, without, strict=True)), "different tokens"
    a, b = statistics.median(cached), statistics.median(plain)
    print(f"{PROMPTS * GROUP} rollouts × {NEW_TOKENS} tokens (tiny, 2 threads, median of {REPEATS})")
    print(f"  KV cache          {a:7.3f} s")
    print(f"  re-read window    {b:7.3f} s")
    print(f"  speed-up          {b / a:7.1f} ×  (same tokens drawn)")


if __name__ == "__main__":
    main()
