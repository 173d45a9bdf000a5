"""The progress of encoding a corpus: bytes read, tokens per second, time left. On a terminal one line on stderr,
redrawn in place; elsewhere (a log file, nohup) a line through ``announce`` every ``interval`` seconds."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from llmspec.spec.units import fmt_bytes


class ProgressLine:
    def __init__(self, announce: Callable[[str], None], interval: float = 15.0, stream=None):
        self.announce, self.stream = announce, stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = 0.25 if self.live else interval
        self.started = self.last = time.perf_counter()
        self.first_tokens: int | None = None
        self.drawn = False

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc) -> None:
        if self.drawn and self.live:
            self.stream.write("\n")
            self.stream.flush()

    def __call__(self, done: int, total: int, tokens: int) -> None:
        now = time.perf_counter()
        if self.first_tokens is None:  # tokens of shards an interrupted preparation had written
            self.first_tokens, self.started = tokens, now
            return
        if now - self.last < self.interval:
            return
        self.last = now
        self.drawn = True
        line = describe(done, total, tokens - self.first_tokens, now - self.started)
        if self.live:
            self.stream.write(f"\r{line}\x1b[K")
            self.stream.flush()
        else:
            self.announce(line)


def describe(done: int, total: int, tokens: int, seconds: float) -> str:
    """'data: 1.2 GiB / 3.0 GiB (40%), 950k tokens/s, 2m10s left'."""
    rate = tokens / seconds if seconds > 0 else 0.0
    share = done / total if total else 1.0
    left = seconds * (1 - share) / share if share > 0 else float("inf")
    when = "?" if left == float("inf") else f"{int(left // 60)}m{int(left % 60):02d}s"
    return (f"data: {fmt_bytes(done)} / {fmt_bytes(total)} ({share:.0%}), {rate / 1e3:,.0f}k tokens/s, "
            f"{when} left")
