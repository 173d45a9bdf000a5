"""`llmspec run`: training end to end, resume bit for bit, failure behaviour, generate, export of a run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import cli, losses
from typer.testing import CliRunner

from llmspec.cli.app import app
from llmspec.errors import LLMSpecError
from llmspec.runner import run
from llmspec.spec.loading import dump_spec, load_spec
from llmspec.train.checkpoint import list_checkpoints, load_checkpoint
from llmspec.train.generate import generate
from llmspec.train.metrics import read_metrics
from llmspec.train.schedule import lr_at

SENTENCES = ["Return the number of items in the container.", "This module provides functions for text.",
             "The quick brown fox jumps over the lazy dog.", "Open the file and read every line of it.",
             "Raise an error when the value is not valid.", "Close the socket once the reply has arrived."]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    import random

    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(SENTENCES) for _ in range(8)) for _ in range(400)))
    return path


def small(corpus: Path, *sets: str):
    return load_spec("tiny", ["model.d_model=64", "model.n_heads=4", "model.n_kv_heads=2", "model.d_ff=128",
                              "model.n_layers=2", "model.vocab_size=320", "model.max_seq_len=64",
                              "training.seq_len=64", "training.micro_batch_size=4", "training.global_batch_size=8",
                              "training.max_steps=40", "training.log_interval=1", "training.eval_interval=20",
                              "training.checkpoint_interval=10", "training.schedule.warmup_steps=5",
                              f"data.corpus={corpus}", *sets])


def test_training_loss_falls_and_the_run_directory_is_complete(corpus, tmp_path):
    summary = run(small(corpus), tmp_path / "r", announce=lambda *a: None)
    records = read_metrics(tmp_path / "r" / "metrics.jsonl")
    train = [r["loss"] for r in records if "loss" in r]
    assert len(train) == 40 and train[-1] < 0.6 * train[0]
    assert summary.val_loss < summary.unigram_entropy - 1.0  # context is being used
    assert {"step", "loss", "lr", "tokens_per_second", "mfu"} <= set(records[0])
    assert [r["step"] for r in records if "val_loss" in r] == [20, 40]
    for name in ("spec.yaml", "tokenizer.json", "metrics.jsonl", "loss.png", "samples.txt", "build/model.py",
                 "build/ds_config.json"):
        assert (tmp_path / "r" / name).exists(), name
    assert [p.name for p in list_checkpoints(tmp_path / "r" / "checkpoints")] == ["step-00000030.pt",
                                                                                   "step-00000040.pt"]
    state = load_checkpoint(tmp_path / "r" / "checkpoints" / "step-00000040.pt")
    assert state["step"] == 40 and {"model", "optimizer", "rng", "spec"} <= set(state)


def test_schedule_warms_up_linearly_then_decays_to_min_lr(corpus):
    spec = small(corpus, "training.max_steps=100", "training.schedule.warmup_steps=10")
    peak, floor = spec.training.optimizer.lr, spec.training.schedule.min_lr
    assert lr_at(spec, 0) == pytest.approx(peak / 10) and lr_at(spec, 9) == pytest.approx(peak)
    assert lr_at(spec, 55) == pytest.approx((peak + floor) / 2)
    assert lr_at(spec, 100) == pytest.approx(floor) and lr_at(spec, 99) > floor


@pytest.mark.integration
def test_killed_run_resumes_bit_for_bit(corpus, tmp_path):
    spec = small(corpus, "training.max_steps=60", "training.micro_batch_size=8", "training.global_batch_size=16",
                 "model.dropout=0.1")
    spec_file = tmp_path / "spec.yaml"
    from llmspec.spec.loading import dump_spec

    spec_file.write_text(dump_spec(spec))
    whole = cli("run", str(spec_file), "--out", str(tmp_path / "whole"), cwd=tmp_path)
    assert whole.wait(timeout=600) == 0, whole.stdout.read()

    killed = cli("run", str(spec_file), "--out", str(tmp_path / "killed"), cwd=tmp_path)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while not list_checkpoints(checkpoints) and time.time() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    steps_logged = len(losses(tmp_path / "killed"))
    assert list_checkpoints(checkpoints) and steps_logged < len(losses(tmp_path / "whole")), "killed too late"

    resumed = cli("run", str(spec_file), "--out", str(tmp_path / "killed"), "--resume", cwd=tmp_path)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert "resumed from" in output
    assert losses(tmp_path / "killed") == losses(tmp_path / "whole")  # every float, bit for bit


def test_existing_checkpoints_need_resume_and_resume_needs_a_checkpoint(corpus, tmp_path):
    spec = small(corpus, "training.max_steps=10")
    run(spec, tmp_path / "r", announce=lambda *a: None)
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    with pytest.raises(LLMSpecError, match="pass --resume"):
        run(spec, tmp_path / "r", announce=lambda *a: None)
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before  # nothing lost
    with pytest.raises(LLMSpecError, match="no checkpoint to resume from"):
        run(spec, tmp_path / "fresh", resume=True, announce=lambda *a: None)


def test_nan_loss_stops_with_the_last_good_checkpoint(corpus, tmp_path):
    spec = small(corpus, "training.optimizer.lr=1.0e+6", "training.grad_clip=null", "training.checkpoint_interval=1",
                 "training.schedule.warmup_steps=0")
    with pytest.raises(LLMSpecError, match=r"step \d+: (loss is nan|loss is inf|the weights hold inf/nan)"):
        run(spec, tmp_path / "r", announce=lambda *a: None)
    for path in list_checkpoints(tmp_path / "r" / "checkpoints"):
        state = load_checkpoint(path)
        assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_disk_full_while_checkpointing_leaves_no_corrupt_checkpoint(corpus, tmp_path, monkeypatch):
    real_save = torch.save
    calls = []

    def failing_save(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            handle.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(LLMSpecError, match="No space left on device.*previous checkpoint is intact"):
        run(small(corpus, "training.max_steps=30"), tmp_path / "r", announce=lambda *a: None)
    directory = tmp_path / "r" / "checkpoints"
    assert [p.name for p in directory.iterdir()] == ["step-00000010.pt"]
    assert load_checkpoint(directory / "step-00000010.pt")["step"] == 10


def test_specs_that_cannot_run_are_refused_before_anything_is_written(corpus, tmp_path):
    with pytest.raises(LLMSpecError, match="does not fit: planned peak .* exceeds the usable"):
        run(load_spec("llama2-7b", ["cluster.gpu=cpu", "cluster.gpus_per_node=1", "cluster.nodes=1",
                                    "parallelism.zero_stage=0", "training.global_batch_size=2",
                                    "training.micro_batch_size=2"]), tmp_path / "big")
    assert not (tmp_path / "big").exists()
    with pytest.raises(LLMSpecError, match=r"does not fit: host per node .* exceeds cluster.host_memory_gib"):
        run(load_spec("tiny", ["cluster.host_memory_gib=0.001"]), tmp_path / "host")
    assert not (tmp_path / "host").exists()
    with pytest.raises(LLMSpecError, match="data.corpus: .*missing.txt does not exist"):
        run(small(corpus, f"data.corpus={tmp_path / 'missing.txt'}"), tmp_path / "a")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(LLMSpecError, match="data.corpus: no text"):
        run(small(corpus, f"data.corpus={tmp_path / 'empty.txt'}"), tmp_path / "b")
    with pytest.raises(LLMSpecError, match="vocab_size: 5000 is too large for this corpus"):
        run(small(corpus, "model.vocab_size=5000"), tmp_path / "c")


def test_cli_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(app, ["run", "tiny", "--set", "data.corpus=/nonexistent/x.txt", "--out",
                                      str(tmp_path / "r")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == "error: data.corpus: /nonexistent/x.txt does not exist"
    result = CliRunner().invoke(app, ["generate", str(tmp_path / "nope"), "hi"])
    assert result.exit_code == 2 and "not a run directory" in result.output


def test_generate_and_export_a_trained_run(corpus, tmp_path):
    run(small(corpus, "training.max_steps=20"), tmp_path / "r", announce=lambda *a: None)
    greedy = generate(tmp_path / "r", "Return the", max_new_tokens=12, temperature=0)
    assert greedy.startswith("Return the") and greedy == generate(tmp_path / "r", "Return the", 12, temperature=0)
    with pytest.raises(LLMSpecError, match="--temperature -1"):
        generate(tmp_path / "r", "x", temperature=-1)
    result = CliRunner().invoke(app, ["export-hf", str(tmp_path / "r"), "-o", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "r").rglob("*"))
    for inside in (tmp_path / "r", tmp_path / "r" / "hf"):  # an output that is, or is inside, the run: refused
        refused = CliRunner().invoke(app, ["export-hf", str(tmp_path / "r"), "-o", str(inside)])
        assert refused.exit_code == 2 and "the input" in refused.stderr and "Traceback" not in refused.output
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "r").rglob("*")) == before
    # the Python API takes str paths as the CLI does
    assert generate(str(tmp_path / "r"), "Return the", max_new_tokens=3, temperature=0).startswith("Return the")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmspec.train.generate import load_run

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    _, ours, tokenizer = load_run(tmp_path / "r")
    text = "Open the file and read every line."
    assert hf_tokenizer(text)["input_ids"] == tokenizer.encode(text).ids
    assert hf_tokenizer.decode(tokenizer.encode(text).ids) == text
    idx = torch.tensor([tokenizer.encode(text).ids])
    with torch.no_grad():
        assert (hf(idx).logits - ours(idx)[0]).abs().max().item() <= 1e-4


@pytest.mark.integration
def test_default_run_on_a_shortened_budget(tmp_path):
    spec = load_spec("tiny", ["training.max_steps=60", "training.eval_interval=30"])
    summary = run(spec, tmp_path / "tiny", announce=lambda *a: None)
    assert summary.val_loss < summary.unigram_entropy
    assert len(summary.samples) == 3 and all(s for s in summary.samples)
    assert json.loads((tmp_path / "tiny" / "build" / "plan.json").read_text())["fits"]


@pytest.mark.integration
def test_torch_compile_trains_the_same_model(corpus, tmp_path):
    spec = small(corpus, "training.max_steps=6", "training.eval_interval=6")
    run(spec, tmp_path / "eager", announce=lambda *a: None)
    run(spec, tmp_path / "compiled", announce=lambda *a: None, compile=True)
    eager = [r["loss"] for r in read_metrics(tmp_path / "eager" / "metrics.jsonl") if "loss" in r]
    compiled = [r["loss"] for r in read_metrics(tmp_path / "compiled" / "metrics.jsonl") if "loss" in r]
    assert compiled == pytest.approx(eager, rel=1e-4)


def test_resume_refuses_a_changed_data_section_and_keeps_the_run_tokenizer(corpus, tmp_path):
    spec = small(corpus, "training.max_steps=10")
    run(spec, tmp_path / "r", announce=lambda *a: None)
    tokenizer = (tmp_path / "r" / "tokenizer.json").read_bytes()
    other = tmp_path / "other.txt"
    other.write_text("Completely different words here. " * 500)
    with pytest.raises(LLMSpecError, match=r"--resume with changed data\.corpus"):
        run(small(corpus, "training.max_steps=10", f"data.corpus={other}"), tmp_path / "r", resume=True)
    with pytest.raises(LLMSpecError, match=r"training\.optimizer\.lr"):
        run(small(corpus, "training.max_steps=10", "training.optimizer.lr=0.1"), tmp_path / "r", resume=True)
    run(small(corpus, "training.max_steps=14", "training.log_interval=2"), tmp_path / "r", resume=True,
        announce=lambda *a: None)  # length and cadence may change
    assert (tmp_path / "r" / "tokenizer.json").read_bytes() == tokenizer
    assert read_metrics(tmp_path / "r" / "metrics.jsonl")[-1]["step"] == 14


def test_the_default_command_run_again_reports_instead_of_refusing(corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(dump_spec(small(corpus, "training.max_steps=6", "training.eval_interval=3")))
    first = CliRunner().invoke(app, ["run", "s.yaml"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, ["run", "s.yaml"])
    assert again.exit_code == 0 and "already trained" in again.output and "samples" not in again.stderr
    assert "step 0/" not in again.output
    longer = CliRunner().invoke(app, ["run", "s.yaml", "--set", "training.max_steps=7"])
    assert longer.exit_code == 0, longer.output
    assert "this one trains in runs/tiny-2" in " ".join(longer.output.split())
    assert (tmp_path / "runs" / "tiny-2" / "checkpoints").is_dir()
    assert len(list((tmp_path / "runs" / "tiny" / "checkpoints").glob("*.pt"))) >= 1  # the first run is intact


def test_a_refused_run_prints_no_progress_bar(corpus, tmp_path):
    result = CliRunner().invoke(app, ["run", "tiny", "--out", str(tmp_path / "r"), "--set", "cluster.gpu=L4",
                                      "--set", "training.micro_batch_size=16", "--set", "model.n_layers=400",
                                      "--set", "model.d_model=4096", "--set", "model.n_heads=32",
                                      "--set", "model.n_kv_heads=8", "--set", "model.d_ff=11008"])
    assert result.exit_code == 3 and "does not fit" in result.stderr
    assert "step 0/" not in result.output


@pytest.mark.integration
def test_ctrl_c_exits_quietly_and_keeps_the_last_checkpoint(corpus, tmp_path):
    (tmp_path / "s.yaml").write_text(dump_spec(small(corpus, "training.max_steps=100000",
                                                     "training.checkpoint_interval=5")))
    process = subprocess.Popen([sys.executable, "-m", "llmspec", "run", str(tmp_path / "s.yaml"), "--out",
                                str(tmp_path / "r")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list_checkpoints(tmp_path / "r" / "checkpoints") and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert load_checkpoint(list_checkpoints(tmp_path / "r" / "checkpoints")[-1])["step"] % 5 == 0


def test_two_runs_of_one_spec_are_identical_on_one_machine(corpus, tmp_path):
    """What docs/training.md promises: same spec, same machine → the same losses and samples, bit for bit."""
    spec = small(corpus, "training.max_steps=12", "model.dropout=0.1")
    for name in ("a", "b"):
        run(spec, str(tmp_path / name), announce=lambda *a: None)  # the Python API takes str paths too

    def trace(run_dir):
        return [{k: v for k, v in r.items() if k not in ("tokens_per_second", "mfu")}
                for r in read_metrics(run_dir / "metrics.jsonl")]

    assert trace(tmp_path / "a") == trace(tmp_path / "b")
    assert (tmp_path / "a" / "samples.txt").read_text() == (tmp_path / "b" / "samples.txt").read_text()


@pytest.mark.parametrize("sets, code, needle", [
    (["cluster.nodes=2", "training.global_batch_size=32"], 2, "cluster.nodes 2"),
    (["parallelism.tensor=2", "parallelism.pipeline=2", "cluster.gpus_per_node=4", "training.global_batch_size=32"],
     2, "parallelism.tensor 2 with pipeline 2"),
    (["parallelism.tensor=2", "parallelism.sequence_parallel=true", "cluster.gpus_per_node=2",
      "training.global_batch_size=32"], 2, "parallelism.sequence_parallel: planned, not run"),
    (["parallelism.pipeline=2", "parallelism.virtual_stages=2", "cluster.gpus_per_node=2",
      "training.global_batch_size=32"], 2, "parallelism.virtual_stages 2"),
    (["parallelism.pipeline=2", "parallelism.virtual_stages=auto", "cluster.gpus_per_node=2",
      "training.global_batch_size=32"], 2, "parallelism.virtual_stages auto (the plan picks 2)"),
    (["parallelism.context=2", "cluster.gpus_per_node=2", "training.global_batch_size=32"], 2,
     "parallelism.context 2: planned, not trained"),
    (["parallelism.tensor=2", "parallelism.tp_comm_overlap=true", "cluster.gpus_per_node=2",
      "training.global_batch_size=32"], 2, "parallelism.tp_comm_overlap: planned, not run"),
    (["cluster.gpu=H100-SXM", "training.precision=fp8"], 2, "training.precision fp8: planned, not run"),
    (["model.moe={n_experts: 4, top_k: 2}", "model.mlp=swiglu", "parallelism.expert=2",
      "parallelism.ep_comm_overlap=true", "cluster.gpus_per_node=2", "training.global_batch_size=32"], 2,
     "parallelism.ep_comm_overlap: planned, not run"),
    (["model.moe={n_experts: 4, top_k: 2, capacity_factor: 1.25}", "model.mlp=swiglu", "parallelism.expert=2",
      "cluster.gpus_per_node=2", "training.global_batch_size=32"], 2,
     "model.moe.capacity_factor with parallelism.expert 2: planned, not run"),
])
def test_what_run_cannot_execute_is_refused_before_anything_starts(tmp_path, sets, code, needle):
    args = ["run", "tiny", "--out", str(tmp_path / "r"), "--dry-run"]
    for item in sets:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == code and needle in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_a_gpu_job_on_a_machine_without_one_is_refused_when_its_cpu_cannot_hold_it(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    big = CliRunner().invoke(app, ["run", "llama2-7b", "--set", "cluster.nodes=1", "--dry-run", "--out",
                                   str(tmp_path / "r")])
    assert big.exit_code == 3 and "this machine has no GPU" in big.stderr
    small = CliRunner().invoke(app, ["run", "tiny", "--set", "cluster.gpu=A100-80GB", "--dry-run", "--out",
                                     str(tmp_path / "r")])
    assert small.exit_code == 0, small.output  # it fits this CPU: trained there, with a notice


def test_a_run_plans_once_and_hands_the_plan_down(corpus, tmp_path, monkeypatch):
    """`llmspec run` plans the spec once: the summary, the fit check, build's plan.json and the step lines read the
    same Plan (in one process; a DeepSpeed rank that writes metrics plans for itself)."""
    import llmspec.planner.training as training

    planned, plan = [], training._with_virtual_stages
    monkeypatch.setattr(training, "_with_virtual_stages", lambda *a: planned.append(a[0].name) or plan(*a))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(dump_spec(small(corpus, "training.max_steps=6", "training.eval_interval=3")))
    result = CliRunner().invoke(app, ["run", "s.yaml", "--out", "r"])
    assert result.exit_code == 0, result.output
    assert planned == ["tiny"]
    written = json.loads((tmp_path / "r" / "build" / "plan.json").read_text())
    step = next(r for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if "planned_tokens_per_second" in r)
    assert step["planned_tokens_per_second"] == written["time"]["tokens_per_second"]
    assert written["alternatives"]


# ---- issue 30, item 7: a corrupt checkpoint ------------------------------------------------------------------


def test_an_unreadable_checkpoint_is_one_line_naming_the_previous_intact_one(tmp_path):
    from llmspec.train.checkpoint import resumable_checkpoint, save_checkpoint

    for step in (10, 20):
        save_checkpoint(tmp_path, step, {"step": step, "model": {"w": torch.ones(64, 64)}})
    last = tmp_path / "step-00000020.pt"
    whole = last.read_bytes()
    for damaged, why in ((whole[: len(whole) // 2], "truncated, or not a checkpoint"),
                         (whole[:200] + b"x" * 60 + whole[260:], "damaged: UnpicklingError"),
                         (b"", "truncated, or not a checkpoint")):
        last.write_bytes(damaged)
        with pytest.raises(LLMSpecError) as error:
            load_checkpoint(last)
        assert str(error.value) == (f"{last}: unreadable ({why}); the previous checkpoint, step-00000010.pt, is "
                                    "intact (`llmspec run --resume` continues from it)")
        assert resumable_checkpoint(tmp_path) == (tmp_path / "step-00000010.pt", [(last, why)])
    (tmp_path / "step-00000010.pt").write_bytes(b"junk")
    with pytest.raises(LLMSpecError, match=r"step-00000020.pt: unreadable \(.*\), and no earlier checkpoint is "
                                           r"intact; there is nothing to resume from"):
        resumable_checkpoint(tmp_path)
    with pytest.raises(LLMSpecError, match=r"step-00000020.pt: unreadable .*; no earlier checkpoint is intact$"):
        load_checkpoint(last)


def test_resume_passes_over_a_corrupt_checkpoint_for_the_previous_one(corpus, tmp_path):
    from llmspec.backends.runnable import ENGINES
    from llmspec.train.job import prepare

    spec = small(corpus, "training.max_steps=20")
    (tmp_path / "s.yaml").write_text(dump_spec(spec))
    run(spec, tmp_path / "r", announce=lambda *a: None)
    last = tmp_path / "r" / "checkpoints" / "step-00000020.pt"
    last.write_bytes(last.read_bytes()[:1000])  # cut, as by a full disk or an interrupted copy
    generated = CliRunner().invoke(app, ["generate", str(tmp_path / "r"), "hi"])
    assert generated.exit_code == 2 and generated.stderr.strip() == (
        f"error: {last}: unreadable (truncated, or not a checkpoint); the previous checkpoint, step-00000010.pt, is "
        "intact (`llmspec run --resume` continues from it)")
    said: list[str] = []
    prepare(spec, tmp_path / "r", True, ENGINES["torch"].refusals, dry_run=True, announce=said.append)
    assert said == [f"{last}: unreadable (truncated, or not a checkpoint); --resume continues from the previous "
                    "checkpoint, step-00000010.pt, which is intact"]
    resumed = CliRunner().invoke(app, ["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "r"), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "step-00000010.pt at step 10" in resumed.output and "weights_only" not in resumed.output
    assert load_checkpoint(last)["step"] == 20  # trained again past it, and written whole
    for path in list_checkpoints(tmp_path / "r" / "checkpoints"):
        path.write_bytes(b"")
    refused = CliRunner().invoke(app, ["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "r"), "--resume"])
    assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "and no earlier checkpoint is intact; there is nothing to resume from" in refused.stderr
