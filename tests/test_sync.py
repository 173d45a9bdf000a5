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
