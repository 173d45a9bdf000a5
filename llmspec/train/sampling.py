"""Autoregressive sampling: temperature, top-k and top-p (nucleus); temperature 0 is greedy."""

from __future__ import annotations

import torch


@torch.no_grad()
def sample(model: torch.nn.Module, idx: torch.Tensor, max_new_tokens: int, max_seq_len: int,
           temperature: float = 0.8, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None, stop_token: int | None = None) -> torch.Tensor:
    """Extend ``idx`` (1, t) by up to ``max_new_tokens`` tokens (no KV cache: each step re-reads the window)."""
    model.eval()
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -max_seq_len:])
        logits = logits[:, -1, :].float()
        if temperature == 0:
            token = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.size(-1):
                kth = torch.topk(logits, top_k).values[:, -1, None]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            if top_p is not None and top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                # drop tokens once the mass before them already reaches top_p (the first token always stays)
                drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
                sorted_probs = sorted_probs.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
            token = torch.multinomial(probs, 1, generator=generator)
        idx = torch.cat([idx, token.to(idx.device)], dim=1)
        if stop_token is not None and token.item() == stop_token:
            break
    return idx
