"""Optimizers the spec names: each one trains (no value the spec accepts fails at run time)."""

from __future__ import annotations

import pytest
import torch

from llmspec.errors import SpecError
from llmspec.spec.loading import load_spec
from llmspec.train.lion import Lion
from llmspec.train.optim import make_optimizer


def test_lion_follows_the_paper():
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(5))
    grads = [torch.randn(5), torch.randn(5)]
    lr, (b1, b2), wd = 0.1, (0.9, 0.99), 0.01
    optimizer = Lion([param], lr=lr, betas=(b1, b2), weight_decay=wd)
    expected, momentum = param.detach().clone(), torch.zeros(5)
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
        expected = expected * (1 - lr * wd) - lr * torch.sign(b1 * momentum + (1 - b1) * grad)
        momentum = b2 * momentum + (1 - b2) * grad
    assert torch.allclose(param.detach(), expected)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "lion"])
def test_every_named_optimizer_steps(name):
    spec = load_spec("tiny", [f"training.optimizer.name={name}"])
    model = torch.nn.Linear(4, 4)
    optimizer = make_optimizer(spec, model, "cpu")
    before = model.weight.detach().clone()
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    assert not torch.equal(before, model.weight)


@pytest.mark.parametrize("betas", ["[1.5, 0.95]", "[0.9, -0.1]", "[0.9, 1.0]"])
def test_betas_outside_zero_one_are_refused(betas):
    with pytest.raises(SpecError, match="training.optimizer.betas"):
        load_spec("tiny", [f"training.optimizer.betas={betas}"])
