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


def killed_and_resumed(spec, tmp_path) -> list[dict]:
    """Run ``spec`` whole, and again killed (SIGKILL) right after its first checkpoint, then ``--resume``d; assert
    the two metrics.jsonl agree in every logged number but the timings; return the whole run's records."""
    import signal
    import time

    from llmspec.spec.loading import dump_spec
    from llmspec.train.checkpoint import list_checkpoints
    from llmspec.train.metrics import read_metrics
    from tests.test_run import _cli, losses

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(dump_spec(spec))
    whole = _cli("run", str(spec_file), "--out", str(tmp_path / "whole"), cwd=tmp_path)
    assert whole.wait(timeout=600) == 0, whole.stdout.read()
    killed = _cli("run", str(spec_file), "--out", str(tmp_path / "killed"), cwd=tmp_path)
    deadline = time.time() + 300
    while not list_checkpoints(tmp_path / "killed" / "checkpoints") and time.time() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert len(losses(tmp_path / "killed")) < len(losses(tmp_path / "whole")), "killed too late"
    resumed = _cli("run", str(spec_file), "--out", str(tmp_path / "killed"), "--resume", cwd=tmp_path)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0 and "resumed from" in output, output

    def records(run_dir):
        return [{k: v for k, v in r.items() if k not in ("tokens_per_second", "mfu", "phase_seconds")}
                for r in read_metrics(run_dir / "metrics.jsonl")]

    assert records(tmp_path / "killed") == records(tmp_path / "whole")
    return records(tmp_path / "whole")
