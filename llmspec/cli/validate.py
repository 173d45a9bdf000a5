"""``llmspec validate``: check a spec, one line per problem."""

from __future__ import annotations

from llmspec.cli.common import SetOpt, SpecArg


def validate(spec: SpecArg, set_: SetOpt = None) -> None:
    """Check a spec; print every problem with its field path and YAML line (exit 2), or a one-line summary."""
    from llmspec.spec.loading import load_spec

    loaded = load_spec(spec, set_ or [])
    m = loaded.model
    print(f"ok: {loaded.name} — {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads "
          f"({m.n_kv_heads} kv), {loaded.cluster.gpus} × {loaded.cluster.device.name}")
