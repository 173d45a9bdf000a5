"""The formula registry: each formula a name, a sympy expression, a doc, a unit and a group; helpers that
build expressions evaluated in the order written."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy as sp


@dataclass(frozen=True)
class Formula:
    name: str
    expr: sp.Expr
    doc: str
    unit: str
    group: str
    source: str = ""
    # compiled with its operations in the order written (sympy's canonical order otherwise): floating-point sums
    # and products round by their order, and the RL step's totals keep the order that pinned the plans
    ordered: bool = False

    @property
    def symbol(self) -> sp.Symbol:
        return sp.Symbol(self.name, positive=True)


FORMULAS: dict[str, Formula] = {}
# the RL step's totals: their formulas expand down to the models' own results, which are inputs
RL_STEP = "Post-training: RL step"
_GROUP = ""
_SOURCE = ""


def group(name: str, source: str = "") -> None:
    global _GROUP, _SOURCE
    _GROUP, _SOURCE = name, source


def define(name: str, expr: sp.Expr, doc: str, unit: str, ordered: bool = False) -> sp.Symbol:
    """Register a formula; returns the symbol later formulas use to refer to it. ``ordered``: ``expr`` is built
    unevaluated (``_add``, ``_mul``, ``_div``) and compiled in the order written."""
    assert name not in FORMULAS, name
    FORMULAS[name] = Formula(name, sp.sympify(expr), doc, unit, _GROUP, _SOURCE, ordered)
    return FORMULAS[name].symbol


def _f(name: str) -> sp.Symbol:
    """An earlier formula's symbol, by name."""
    return FORMULAS[name].symbol


def _add(*terms: sp.Expr) -> sp.Expr:
    """terms[0] + terms[1] + …, added left to right as written."""
    return sp.Add(*terms, evaluate=False)


def _mul(*factors: sp.Expr) -> sp.Expr:
    """factors[0] · factors[1] · …, multiplied left to right as written."""
    return sp.Mul(*factors, evaluate=False)


def _div(numerator: sp.Expr, denominator: sp.Expr) -> sp.Expr:
    return sp.Mul(numerator, sp.Pow(denominator, -1, evaluate=False), evaluate=False)




@functools.cache
def expanded(name: str) -> sp.Expr:
    """A formula with every formula it refers to substituted, down to input symbols (each expanded once: the time
    formulas share most of theirs). The RL step's formulas stop at the models' own results (the policy's, like the
    critic's, which are inputs), each of which ``llmspec explain`` expands on its own."""
    formula = FORMULAS[name]
    step = formula.group == RL_STEP

    def substituted(other: str) -> bool:
        return other in FORMULAS and (not step or FORMULAS[other].group == RL_STEP)

    return formula.expr.xreplace({sym: expanded(sym.name) for sym in formula.expr.free_symbols
                                  if substituted(sym.name)})


def arguments(name: str) -> list[str]:
    """The names a formula's numeric function takes (inputs and earlier formulas), sorted."""
    return sorted(sym.name for sym in FORMULAS[name].expr.free_symbols)
