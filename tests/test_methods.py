"""A training method is one module (llmspec/train/methods/): a toy method defined here, in one class, registered in
the registry, trains through the one loop (llmspec.train.loop.fit) with the torch engine, and nothing else in the
package knows of it."""

from __future__ import annotations

import math

import pytest
import torch

from llmspec.compile.build import build
from llmspec.compile.loading import model_module
from llmspec.spec.loading import load_spec, value_model_spec
from llmspec.spec.post_training import METHOD_CLASSES
from llmspec.train.job import Job
from llmspec.train.losses import Loss
from llmspec.train.methods import METHODS, Method, method_for
from llmspec.train.metrics import read_metrics
from llmspec.train.objectives import Objective
from llmspec.train.ppo import PolicyAndCritic


class PredictZero(Method):
    """Toy objective: whatever the context, the next token is 0. Batches are random token windows; the loss is
    −log p(token 0) at every position, so it starts near log(vocab) and falls towards 0 as the model learns it."""

    name = "predict-zero"

    class Windows:
        """Its batch source: random windows, a pure function of (split, step, micro-batch, replica)."""

        def __init__(self, spec, split: int):
            self.spec, self.split = spec, split

        def get(self, step: int, micro: int, rank: int = 0) -> tuple[torch.Tensor, ...]:
            tr = self.spec.training
            generator = torch.Generator().manual_seed(hash((self.split, step, micro, rank)) % 2**31)
            inputs = torch.randint(self.spec.model.vocab_size, (tr.micro_batch_size, tr.seq_len), generator=generator)
            return inputs, torch.zeros_like(inputs)

    class ZeroLoss(Loss):
        def __call__(self, forward, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return -torch.log_softmax(forward(inputs)[0].float(), dim=-1)[..., 0].mean()

    def loss(self, model: torch.nn.Module) -> Loss:
        return self.ZeroLoss()

    def objective(self, job, engine) -> Objective:
        return Objective(self.Windows(self.spec, 0), self.Windows(self.spec, 1), eval_batches=2)

    def sample_prompts(self, job) -> list[str]:
        return []


def test_a_toy_method_in_one_definition_trains_through_the_loop(tmp_path, monkeypatch):
    from llmspec.backends.torch_backend import TorchEngine
    from llmspec.train.loop import fit

    monkeypatch.setitem(METHODS, PredictZero.name, PredictZero)
    spec = load_spec("tiny", ["model.n_layers=1", "model.d_model=64", "model.d_ff=128", "training.seq_len=32",
                              "training.micro_batch_size=4", "training.global_batch_size=4", "training.max_steps=40",
                              "training.log_interval=1", "training.eval_interval=40", "training.checkpoint_interval=40",
                              "training.schedule.warmup_steps=2", "training.optimizer.lr=0.01"])
    build(spec, tmp_path / "build")
    job = Job(spec, tmp_path, shards=None, resume=False)
    method = method_for(spec, PredictZero.name)
    engine = TorchEngine(job, "cpu", method=method)
    assert isinstance(engine.loss, PredictZero.ZeroLoss) and engine.loss.reference is None
    result = fit(job, engine, announce=lambda *a: None)

    losses = [r["loss"] for r in read_metrics(job.metrics_file) if "loss" in r]
    assert len(losses) == 40 and losses[0] > 0.5 * math.log(spec.model.vocab_size)  # ≈ log V before it learns
    assert losses[-1] < 0.1 * losses[0] and result.val_loss < 0.1 * losses[0]
    inputs, _ = PredictZero.Windows(spec, 2).get(0, 0)  # unseen windows: the next token is 0 everywhere
    with torch.no_grad():
        assert (engine.model(inputs)[0].argmax(-1) == 0).all()


@pytest.mark.parametrize("name", sorted(METHOD_CLASSES))
def test_each_spec_method_has_its_module_and_a_loss_that_declares_its_reference(name):
    spec = load_spec("tiny", ["model.n_layers=1", f"post_training={{method: {name}}}"])
    method = method_for(spec)
    assert method.name == name and type(method) is METHODS[name]
    torch.manual_seed(0)
    model = model_module(spec).Model()
    if spec.post_training.trains_critic:
        model = PolicyAndCritic(model, model_module(value_model_spec(spec)).Model())
    loss = method.loss(model)
    assert (loss.reference is not None) == spec.post_training.has_reference
