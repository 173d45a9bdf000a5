"""Byte regimes: how many bytes each parameter costs, and at which ZeRO stage each piece is sharded.

Tools disagree on bytes per parameter (16, 18, 20); llmspec names the regime instead of hiding it. The default is
DeepSpeed's, the one its own estimators assume, so ``memory.model_states`` equals
``estimate_zero2_model_states_mem_needs`` / ``estimate_zero3_model_states_mem_needs`` to the byte.
Pure Python (no sympy): the planner uses it on the fast path, docs render it.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

SHARDED_NEVER = 9  # a stage above 3: never sharded
KINDS = ("weights", "gradients", "optimizer")


@dataclass(frozen=True)
class Piece:
    name: str  # what it is
    kind: str  # weights | gradients | optimizer
    bytes: int  # per parameter
    sharded_from: int  # ZeRO stage from which it is divided by the data-parallel degree
    on_gpu_at_stage3: bool = True  # False: this regime keeps no persistent copy under ZeRO-3


@dataclass(frozen=True)
class Regime:
    name: str
    summary: str
    mixed: tuple[Piece, ...]  # bf16/fp16 training; the optimizer's per-state bytes are added at run time
    master_bytes: int = 4  # 0: no fp32 master copy
    state_bytes: int = 4  # per optimizer state element


REGIMES: dict[str, Regime] = {
    "deepspeed": Regime(
        "deepspeed",
        "20 B/param: 16-bit weights 2 + 16-bit grads 2 + fp32 grads 4 + fp32 master 4 + Adam 8 (DeepSpeed's "
        "estimators; under ZeRO-3 the 16-bit grads live only for the module being reduced: the 4·P_largest term)",
        (
            Piece("16-bit weights", "weights", 2, 3),
            Piece("16-bit gradients", "gradients", 2, 2, on_gpu_at_stage3=False),
            Piece("fp32 gradients", "gradients", 4, 1),
        ),
    ),
    "zero_paper": Regime(
        "zero_paper",
        "16 B/param: 16-bit weights 2 + 16-bit grads 2 + fp32 master 4 + Adam 8 (ZeRO paper, Transformer Math 101)",
        (Piece("16-bit weights", "weights", 2, 3), Piece("16-bit gradients", "gradients", 2, 2)),
    ),
    "megatron": Regime(
        "megatron",
        "18 B/param: 16-bit weights 2 + fp32 main grads 4 + fp32 master 4 + Adam 8 (Megatron; with ZeRO-1 this is "
        "its distributed optimizer, 6 + 12/d)",
        (Piece("16-bit weights", "weights", 2, 3), Piece("fp32 gradients", "gradients", 4, 2)),
    ),
    "pure16": Regime(
        "pure16",
        "8 B/param: 16-bit weights 2 + 16-bit grads 2 + 16-bit Adam 4, no fp32 master (litgpt's bf16-true, "
        "torchtune's default): the optimizer updates the 16-bit weights in place",
        (Piece("16-bit weights", "weights", 2, 3), Piece("16-bit gradients", "gradients", 2, 2)),
        master_bytes=0, state_bytes=2,
    ),
}

FP32_PIECES = (Piece("fp32 weights", "weights", 4, 3), Piece("fp32 gradients", "gradients", 4, 2))


def pieces(regime: str, precision: str, n_states: int) -> tuple[Piece, ...]:
    """Every per-parameter piece of the model states, optimizer included."""
    if precision == "fp32":
        return (*FP32_PIECES, Piece(f"optimizer states ({n_states} × fp32)", "optimizer", 4 * n_states, 1))
    chosen = REGIMES[regime]
    width = "fp32" if chosen.state_bytes == 4 else "16-bit"
    states = Piece(f"optimizer states ({n_states} × {width})", "optimizer", chosen.state_bytes * n_states, 1)
    master = (Piece("fp32 master weights", "optimizer", chosen.master_bytes, 1),) if chosen.master_bytes else ()
    return (*chosen.mixed, *master, states)


def bytes_per_param(regime: str, precision: str, n_states: int) -> dict[str, float]:
    """Unsharded bytes per parameter by kind: {'weights': 2, 'gradients': 6, 'optimizer': 12} for DeepSpeed."""
    unsharded = per_gpu_bytes_per_param(regime, precision, n_states, 0, 1, False, False)
    return {kind: float(value) for kind, value in unsharded.items()}


def split_bytes_per_param(regime: str, precision: str, n_states: int, stage: int, offload_optimizer: bool,
                          offload_params: bool) -> dict[str, tuple[int, int]]:
    """Bytes per (model-shard) parameter on one GPU by kind, as (unsharded, sharded): the GPU holds
    ``unsharded + sharded / dp``. The layout search evaluates this for whole columns of dp at once.

    Optimizer offload moves the optimizer and every gradient copy to the host (DeepSpeed keeps only the 16-bit
    weights on the GPU: its estimator's ``2Ψ``); parameter offload moves the weights too.
    """
    out = {kind: [0, 0] for kind in KINDS}
    for piece in pieces(regime, precision, n_states):
        if stage == 3 and not piece.on_gpu_at_stage3:
            continue
        if piece.kind != "weights" and offload_optimizer:
            continue
        if piece.kind == "weights" and offload_params:
            continue
        out[piece.kind][1 if stage >= piece.sharded_from else 0] += piece.bytes
    return {kind: (unsharded, sharded) for kind, (unsharded, sharded) in out.items()}


def per_gpu_bytes_per_param(regime: str, precision: str, n_states: int, stage: int, dp: int,
                            offload_optimizer: bool, offload_params: bool) -> dict[str, Fraction]:
    """Bytes per (model-shard) parameter held on one GPU, by kind, after ZeRO sharding over ``dp`` and offload."""
    split = split_bytes_per_param(regime, precision, n_states, stage, offload_optimizer, offload_params)
    return {kind: unsharded + Fraction(sharded, dp) for kind, (unsharded, sharded) in split.items()}
