"""``llmspec explain``: each formula as written (sympy, pretty-printed), expanded to inputs, and its value."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from llmspec.errors import LLMSpecError
from llmspec.planner import rl_phases
from llmspec.planner.formula_text import FORMULAS
from llmspec.planner.inputs import RL_FORMULAS, RL_TOTALS, TRAINING_FORMULAS
from llmspec.planner.numeric import ARGUMENTS
from llmspec.planner.training import Plan


@dataclass
class Explanation:
    name: str
    doc: str
    unit: str
    group: str
    source: str
    formula: str  # pretty, in terms of inputs and earlier formulas
    expanded: str  # pretty, in terms of inputs only
    inputs: dict[str, float]
    value: float


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
        out.append(Explanation(name, doc, unit, group, source, formula, expanded if quantity else "",
                               {arg: float(env[arg]) for arg in ARGUMENTS[name]}, float(env[name])))
    return out


def _resolve(quantity: str) -> str:
    if quantity in FORMULAS:
        return quantity
    matches = [name for name in FORMULAS if quantity in name]
    if len(matches) == 1:
        return matches[0]
    close = difflib.get_close_matches(quantity, FORMULAS, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close or matches[:3])}?" if (close or matches) else "see `llmspec explain SPEC`"
    raise LLMSpecError(f"unknown quantity '{quantity}'; {hint}")
