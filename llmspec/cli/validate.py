"""``llmspec validate``: check a spec, one line per problem."""

from __future__ import annotations

import typer

from llmspec.cli.common import EXIT_DOES_NOT_FIT, SetOpt, SpecArg, load


def validate(spec: SpecArg, set_: SetOpt = None) -> None:
    """Check a spec; print every problem with its field path and YAML line (exit 2), or a one-line summary
    (exit 3 when the spec is valid but does not fit its device)."""
    from llmspec.errors import SpecError
    from llmspec.planner.training import plan
    from llmspec.spec.loading import missing_files
    from llmspec.spec.units import fmt_bytes

    loaded = load(spec, set_)
    missing = missing_files(loaded)
    if missing:
        raise SpecError(missing)
    m = loaded.model
    print(f"ok: {loaded.name} — {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads "
          f"({m.n_kv_heads} kv), {loaded.cluster.gpus} × {loaded.cluster.device.name}")
    planned = plan(loaded, alternatives=False)
    if not planned.fits:
        print(f"does not fit: {planned.host_misfit} (see `llmspec plan`)" if planned.host_misfit else
              f"does not fit: planned peak {fmt_bytes(planned.memory['peak'])} per GPU of "
              f"{fmt_bytes(planned.usable_memory)} usable (see `llmspec plan`)")
        raise typer.Exit(EXIT_DOES_NOT_FIT)
