"""A run you can watch (llmspec/train/loggers.py): training.loggers (TensorBoard, W&B, CSV) beside metrics.jsonl,
plain progress lines when the output is not a terminal, and a killed run's torn metrics.jsonl resumed."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
import types

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from llmspec.runner import run
from llmspec.spec.loading import load_spec
from llmspec.train import loggers
from llmspec.train.loggers import LoggerError, ProgressLines, RunLoggers, check_loggers, flatten
from llmspec.train.metrics import read_metrics

QUICK = ["training.max_steps=4", "training.log_interval=2", "training.eval_interval=2",
         "training.checkpoint_interval=2"]
WATCHED = [*QUICK, "training.loggers=[tensorboard, csv]"]
RL_RECORD = {"step": 3, "loss": 0.1, "lr": 1e-5, "rollout_reward": 0.5, "tokens_per_second": 100.0,
             "phase_seconds": {"generation": 0.5, "scoring": 0.1, "training": 0.2},
             "planned_phase_seconds": {"generation": 0.4, "scoring": 0.1, "training": 0.3}}


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """tiny for 4 steps (an eval and a checkpoint every 2) with TensorBoard and CSV; what it announced."""
    out = tmp_path_factory.mktemp("watched") / "r"
    said: list[str] = []
    run(load_spec("tiny", WATCHED), out, backend="torch", announce=said.append)
    return out, said


def scalars(log_dir) -> EventAccumulator:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return events


def test_tensorboard_shows_the_runs_step_and_eval_scalars(watched):
    out, said = watched
    records = read_metrics(out / "metrics.jsonl")
    events = scalars(out / "tensorboard")
    tags = events.Tags()["scalars"]
    for key in {k for r in records for k in r} - {"step"}:  # the same keys as metrics.jsonl
        assert key in tags, key
    for key in ("loss", "val_loss", "tokens_per_second", "planned_tokens_per_second", "planned_peak_memory"):
        logged = [(r["step"], r[key]) for r in records if key in r]
        assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars(key)] == logged
    assert "custom_scalars__config__" in events.Tags()["tensors"]  # the plan's figures beside the measured ones
    assert any("tensorboard --logdir" in line for line in said)


def test_csv_has_the_keys_and_rows_of_metrics_jsonl(watched):
    out, _ = watched
    records = read_metrics(out / "metrics.jsonl")
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert set(rows[0]) == {key for r in records for key in flatten(r)}
    assert len(rows) == len(records)
    for row, record in zip(rows, records, strict=True):
        assert {k: float(v) for k, v in row.items() if v} == {k: float(v) for k, v in record.items()}


def test_loss_png_is_drawn_at_each_evaluation(tmp_path):
    from llmspec.train.metrics import StepLog

    spec = load_spec("tiny", QUICK)
    log = StepLog(spec, tmp_path / "metrics.jsonl", "cpu", 0, False, spec.training.tokens_per_step,
                  announce=None)
    log.step(2, 5.0, 1e-4)
    assert not (tmp_path / "loss.png").exists()
    log.eval(2, 4.9)
    assert (tmp_path / "loss.png").stat().st_size > 0  # while the run goes on, not only at its end
    log.close()


def test_a_killed_runs_torn_metrics_line_is_dropped_on_resume(watched, tmp_path):
    """Killed after its step-2 checkpoint, in the middle of writing a line: --resume says so on one line and goes
    on; metrics.jsonl, metrics.csv and TensorBoard read as one run."""
    out = tmp_path / "r"
    shutil.copytree(watched[0], out)
    (out / "checkpoints" / "step-00000004.pt").unlink()
    whole = (out / "metrics.jsonl").read_text()
    (out / "metrics.jsonl").write_text(whole[: len(whole) - 30])  # the last line cut off
    said: list[str] = []
    run(load_spec("tiny", WATCHED), out, resume=True, backend="torch", announce=said.append)
    dropped = [line for line in said if "dropped its last line" in line]
    assert len(dropped) == 1 and "metrics.jsonl" in dropped[0]
    records = read_metrics(out / "metrics.jsonl")
    assert [(r["step"], "loss" in r) for r in records] == [(2, True), (2, False), (4, True), (4, False)]
    with open(out / "metrics.csv", newline="") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [2, 2, 4, 4]
    assert [e.step for e in scalars(out / "tensorboard").Scalars("loss")] == [2, 4]  # step 4 purged, logged anew


def test_a_damaged_line_before_the_last_is_refused_naming_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3, "loss": 1.0}\n')
    with pytest.raises(LoggerError, match=r"metrics.jsonl:2: not a JSON record"):
        loggers.MetricsLog(path, 3)
    assert path.read_text().count("\n") == 3  # nothing rewritten


def test_csv_grows_a_column_for_a_new_key_and_flattens_nested_ones(tmp_path):
    spec = load_spec("tiny", ["training.loggers=[csv]"])
    sinks = RunLoggers(spec, tmp_path / "metrics.jsonl", None, announce=None)
    sinks.write({"step": 0, "val_loss": 1.0, "reward_mean": 0.5, "kl": 0.0})
    sinks.write(RL_RECORD)
    sinks.close()
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["kl"] == "0.0" and rows[1]["phase_seconds/generation"] == "0.5" and rows[1]["kl"] == ""


def test_rl_phase_times_reach_tensorboard_flattened(tmp_path):
    spec = load_spec("tiny", ["training.loggers=[tensorboard]"])
    sinks = RunLoggers(spec, tmp_path / "metrics.jsonl", None, announce=None)
    sinks.write(RL_RECORD)
    sinks.close()
    tags = scalars(tmp_path / "tensorboard").Tags()["scalars"]
    assert {"rollout_reward", "phase_seconds/generation", "planned_phase_seconds/training"} <= set(tags)


class FakeRun:
    def __init__(self, **init):
        self.init, self.logged, self.finished = init, [], False

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


@pytest.mark.parametrize("user_mode, mode", [(None, "offline"), ("online", None)])
def test_wandb_is_offline_unless_the_user_configured_it(user_mode, mode, tmp_path, monkeypatch):
    runs: list[FakeRun] = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **init: runs.append(FakeRun(**init)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr(loggers, "check_loggers", lambda spec: None)
    if user_mode:
        monkeypatch.setenv("WANDB_MODE", user_mode)
    else:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    said: list[str] = []
    sinks = RunLoggers(load_spec("tiny", ["training.loggers=[wandb]"]), tmp_path / "metrics.jsonl", None,
                       announce=said.append)
    sinks.write(RL_RECORD)
    sinks.close()
    (wandb_run,) = runs
    assert wandb_run.init["mode"] == mode and wandb_run.init["dir"] == str(tmp_path) and wandb_run.finished
    assert wandb_run.logged == [(3, {k: float(v) for k, v in flatten(RL_RECORD).items() if k != "step"})]
    assert any("offline" in line for line in said) == (mode == "offline")


def test_a_logger_whose_library_is_missing_is_refused_naming_the_field(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(LoggerError, match=r"^training.loggers: wandb needs the wandb package"):
        check_loggers(load_spec("tiny", ["training.loggers=[wandb]"]))


def test_progress_lines_every_log_interval():
    said: list[str] = []
    lines = ProgressLines(total=6, tokens_per_step=1000, interval=2, announce=said.append)
    for step in range(1, 7):
        lines(step, 4.0 if step % 2 == 0 else None, 1e-3, 3.5 if step >= 4 else None)
    lines(6, 4.0, 1e-3, 3.5)  # the same step again (an eval line followed by DeepSpeed's step line): once
    assert [line.split(" · ")[0] for line in said] == ["step 2/6", "step 4/6", "step 6/6"]
    assert re.fullmatch(r"step 4/6 · loss 4\.0000 · lr 1\.00e-03 · [\d,]+ tok/s · ETA \d+:\d\d:\d\d · val 3\.5000",
                        said[1])


def test_eval_lines_carry_perplexity_only_for_a_language_model_loss(tmp_path):
    from llmspec.train.methods import METHODS
    from llmspec.train.metrics import StepLog

    assert {name for name, method in METHODS.items() if method.token_cross_entropy} == {"pretrain", "sft"}
    spec = load_spec("tiny", QUICK)
    for perplexity in (True, False):
        log = StepLog(spec, tmp_path / "metrics.jsonl", "cpu", 0, False, 1, perplexity=perplexity, announce=None)
        log.eval(0, 0.69, reward_accuracy=0.5)
        log.close()
        assert ("val_perplexity" in read_metrics(tmp_path / "metrics.jsonl")[0]) == perplexity


def test_grpo_says_when_every_groups_advantages_are_zero():
    import torch

    from llmspec.train.methods.grpo import GRPO, GroupRollouts
    from llmspec.train.rollouts import PHASES

    rollouts = object.__new__(GroupRollouts)  # only its bookkeeping: no policy, no prompts
    rollouts.group, rollouts.flat_groups, rollouts.rewards = 2, [], [1.0]
    rollouts.seconds = dict.fromkeys(PHASES, 0.0)
    _, _, advantages = rollouts.finish(None, None, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert advantages.abs().max() < 1e-6
    metrics = rollouts.step_metrics()
    assert metrics["zero_advantage_fraction"] == 1.0
    grpo = GRPO(load_spec("tiny-grpo"))
    notices = [grpo.step_notice(m) for m in (metrics, metrics, {"zero_advantage_fraction": 0.5}, metrics)]
    assert [n is not None for n in notices] == [True, False, False, True]  # said once per stretch
    assert "every advantage is zero" in notices[0]


@pytest.mark.integration
def test_a_run_whose_output_is_a_file_prints_progress_lines(tmp_path):
    """nohup llmspec run … > log: no terminal, so no progress bar; plain lines every log_interval instead."""
    log = tmp_path / "log.txt"
    with open(log, "w") as handle:
        finished = subprocess.run([sys.executable, "-m", "llmspec", "run", "tiny", "--out", str(tmp_path / "r"),
                                   *(f"--set={s}" for s in QUICK)], stdout=handle, stderr=subprocess.STDOUT,
                                  cwd=tmp_path, timeout=600)
    text = log.read_text()
    assert finished.returncode == 0, text
    steps = re.findall(r"^step (\d+)/4 · loss [\d.]+ · lr \S+ · [\d,]+ tok/s · ETA \d+:\d\d:\d\d", text, re.M)
    assert steps == ["2", "4"], text


@pytest.mark.integration
def test_deepspeed_rank_0_writes_the_loggers(tmp_path, monkeypatch):
    """Two DeepSpeed ranks on the CPU: one event file and one metrics.csv, rank 0's, with the run's keys."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    spec = load_spec("tiny", [*WATCHED, "cluster.gpus_per_node=2", "parallelism.zero_stage=2", "model.n_layers=2",
                              "training.micro_batch_size=4", "training.global_batch_size=16"])
    run(spec, tmp_path / "ds", backend="deepspeed", announce=lambda line: None)
    records = read_metrics(tmp_path / "ds" / "metrics.jsonl")
    (events,) = (tmp_path / "ds" / "tensorboard").iterdir()
    assert [e.step for e in scalars(events.parent).Scalars("val_loss")] == [r["step"] for r in records
                                                                           if "val_loss" in r]
    with open(tmp_path / "ds" / "metrics.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(records)


@pytest.mark.parametrize("name, sets", [
    ("tiny-grpo", ["post_training.reward_model=null", "training.global_batch_size=16", "post_training.group_size=4",
                   "post_training.response_len=4"]),
    ("tiny-dpo", ["training.global_batch_size=8"])])
def test_post_training_runs_reach_the_loggers_without_a_perplexity(name, sets, base, tmp_path):
    """Every method's records go to the sinks: GRPO's rollout reward, KL, phase seconds and its share of groups
    without a signal; a preference or RL loss's eval lines have no val_perplexity."""
    spec = load_spec(name, [f"training.init_from={base}", "training.max_steps=2", "training.log_interval=1",
                            "training.eval_interval=2", "training.loggers=[tensorboard, csv]", *sets])
    run(spec, tmp_path / "r", backend="torch", announce=lambda line: None)
    records = read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert not any("val_perplexity" in r for r in records)
    tags = set(scalars(tmp_path / "r" / "tensorboard").Tags()["scalars"])
    assert {k for r in records for k in flatten(r)} - {"step"} <= tags
    if name == "tiny-grpo":
        assert {"rollout_reward", "kl", "reward_mean", "phase_seconds/generation", "zero_advantage_fraction"} <= tags
