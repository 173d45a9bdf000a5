"""Import a build's generated Python files as modules (for measuring, testing and training): ``model.py``, and the
files beside it that hold what is not the model (``model_source.TEMPLATES``): ``objectives.py``, the method's loss
functions, and ``pipeline.py``, the model's layers for DeepSpeed's pipeline engine.

The link from a model to its losses is explicit: ``load_model_module`` records each model module it imports, and
``objectives_module`` / ``pipeline_module`` import the file beside that model.py once, with its ``from model import``
bound to that model module (as Python would bind it in the build directory).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from llmspec.compile.model_source import TEMPLATES, generated_sources
from llmspec.files import write_atomic
from llmspec.spec.schema import Spec

# The model modules imported so far, by module name (the class of every compiled model names its module).
_MODELS: dict[str, ModuleType] = {}
# The files imported beside them: (model module name, file name) → the module, or None where the build has no such file.
_BESIDE: dict[tuple[str, str], ModuleType | None] = {}


def _import(name: str, path: Path) -> ModuleType:
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    module_spec.loader.exec_module(module)
    return module


def load_model_module(path: str | Path) -> ModuleType:
    """Import the model.py at ``path`` under a name unique to its build's contents (two builds never collide, even
    when their model.py are the same and their objectives differ)."""
    path = Path(path)
    digest = hashlib.sha256(path.read_bytes())
    for file in TEMPLATES:
        beside = path.parent / file
        if file != "model.py" and beside.is_file():
            digest.update(file.encode() + beside.read_bytes())
    name = f"llmspec_model_{digest.hexdigest()[:16]}"
    if name not in _MODELS:
        _MODELS[name] = sys.modules.get(name) or _import(name, path)
    return _MODELS[name]


def _beside(model: ModuleType, file: str) -> ModuleType | None:
    """The generated ``file`` beside a loaded model.py, imported once (None if the build has none)."""
    key = (model.__name__, file)
    if key in _BESIDE:
        return _BESIDE[key]
    path, module = Path(model.__file__).parent / file, None
    if path.is_file():
        previous = sys.modules.get("model")
        sys.modules["model"] = model  # the file's `from model import ...`: this model.py
        try:
            module = _import(f"{model.__name__}_{path.stem}", path)
        finally:
            if previous is None:
                del sys.modules["model"]
            else:
                sys.modules["model"] = previous
    _BESIDE[key] = module
    return module


def objectives_module(model: ModuleType) -> ModuleType | None:
    """The objectives.py beside a loaded model.py: its method's loss functions. None for a method that trains on
    model.py's own cross-entropy (pretraining, sft: the build has no objectives.py)."""
    return _beside(model, "objectives.py")


def pipeline_module(model: ModuleType) -> ModuleType | None:
    """The pipeline.py beside a loaded model.py: its layers for DeepSpeed's pipeline engine (``pipeline_layers``,
    ``pipeline_loss``). None unless the spec has ``parallelism.pipeline > 1``."""
    return _beside(model, "pipeline.py")


def model_module_of(model: object) -> ModuleType | None:
    """The loaded model.py a model object was built from (by its class); None for a module this loader did not
    import (DeepSpeed's PipelineModule, a wrapper)."""
    return _MODELS.get(type(model).__module__)


def model_module(spec: Spec) -> ModuleType:
    """The compiled model of a spec: its generated files written to a private cache folder (as ``build`` lays them
    out) and model.py imported."""
    sources = generated_sources(spec)
    digest = hashlib.sha256(json.dumps(sources, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "llmspec-models" / digest
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "model.py").exists():  # model.py last: once it exists, the folder is whole
        for file, text in sorted(sources.items(), key=lambda item: item[0] == "model.py"):
            write_atomic(folder / file, text)
    return load_model_module(folder / "model.py")
