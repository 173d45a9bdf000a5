"""Shared test helpers: load specs with overrides, plan them."""

from __future__ import annotations

from llmspec.planner.training import Plan, plan
from llmspec.spec.loading import load_spec, parse_spec

MINIMAL = """
name: t
model: {vocab_size: 1000, d_model: 64, n_layers: 2, n_heads: 4, max_seq_len: 128}
training: {seq_len: 128, global_batch_size: 8, max_steps: 10}
"""


def planned(name: str, *sets: str, alternatives: bool = False) -> Plan:
    return plan(load_spec(name, list(sets)), alternatives=alternatives)


def minimal(*sets: str):
    return parse_spec(MINIMAL, sets=list(sets))
