"""The optimizer: AdamW with weight decay on matrices only (not on biases, norms' gains)."""

from __future__ import annotations

import torch

from llmspec.spec.schema import Spec
from llmspec.train.lion import Lion


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay ≥2-D weights (matmuls, embeddings); leave 1-D ones (biases, norm gains) alone."""
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() yields a tied tensor once
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def make_optimizer(spec: Spec, model: torch.nn.Module, device: str) -> torch.optim.Optimizer:
    opt = spec.training.optimizer
    groups = param_groups(model, opt.weight_decay)
    if opt.name in ("adamw", "adam"):
        cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
        # The fused kernel (CUDA and CPU alike): one pass over each parameter instead of foreach's several; on this
        # CPU class it steps AdamW ~4x faster (benchmarks/train_throughput.py). transformers' Trainer defaults to it.
        return cls(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps, fused=device.split(":")[0] in ("cuda", "cpu"))
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.betas[0])
    return Lion(groups, lr=opt.lr, betas=opt.betas)
