"""Import a generated ``model.py`` as a module (for measuring, testing and training)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from llmspec.compile.model_source import model_source
from llmspec.files import write_atomic
from llmspec.spec.schema import Spec


def load_model_module(path: str | Path) -> ModuleType:
    """Import the file at ``path`` under a name unique to its contents (two builds never collide)."""
    path = Path(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    name = f"llmspec_model_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    module_spec.loader.exec_module(module)
    return module


def model_module(spec: Spec) -> ModuleType:
    """The compiled model of a spec, written to a private cache file and imported."""
    source = model_source(spec)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / "llmspec-models"
    cache.mkdir(exist_ok=True)
    path = cache / f"model_{digest}.py"
    if not path.exists():
        write_atomic(path, source)
    return load_model_module(path)
