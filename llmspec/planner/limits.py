"""``llmspec plan SPEC --max FIELD``: the largest value of a field for which the plan still fits.

Peak memory grows monotonically with micro-batch size, sequence length and depth, so a search over the valid
values finds the limit: the divisors of the per-replica batch for ``micro_batch_size``, a bisection up to
``model.max_seq_len`` for ``seq_len``, doubling then bisection for ``n_layers``. A value is feasible when the spec
with it validates (divisibility rules included) and its plan fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmspec.errors import LLMSpecError, SpecError
from llmspec.planner.training import plan
from llmspec.spec.loading import load_spec

FIELDS = {"micro_batch_size": "training.micro_batch_size", "seq_len": "training.seq_len",
          "n_layers": "model.n_layers"}


@dataclass
class Limit:
    field: str
    value: int | None  # None: not even the smallest value fits
    current: int
    peak: int | None  # planned peak at the limit
    usable: int
    bound: str  # what stops it: "memory", or the spec field that caps the search


def max_fitting(source: str, sets: list[str], field: str) -> Limit:
    if field not in FIELDS:
        raise LLMSpecError(f"--max {field}: expected one of {', '.join(FIELDS)}")
    path = FIELDS[field]
    spec = load_spec(source, sets)
    section, name = path.split(".")
    current = getattr(getattr(spec, section), name)

    def peak(value: int) -> int | None:
        try:
            candidate = load_spec(source, [*sets, f"{path}={value}"])
        except SpecError:
            return None
        result = plan(candidate, alternatives=False)
        return result.memory["peak"] if result.fits else None

    if field == "micro_batch_size":
        per_replica = spec.training.global_batch_size // spec.parallelism.data_parallel
        candidates = [d for d in range(1, per_replica + 1) if per_replica % d == 0]
        best = None
        for value in candidates:  # ascending; stop at the first that does not fit (monotone)
            if peak(value) is None:
                break
            best = value
        capped = best == candidates[-1]
        bound = f"global_batch_size / data_parallel = {per_replica}" if capped else "memory"
    else:
        upper = spec.model.max_seq_len if field == "seq_len" else None
        best = _bisect(peak, 1, upper)
        bound = "model.max_seq_len" if upper is not None and best == upper else "memory"
    usable = plan(spec, alternatives=False).usable_memory
    return Limit(field, best, current, peak(best) if best else None, usable, bound)


def _bisect(peak, low: int, upper: int | None) -> int | None:
    if peak(low) is None:
        return None
    if upper is None:  # double until it stops fitting (depth: pipeline and memory bound it)
        upper = low
        while peak(upper * 2) is not None and upper < 1 << 20:
            upper *= 2
        if peak(upper * 2) is None:
            upper = upper * 2
    elif peak(upper) is not None:
        return upper
    while upper - low > 1:  # invariant: low fits, upper does not
        middle = (low + upper) // 2
        if peak(middle) is not None:
            low = middle
        else:
            upper = middle
    return low
