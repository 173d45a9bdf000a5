"""Generated files stay in sync with their sources: the numeric module with the sympy formulas, docs with code."""

from __future__ import annotations

import math
import random

import sympy as sp

from llmspec.cli import docs
from llmspec.planner import codegen, numeric
from llmspec.planner.formulas import FORMULAS, arguments


def test_numeric_module_matches_formulas():
    assert codegen.TARGET.read_text(encoding="utf-8") == codegen.render(), "run `python -m llmspec.planner.codegen`"


def test_explain_text_matches_formulas():
    assert codegen.TEXT_TARGET.read_text(encoding="utf-8") == codegen.render_text(), "run `make docs`"


def test_numeric_functions_equal_sympy_at_random_points():
    rng = random.Random(0)
    for name, formula in FORMULAS.items():
        args = arguments(name)
        for _ in range(3):
            values = {a: rng.randint(1, 64) for a in args}
            exact = formula.expr.subs({sp.Symbol(a, **_assumptions(formula.expr, a)): v for a, v in values.items()})
            got = getattr(numeric, name)(*[values[a] for a in args])
            assert math.isclose(float(exact), float(got), rel_tol=1e-12), name


def _assumptions(expr, name):
    for sym in expr.free_symbols:
        if sym.name == name:
            return sym.assumptions0
    return {}


def test_docs_are_generated_from_code():
    regenerate = "make docs"
    assert (docs.DOCS / "formulas.md").read_text(encoding="utf-8") == docs.render_formulas(), regenerate
    assert (docs.DOCS / "spec.md").read_text(encoding="utf-8") == docs.render_spec(), regenerate


def test_planner_lookups_use_generated_names():
    """Every env["name"] the planner reads is an input or a formula result of the generated module (numeric.Name),
    so renaming a formula fails here instead of with a KeyError at plan time."""
    import ast
    from pathlib import Path

    import llmspec.planner as planner_package

    env_like = {"env", "e", "base", "alt", "inputs", "head", "scores"}
    unknown = []
    for path in Path(planner_package.__file__).parent.glob("*.py"):
        if path.name in ("numeric.py", "codegen.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in env_like
                    and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)
                    and node.slice.value not in numeric.NAMES):
                unknown.append(f"{path.name}:{node.lineno}: {node.value.id}[{node.slice.value!r}]")
    assert unknown == []


def test_planner_supplies_exactly_the_training_inputs():
    from llmspec.planner.training import plan
    from llmspec.spec import load_spec

    env = plan(load_spec("llama2-7b"), alternatives=False).env
    supplied = set(env) - set(numeric.ARGUMENTS)
    needed = {arg for name, args in numeric.ARGUMENTS.items() if name in env for arg in args} - set(numeric.ARGUMENTS)
    assert supplied <= numeric.INPUTS
    assert needed <= supplied
