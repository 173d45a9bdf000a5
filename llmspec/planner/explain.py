"""``llmspec explain``: each formula as written (sympy, pretty-printed), expanded to inputs, and its value."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from llmspec.errors import LLMSpecError
from llmspec.planner import rl_phases
from llmspec.planner.formula_text import FORMULAS
from llmspec.planner.inputs import RL_FORMULAS, RL_TOTALS, TRAINING_FORMULAS
from llmspec.planner.numeric import ARGUMENTS
from llmspec.planner.training import Plan

# A composite quantity pretty-printed runs to pages (memory_peak expanded to its inputs: 1,119 lines of 80-column
# fragments, mfu 13,751): above PRETTY_LINES a formula is written linearly instead (sympy's one-line form, which
# the terminal wraps: memory_peak's is 11,407 characters, some 150 lines), and an expansion longer than
# READABLE_CHARS even so (mfu's is 55,403) is left to --json, the terminal naming its parts to explain one by one.
PRETTY_LINES = 24
READABLE_CHARS = 16_000


@dataclass
class Explanation:
    name: str
    doc: str
    unit: str
    group: str
    source: str
    formula: str  # pretty (linear when long), in terms of inputs and earlier formulas
    expanded: str  # pretty (linear when long), in terms of inputs only
    inputs: dict[str, float]
    value: float
    parts: list[str] = field(default_factory=list)  # the earlier formulas it is written in (each explainable)

    @property
    def expansion_readable(self) -> bool:
        """Whether the expansion is short enough to read on a terminal (else: explain its parts one by one)."""
        return len(self.expanded) <= READABLE_CHARS


def explain(plan: Plan, quantity: str | None = None) -> list[Explanation]:
    """The training plan's formulas (inference and sizing ones have inputs a training plan does not hold). An RL
    plan (PPO, GRPO) explains its policy's training step by the training formulas, then the RL step's own: a
    quantity the step reports in place of the training step's (``mfu``, ``memory_peak``, …) is the step's
    (``rl_mfu``)."""
    rl = rl_phases.POLICY_KEY in plan.env
    allowed = TRAINING_FORMULAS | RL_FORMULAS if rl else TRAINING_FORMULAS
    if quantity is None:
        names = [n for n in FORMULAS if n in allowed]
    else:
        name = _resolve(quantity)
        names = [RL_TOTALS.get(name, name) if rl else name]
    if names[0] not in allowed:
        group = FORMULAS[names[0]][2]
        command = "plan SPEC --inference" if group == "Inference" else "size --compute FLOPS"
        raise LLMSpecError(f"{names[0]} belongs to the {group!r} formulas, not to a training "
                           f"plan: `llmspec {command}` gives its value (docs/formulas.md its formula)")
    # an RL plan's env holds the step's totals under the training names; each formula reads the policy's
    env = {**plan.env, **plan.env[rl_phases.POLICY_KEY]} if rl else plan.env
    out = []
    for name in names:
        doc, unit, group, source, formula, expanded = FORMULAS[name]
        if name in RL_TOTALS and rl:
            doc += f" (the policy's training step; the RL step's is {RL_TOTALS[name]})"
        elif rl and name not in RL_FORMULAS:
            doc += " (the policy's training step)"
        formula = formula if _fits(formula) else f"{name} = {_linear(name, expand=False)}"
        if quantity:
            expanded = expanded if _fits(expanded) else _linear(name, expand=True)
        out.append(Explanation(name, doc, unit, group, source, formula, expanded if quantity else "",
                               {arg: float(env[arg]) for arg in ARGUMENTS[name]}, float(env[name]),
                               [arg for arg in ARGUMENTS[name] if arg in FORMULAS]))
    return out


def _fits(pretty: str) -> bool:
    return pretty.count("\n") < PRETTY_LINES


def _linear(name: str, expand: bool) -> str:
    """The formula on one line (sympy's string form; the symbols print as the planner names them). Imports sympy,
    which the pre-rendered pretty forms spare the short formulas."""
    import sympy

    from llmspec.planner.formulas import FORMULAS as SYMBOLIC
    from llmspec.planner.formulas import expanded

    return sympy.sstr(expanded(name) if expand else SYMBOLIC[name].expr)


def _resolve(quantity: str) -> str:
    if quantity in FORMULAS:
        return quantity
    matches = [name for name in FORMULAS if quantity in name]
    if len(matches) == 1:
        return matches[0]
    close = difflib.get_close_matches(quantity, FORMULAS, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close or matches[:3])}?" if (close or matches) else "see `llmspec explain SPEC`"
    raise LLMSpecError(f"unknown quantity '{quantity}'; {hint}")
