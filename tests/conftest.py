"""The test environment (offline, one cache per session, the venv's DeepSpeed ops) and the fixtures test modules share.

Tiers: tests marked ``integration`` (pyproject.toml) run end to end; `make test-fast` leaves them out.
"""

import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tokenizers and token shards are cached by content; tests share one cache per session, never the user's.
os.environ.setdefault("LLMSPEC_CACHE", tempfile.mkdtemp(prefix="llmspec-test-cache-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DeepSpeed JIT-builds its CPU ops (shm comm, CPU Adam) on first use, 30-60 s each: keep them with the venv.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(_REPO, ".venv", "torch-extensions"))
# ... and with one ninja: the venv's, as `llmspec run` puts it first for DeepSpeed's ranks (llmspec/runner.py).
# Another ninja writes another log format; each discards the other's log and rebuilds every op (a minute each).
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
# Under pytest-xdist (`make test`: 2 workers on 2 cores) each worker computes on one thread: two workers of two
# OpenMP threads each oversubscribe the cores, and spinning threads then slow every step many times over.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    """The tiny base (helpers.TINY_HF) imported with `import-hf`, once per test process; tests only read it."""
    from helpers import TINY_HF

    from llmspec.interop.hf import import_hf

    out = tmp_path_factory.mktemp("base") / "tiny"
    import_hf(TINY_HF, out)
    return out


# Hypothesis draws the same examples on every run (a suite that passes here passes in CI); explore new ones with
# HYPOTHESIS_PROFILE=explore (random draws, more examples per test).
from hypothesis import settings  # noqa: E402

settings.register_profile("suite", derandomize=True)
settings.register_profile("explore", max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))
