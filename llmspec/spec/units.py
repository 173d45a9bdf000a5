"""Parsing and printing of the quantities specs and reports are made of (counts, bytes, FLOPs, durations)."""

from __future__ import annotations

import math
import re

_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12, "P": 10**15}
# The same strings as a JSON Schema pattern (ECMA regex: no flags; underscores allowed as digit separators).
COUNT_PATTERN = r"^\s*[0-9_]*\.?[0-9_]+([eE][+-]?[0-9]+)?\s*[KMBGTPkmbgtp]?\s*$"
_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMBGTP]?)\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h|d|w)?\s*$", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_count(value: int | float | str) -> int:
    """Parse a token/FLOP count such as ``300B``, ``2T``, ``1.5e12`` or ``4_000_000`` into an int."""
    if isinstance(value, bool):
        raise ValueError(f"expected a count like 300B or 2T, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = _COUNT.match(str(value).replace("_", ""))
        if not match:
            raise ValueError(f"expected a count like 300B, 2T or 1.5e12, got {value!r}")
        number = float(match.group(1)) * _SUFFIXES[match.group(2).upper()]
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"expected a positive count, got {value!r}")
    return int(round(number))


def parse_duration(value: int | float | str) -> float:
    """Parse ``30d``, ``12h``, ``90m``, ``3600`` (seconds) into seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"expected a duration like 30d, 12h or 90m, got {value!r}")
    return float(match.group(1)) * _SECONDS[(match.group(2) or "s").lower()]


def fmt_count(n: float) -> str:
    """124439808 -> '124.4M'."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.{_digits(n / scale)}f}{suffix}"
    return f"{n:g}"


def fmt_hours(hours: float) -> str:
    """GPU-hours: whole hours when there are many, two significant digits when there are few (not '0')."""
    if hours >= 100 or hours == 0:
        return f"{hours:,.0f}"
    return f"{hours:.2g}"


def fmt_bytes(n: float) -> str:
    """Binary units, as GPU memory is sold and as nvidia-smi shows it: 85899345920 -> '80.00 GiB'."""
    for scale, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n:.0f} B"


def fmt_flops(n: float) -> str:
    for scale, suffix in ((1e24, "YFLOP"), (1e21, "ZFLOP"), (1e18, "EFLOP"), (1e15, "PFLOP"), (1e12, "TFLOP"),
                          (1e9, "GFLOP"), (1e6, "MFLOP")):
        if abs(n) >= scale:
            return f"{n / scale:.{_digits(n / scale)}f} {suffix}"
    return f"{n:.0f} FLOP"


def fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "∞"
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.1f} ms"


def fmt_money(dollars: float) -> str:
    if dollars >= 1e6:
        return f"${dollars / 1e6:.2f}M"
    if dollars >= 1e3:
        return f"${dollars / 1e3:.1f}K"
    return f"${dollars:.2f}"


def _digits(x: float) -> int:
    return 2 if abs(x) < 10 else 1 if abs(x) < 100 else 0
