"""From a spec to numbers: the formulas (sympy) and their generated numeric form, byte regimes, the training and
inference plans, the layout search, compute-optimal sizing, limits and explanations. Imports neither torch nor
sympy on the plan path."""

from llmspec.planner.training import Plan, plan

__all__ = ["Plan", "plan"]
