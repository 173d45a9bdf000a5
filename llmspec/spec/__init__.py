"""The spec: its schema (Pydantic), cross-field rules, YAML loading with lines and ``--set``, the GPU catalogue and
the units it is written in. Knows nothing of planning, compiling or training."""

from llmspec.spec.loading import dump_spec, load_spec, named_specs, parse_spec
from llmspec.spec.schema import Spec

__all__ = ["Spec", "dump_spec", "load_spec", "named_specs", "parse_spec"]
