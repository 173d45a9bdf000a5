"""Training methods: one module each (its batch sources, loss, evaluation metrics, run checks, data and extra
models), behind the ``Method`` protocol (``llmspec.train.methods.base``). The loop, the engines, ``job``,
``metrics``, ``preflight`` and the runner ask the spec's method; none of them names one.

Adding a method: its spec class (``llmspec.spec.post_training``) and its module here, registered in ``METHODS``.
"""

from __future__ import annotations

from llmspec.spec.schema import Spec
from llmspec.train.methods.base import Method, PostTrainingMethod
from llmspec.train.methods.dpo import DPO
from llmspec.train.methods.grpo import GRPO
from llmspec.train.methods.ppo import PPO
from llmspec.train.methods.pretrain import Pretrain
from llmspec.train.methods.reward import Reward
from llmspec.train.methods.sft import SFT

# The registry: the only place in llmspec.train that maps a method's name to its code.
METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Pretrain, SFT, Reward, DPO, PPO, GRPO)}


def method_name(spec: Spec) -> str:
    """The spec's method: its post_training section's, else pretraining."""
    return spec.post_training.method if spec.post_training is not None else Pretrain.name


def method_for(spec: Spec, name: str | None = None) -> Method:
    """The method ``name`` (default: the spec's) for ``spec``."""
    return METHODS[name or method_name(spec)](spec)


__all__ = ["METHODS", "Method", "PostTrainingMethod", "method_for", "method_name"]
