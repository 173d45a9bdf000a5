"""Autoregressive sampling, the one sampler every caller uses (``generate``, samples.txt, held-out accuracy, RL
rollouts): temperature, top-k and top-p (nucleus); temperature 0 is greedy.

Within the model's ``max_seq_len`` the compiled model's KV cache (``Model.start_cache``) keeps the earlier tokens'
keys and values, so each new token costs one position's forward instead of the whole window's; beyond it (or with
a model.py edited to have no cache) every step re-reads the last ``max_seq_len`` tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
               generator: torch.Generator | None) -> torch.Tensor:
    """(B, vocab) logits → (B,) tokens."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
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
    # drawn on the CPU: a CPU generator then gives the same tokens whatever device the model is on
    return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(logits.device)


def every_rank_done(done: torch.Tensor) -> bool:
    """Whether every row has stopped, on every rank of a distributed run: ranks keep stepping together, as ZeRO-3
    needs (each forward gathers the weights from all of them); a rank whose rows stopped pads with the stop
    token."""
    import torch.distributed as dist

    finished = done.all().to(torch.int32)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(finished, op=dist.ReduceOp.MIN)
    return bool(finished)


@torch.no_grad()
def sample(model: torch.nn.Module, idx: torch.Tensor, max_new_tokens: int, max_seq_len: int,
           temperature: float = 0.8, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None, stop_token: int | None = None,
           on_token: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Extend every row of ``idx`` (B, t) by up to ``max_new_tokens`` tokens. A row that has produced
    ``stop_token`` continues with it only (so rows stay one tensor); sampling ends when every row has (on every
    rank, under torch.distributed). ``on_token`` sees each step's (B,) tokens as they are drawn (``generate``
    streams them). The model's train/eval mode is restored afterwards (no dropout while sampling)."""
    was_training = model.training
    model.eval()
    cached = hasattr(model, "start_cache") and idx.shape[1] + max_new_tokens <= max_seq_len
    if cached:
        model.start_cache(idx.shape[1] + max_new_tokens)
    try:
        done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            window = idx[:, model.cached_tokens():] if cached else idx[:, -max_seq_len:]
            logits = model(window)[0][:, -1]
            if bool(done.all()):  # stepping only beside other ranks: no draw, so the generator stays as alone
                token = torch.full_like(done, stop_token, dtype=idx.dtype)
            else:
                token = next_token(logits, temperature, top_k, top_p, generator).to(idx.device)
            if stop_token is not None:
                token = torch.where(done, torch.full_like(token, stop_token), token)
                done |= token == stop_token
            idx = torch.cat([idx, token[:, None]], dim=1)
            if on_token is not None:
                on_token(token)
            if stop_token is not None and every_rank_done(done):
                break
    finally:
        if cached:
            model.stop_cache()
        model.train(was_training)
    return idx
