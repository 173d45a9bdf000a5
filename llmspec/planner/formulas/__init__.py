"""Every planner formula, written once in sympy.

``FORMULAS`` maps a name to an expression over input symbols and earlier formulas (referenced by name, so
``llmspec explain`` can print the compact form and the fully expanded one). ``llmspec.planner.codegen`` compiles
them into ``llmspec/planner/numeric.py``, plain Python the planner imports without sympy; a test keeps the two in sync.

Notation (the shared references'): b micro-batch, s sequence length, h d_model, a heads, k kv-heads, d_h head
dim, f d_ff, V vocab, L layers, t tensor, p pipeline, d data-parallel degree, m micro-batches per step.
Flags are 0/1 inputs. Sources are cited next to each group; activation terms are per saved tensor, as measured
on the compiled model with saved-tensor hooks (torch 2.13, SDPA flash path, composite RMSNorm).

One module per part of the plan, registered in this order (a formula refers only to earlier ones): ``symbols``
(inputs and their docs), ``model`` (parameters, FLOPs), ``memory``, ``time``, ``serving`` (inference, the RL
step, compute-optimal sizing).
"""

# each module registers its formulas when imported: in this order (docs/formulas.md's)
from llmspec.planner.formulas import symbols, model, memory, time, serving  # noqa: F401, I001
from llmspec.planner.formulas.registry import FORMULAS, RL_STEP, Formula, arguments, expanded
from llmspec.planner.formulas.symbols import INPUT_DOCS

__all__ = ["FORMULAS", "INPUT_DOCS", "RL_STEP", "Formula", "arguments", "expanded"]
