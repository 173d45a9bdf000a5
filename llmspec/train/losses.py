"""What a method's loss is, as an engine computes it on one micro-batch: ``loss(forward, inputs, targets, *the
method's tensors)``, with ``forward`` the engine's callable (the compiled, DeepSpeed-wrapped or plain module).

Each method's own loss is in its module (``llmspec.train.methods``); the formulas are the build's: model.py's
cross-entropy, and the ``objectives.py`` generated beside it (``llmspec.train.logprobs.compiled``: ``reward_loss``,
``sequence_logprobs``, ``dpo_loss``, ``token_logprobs``, ``grpo_loss``, ``ppo_loss``), so what ``measure`` counts is
what trains. Here: the contract, and
the frozen reference the methods that have one (dpo, ppo, grpo) compare the policy with.
"""

from __future__ import annotations

import copy

import torch

from llmspec.train.logprobs import compiled


class Reference:
    """The reference's log-probabilities, without gradients: the model with its adapters off (``adapter_off``), or
    a frozen copy of the model as it starts (``copy``: taken when the engine is built, after the base's weights are
    loaded); ``precomputed`` holds nothing (DPO's batches carry the start's log-probabilities)."""

    def __init__(self, kind: str, model: torch.nn.Module):
        self.model = model
        self.frozen = copy.deepcopy(model).eval().requires_grad_(False) if kind == "copy" else None

    @torch.no_grad()
    def logprobs(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed response log-probabilities per sequence."""
        return compiled(self.model).sequence_logprobs(self.logits(inputs), targets)

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.frozen is not None:
            return self.frozen(inputs)[0]
        self.model.set_adapters(False)
        try:
            return self.model(inputs)[0]
        finally:
            self.model.set_adapters(True)


class Loss:
    """A method's loss on one micro-batch. ``reference`` is the frozen model it compares the policy with (None for
    a method without one): the held-out metrics read the same one, and DeepSpeed partitions its copy under ZeRO-3."""

    reference: Reference | None = None

    def __call__(self, forward, inputs: torch.Tensor, targets: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
