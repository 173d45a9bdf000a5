"""Formulas pretty-printed as the planner names their inputs (sympy; used by codegen and docs, not by `plan`)."""

from __future__ import annotations

import sympy as sp
from sympy.printing.pretty.pretty import PrettyPrinter
from sympy.printing.pretty.stringpict import prettyForm


class _NamesAsWritten(PrettyPrinter):
    """sympy's pretty printer, but symbols print as the names the planner uses: `layernorm`, `ck_none`, `L_here`
    (sympy would turn a trailing `norm` into ‖·‖ and underscores and digits into subscripts)."""

    def _print_Symbol(self, e, bold_name=False):  # noqa: N802 (sympy's naming)
        return prettyForm(e.name)


def pretty(expr: sp.Expr) -> str:
    """Unicode, wrapped at 80 columns (the same text on every terminal, so it can be generated once)."""
    return _NamesAsWritten({"use_unicode": True, "num_columns": 80}).doprint(expr)
