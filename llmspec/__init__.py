"""llmspec: one YAML spec for an LLM training job — exact plan, compiled model, DeepSpeed launch.

The Python API mirrors the CLI::

    from llmspec import load_spec, plan
    result = plan(load_spec("llama2-7b", ["parallelism.zero_stage=2"]))
    result.memory["peak"], result.fits, result.time["gpu_hours"]

Importing llmspec never imports torch, deepspeed or sympy (the plan path is pure arithmetic).
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_spec", "plan", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import llmspec` stays instant and the CLI pays only for what a command uses.
    if name == "load_spec":
        from llmspec.spec.loading import load_spec

        return load_spec
    if name == "plan":
        from llmspec.planner.training import plan

        return plan
    raise AttributeError(name)
