"""Compile ``llmspec.formulas`` (sympy) into ``llmspec/_numeric.py`` (plain Python, no sympy at import).

Run ``python -m llmspec.codegen`` after editing a formula; ``tests/test_codegen.py`` fails while the two differ.
The generated functions accept Python numbers (ints and Fractions stay exact) or numpy arrays (vectorised search).
"""

from __future__ import annotations

from pathlib import Path

from sympy.printing.pycode import PythonCodePrinter

from llmspec.formulas import FORMULAS, arguments

TARGET = Path(__file__).with_name("_numeric.py")

HEADER = '''"""Numeric planner formulas, GENERATED from llmspec/formulas.py by `python -m llmspec.codegen`: do not edit."""

import math


def _max(*xs):
    try:
        return max(xs)
    except (TypeError, ValueError):  # numpy arrays
        import numpy

        return numpy.maximum.reduce(numpy.broadcast_arrays(*xs))


def _min(*xs):
    try:
        return min(xs)
    except (TypeError, ValueError):
        import numpy

        return numpy.minimum.reduce(numpy.broadcast_arrays(*xs))


def _floor(x):
    try:
        return math.floor(x)
    except TypeError:
        import numpy

        return numpy.floor(x)
'''


class _Printer(PythonCodePrinter):
    def _print_Max(self, expr):  # noqa: N802 (sympy's naming)
        return f"_max({', '.join(self._print(arg) for arg in expr.args)})"

    def _print_Min(self, expr):  # noqa: N802
        return f"_min({', '.join(self._print(arg) for arg in expr.args)})"

    def _print_floor(self, expr):
        return f"_floor({self._print(expr.args[0])})"


def render() -> str:
    printer = _Printer({"fully_qualified_modules": False})
    parts = [HEADER]
    for name, formula in FORMULAS.items():
        args = ", ".join(arguments(name))
        parts.append(f'\n\ndef {name}({args}):\n    """{formula.doc} [{formula.unit}]"""\n'
                     f"    return {printer.doprint(formula.expr)}\n")
    order = "".join(f"    {name!r}: {tuple(arguments(name))!r},\n" for name in FORMULAS)
    parts.append("\n\n# Each formula's arguments, in evaluation order (inputs and earlier formulas).\n"
                 f"ARGUMENTS = {{\n{order}}}\n")
    groups = "".join(f"    {name!r}: {formula.group!r},\n" for name, formula in FORMULAS.items())
    parts.append(f"\n# The section of docs/formulas.md each formula belongs to.\nGROUPS = {{\n{groups}}}\n")
    parts.append('''

def evaluate(inputs, names=None):
    """Formulas in order (all, or just ``names``) from a dict of inputs; returns inputs and results together."""
    env = dict(inputs)
    scope = globals()
    for name, args in ARGUMENTS.items():
        if names is None or name in names:
            env[name] = scope[name](*[env[arg] for arg in args])
    return env
''')
    return "".join(parts)


def main() -> None:
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET} ({len(FORMULAS)} formulas)")


if __name__ == "__main__":
    main()
