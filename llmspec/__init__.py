"""llmspec: one YAML spec for an LLM training job — exact plan, compiled model, DeepSpeed launch.

The Python API mirrors the CLI::

    from llmspec import load_spec, plan
    result = plan(load_spec("llama2-7b", ["parallelism.zero_stage=2"]))
    result.memory["peak"], result.fits, result.time["gpu_hours"]

Importing llmspec never imports torch, deepspeed or sympy (the plan path is pure arithmetic).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name → the module that defines it; imported on first use, so `import llmspec` stays instant
_API = {
    "load_spec": "llmspec.spec.loading",
    "plan": "llmspec.planner.training",
    "build": "llmspec.compile.build",
    "measure": "llmspec.compile.measure",
    "search": "llmspec.planner.layout_search",
    "import_hf": "llmspec.interop.hf",
    "export_hf": "llmspec.interop.hf",
    "run": "llmspec.runner",
    "generate": "llmspec.train.generate",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'llmspec' has no attribute {name!r}")
