"""``llmspec size --explain``: why the best layout beats the runner-up, term by term of the time model.

Both layouts are planned in full (the search scores only totals); the run's wall-clock is each time term per step
times the steps, so the difference of each term says what the best layout gains or pays, and the largest one is the
reason. Under the cost objective the GPU count and price enter as well: the cost ratio is given beside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmspec.planner.layout_search import Layout, SizeResult, objective_key, with_layout
from llmspec.planner.training import plan
from llmspec.spec.schema import Spec

# The plan's time rows that add up to a step (training.Plan.time), with the words a reader sees.
TERMS = {"compute_seconds": "compute", "imbalance_seconds": "slowest stage", "bubble_seconds": "pipeline bubble",
         "dp_exposed_seconds": "data-parallel comm", "optimizer_seconds": "optimizer step",
         "tp_seconds": "tensor-parallel comm",
         "pp_seconds": "pipeline comm", "offload_seconds": "optimizer offload", "ep_seconds": "expert all-to-all",
         "cp_seconds": "context-parallel comm"}


@dataclass
class Explanation:
    best: Layout
    runner_up: Layout | None  # None: the frontier has one layout
    objective: str
    days: dict[str, tuple[float, float]]  # term -> (best's, runner-up's) days of the run

    @property
    def deciding(self) -> str | None:
        """The term whose difference favours the best layout most."""
        if not self.days:
            return None
        return min(self.days, key=lambda term: self.days[term][0] - self.days[term][1])

    def to_json(self) -> dict[str, Any]:
        return {"objective": self.objective, "best": self.best.to_json(),
                "runner_up": self.runner_up.to_json() if self.runner_up else None,
                "deciding": TERMS[self.deciding] if self.deciding else None,
                "days": {TERMS[k]: {"best": b, "runner_up": r} for k, (b, r) in self.days.items()}}


def explain(spec: Spec, result: SizeResult) -> Explanation | None:
    """The best layout against the next one on the frontier by the same objective (None: nothing feasible)."""
    if result.best is None:
        return None
    ranked = sorted(result.frontier, key=objective_key(result.objective))
    runner_up = next((x for x in ranked if x is not result.best), None)
    if runner_up is None:
        return Explanation(result.best, None, result.objective, {})
    best_time, other_time = (plan(with_layout(spec, x), alternatives=False).time for x in (result.best, runner_up))
    days = {term: (best_time[term] * best_time["steps"] / 86400, other_time[term] * other_time["steps"] / 86400)
            for term in TERMS if best_time[term] or other_time[term]}
    return Explanation(result.best, runner_up, result.objective, days)
