"""The deepspeed backend on CPU (2 ranks, gloo): ZeRO-2, ZeRO-3 and pipeline=2 track the torch backend on the same
data; resume continues exactly; a dying rank ends the run with a clear error instead of a hang."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest
import torch

from llmspec.errors import LLMSpecError
from llmspec.runner import run
from llmspec.spec.loading import load_spec
from llmspec.train.checkpoint import list_checkpoints, load_checkpoint
from llmspec.train.generate import generate
from llmspec.train.metrics import read_metrics

pytestmark = pytest.mark.integration
os.environ.setdefault("DS_ACCELERATOR", "cpu")

COMMON = ["cluster.gpus_per_node=2", "model.n_layers=2", "model.d_model=64", "model.n_heads=4", "model.n_kv_heads=2",
          "model.d_ff=128", "training.micro_batch_size=4", "training.global_batch_size=16", "training.max_steps=8",
          "training.log_interval=1", "training.eval_interval=4", "training.checkpoint_interval=4",
          "model.vocab_size=512", "data.tokenizer.vocab_size=512"]


def quiet(*args):
    pass


def _losses(run_dir):
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in read_metrics(run_dir / "metrics.jsonl")]


def _tracks_one_process(spec, tmp_path, name: str = "ds") -> None:
    """Train ``spec`` with the torch engine and with DeepSpeed; every logged loss agrees within 1e-3."""
    run(spec, tmp_path / "torch", backend="torch", announce=quiet)
    run(spec, tmp_path / name, backend="deepspeed", announce=quiet)
    reference, ours = _losses(tmp_path / "torch"), _losses(tmp_path / name)
    assert [r[0] for r in ours] == [r[0] for r in reference]
    for (_, loss, val), (_, ref_loss, ref_val) in zip(ours, reference, strict=True):
        assert (loss or val) == pytest.approx(ref_loss or ref_val, rel=1e-3)


@pytest.mark.parametrize("layout", [["parallelism.zero_stage=2"], ["parallelism.zero_stage=3"],
                                    ["parallelism.zero_stage=1", "parallelism.pipeline=2"],
                                    ["parallelism.zero_stage=2", "parallelism.offload_optimizer=cpu"]],
                         ids=["zero2", "zero3", "pipeline2", "zero2-offload"])
def test_two_ranks_track_the_single_process_run(layout, tmp_path):
    spec = load_spec("tiny", COMMON + layout)
    _tracks_one_process(spec, tmp_path)
    # the consolidated checkpoint is the compiled model's: generate works from it
    state = load_checkpoint(list_checkpoints(tmp_path / "ds" / "checkpoints")[-1])
    assert state["backend"] == "deepspeed" and "embed.weight" in state["model"]
    assert generate(tmp_path / "ds", "The", max_new_tokens=5, temperature=0).startswith("The")


@pytest.mark.parametrize("model", [["model.tie_embeddings=false", "parallelism.zero_stage=1"],
                                   ["model.position=learned", "model.bias=true", "parallelism.zero_stage=3"]],
                         ids=["llama-untied-zero1", "gpt2-fused-qkv-zero3"])
def test_tensor_parallel_tracks_the_single_process_run(model, tmp_path):
    """AutoTP on 2 ranks (tensor = 2): 20 steps within 1e-3 of one process; each rank holds what the plan says."""


    from llmspec.planner.training import plan

    spec = load_spec("tiny", COMMON + model + ["parallelism.tensor=2", "training.max_steps=20",
                                               "training.eval_interval=10"])
    _tracks_one_process(spec, tmp_path, "tp")
    ranks = json.loads((tmp_path / "tp" / "ranks.json").read_text())["ranks"]
    planned = plan(spec, alternatives=False).params
    assert [r["parameters"] for r in ranks] == [planned["per_gpu"]] * 2
    assert planned["per_gpu"] < planned["total"]
    # the checkpoint holds the whole model, gathered from both shards
    state = load_checkpoint(list_checkpoints(tmp_path / "tp" / "checkpoints")[-1])["model"]
    assert sum(v.numel() for k, v in state.items() if k != "lm_head.weight" or not spec.model.tie_embeddings) \
        == planned["total"]
    assert generate(tmp_path / "tp", "The", max_new_tokens=5, temperature=0).startswith("The")


def test_an_uneven_pipeline_split_runs_as_given(tmp_path, monkeypatch):
    """first_stage_layers: 3 blocks as 1 + 2 over pipeline = 2 (DeepSpeed's own methods would balance 2 + 1)."""

    import socket
    from pathlib import Path

    with socket.socket() as probe:  # this run's rendezvous port: its shared-memory buffers carry it in their names
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MASTER_PORT", str(port))

    from llmspec.planner.training import plan

    spec = load_spec("tiny", COMMON + ["model.n_layers=3", "parallelism.pipeline=2", "parallelism.zero_stage=1",
                                       "parallelism.first_stage_layers=1", "training.max_steps=4"])
    _tracks_one_process(spec, tmp_path, "pp")
    ranks = json.loads((tmp_path / "pp" / "ranks.json").read_text())["ranks"]
    state = load_checkpoint(list_checkpoints(tmp_path / "pp" / "checkpoints")[-1])["model"]
    block = sum(v.numel() for k, v in state.items() if k.startswith("blocks.0."))
    embed, norm = state["embed.weight"].numel(), state["norm.weight"].numel()
    # the first stage: the embedding and one block; the last: two blocks, the final norm, the tied head's copy
    assert [r["parameters"] for r in ranks] == [embed + block, 2 * block + norm + embed]
    planned = plan(spec, alternatives=False)
    assert planned.stage == "last" and planned.params["per_gpu"] == ranks[1]["parameters"]
    # DeepSpeed's CPU all-reduce buffers (66 MB a rank, never unlinked by DeepSpeed) are gone with the run
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))


@pytest.mark.parametrize("zero", [0, 2])
def test_expert_parallel_tracks_the_single_process_run(zero, tmp_path):
    """AutoEP on tiny-moe (4 experts, top-2): 2 ranks hold 2 experts each; losses track one process, and the
    consolidated checkpoint is the compiled model again (its loss is the run's validation loss)."""


    from llmspec.compile.loading import load_model_module
    from llmspec.planner.training import plan
    from llmspec.train.job import load_job
    from llmspec.train.methods.pretrain import pretraining_batches

    spec = load_spec("tiny-moe", ["cluster.gpus_per_node=2", "parallelism.expert=2", f"parallelism.zero_stage={zero}",
                                  "model.d_model=64", "model.d_ff=128", "training.micro_batch_size=4",
                                  "training.global_batch_size=16", "training.max_steps=6", "training.log_interval=1",
                                  "training.eval_interval=6", "model.vocab_size=512", "data.tokenizer.vocab_size=512"])
    _tracks_one_process(spec, tmp_path, "ep")
    ranks = json.loads((tmp_path / "ep" / "ranks.json").read_text())["ranks"]
    assert [r["parameters"] for r in ranks] == [plan(spec, alternatives=False).params["per_gpu"]] * 2
    model = load_model_module(tmp_path / "ep" / "build" / "model.py").Model()
    model.load_state_dict(load_checkpoint(list_checkpoints(tmp_path / "ep" / "checkpoints")[-1])["model"])
    job = load_job(tmp_path / "ep")
    val = pretraining_batches(spec, job.shards)[1]
    from llmspec.train.loop import EVAL_BATCHES

    with torch.no_grad():
        ours = sum(model(*val.get(0, i))[1].item() for i in range(EVAL_BATCHES)) / EVAL_BATCHES
    assert ours == pytest.approx(_losses(tmp_path / "ep")[-1][2], rel=1e-4)


# The 2026 families' features, three specs that hold them all (docs/architecture.md): Gemma 2 and 3 (per-layer
# kinds, a local RoPE base, sandwich norms, QK-norm, soft caps, scales), OLMo 2 and SmolLM3 (post norms, QK-norm
# over the projections, NoPE layers, YaRN), Pythia and Phi (parallel residual, partial rotary, LayerNorm with
# biases, LongRoPE).
FAMILIES = {
    "gemma": ["model.layer_types=[sliding, full]", "model.sliding_window=8", "model.rope_local_theta=10000",
              "model.rope_scaling.type=linear", "model.rope_scaling.factor=2", "model.norm_placement=sandwich",
              "model.qk_norm=head", "model.attn_softcap=50.0", "model.final_softcap=30.0", "model.query_scale=0.2",
              "model.embed_scale=8.0", "model.mlp=geglu_tanh"],
    "olmo-smollm": ["model.norm_placement=post", "model.qk_norm=full", "model.nope_layers=2",
                    "model.rope_scaling.type=yarn", "model.rope_scaling.factor=2",
                    "model.rope_scaling.original_max_seq_len=128"],
    "pythia-phi": ["model.parallel_residual=true", "model.partial_rotary=0.5", "model.norm=layernorm",
                   "model.bias=true", "model.mlp=gelu", "model.rope_scaling.type=longrope",
                   "model.rope_scaling.original_max_seq_len=128",
                   "model.rope_scaling.short_factor=[1.0, 1.2, 1.4, 1.6]",
                   "model.rope_scaling.long_factor=[2.0, 2.2, 2.4, 2.6]"],
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_2026_families_train_under_zero2_as_in_one_process(family, tmp_path):
    _tracks_one_process(load_spec("tiny", COMMON + FAMILIES[family] + ["parallelism.zero_stage=2"]), tmp_path)


def test_autotp_partitions_the_gemma_layers(tmp_path):
    """AutoTP (tensor 2) splits the per-head QK-norm'd, soft-capped, sandwich-normed layers as one process runs
    them."""
    spec = load_spec("tiny", COMMON + FAMILIES["gemma"] + ["parallelism.tensor=2", "parallelism.zero_stage=1"])
    _tracks_one_process(spec, tmp_path, "tp")


@pytest.mark.parametrize("layout", [["parallelism.zero_stage=2", "model.dropout=0.1"],
                                    ["parallelism.tensor=2", "parallelism.zero_stage=1"],
                                    ["parallelism.expert=2", "model.moe={n_experts: 4, top_k: 2}"]],
                         ids=["zero2-dropout", "tensor2", "expert2"])
def test_resume_continues_exactly(layout, tmp_path):
    spec = load_spec("tiny", COMMON + layout)
    run(spec, tmp_path / "r", backend="deepspeed", announce=quiet)
    whole = _losses(tmp_path / "r")
    # as if the run had died just after the checkpoint of step 4
    for path in list_checkpoints(tmp_path / "r" / "checkpoints")[-1:]:
        path.unlink()
    ds = tmp_path / "r" / "checkpoints" / "deepspeed"
    subprocess.run(["rm", "-rf", str(ds / "step-00000008")], check=True)
    (ds / "latest").write_text("step-00000004")
    run(spec, tmp_path / "r", resume=True, backend="deepspeed", announce=quiet)
    assert _losses(tmp_path / "r") == whole


def test_a_dying_rank_ends_the_run_with_an_error(tmp_path):
    spec = load_spec("tiny", COMMON + ["parallelism.zero_stage=2", "training.max_steps=400",
                                       "training.checkpoint_interval=1000", "training.eval_interval=1000"])
    run_dir = tmp_path / "r"

    def kill_a_rank():
        deadline = time.time() + 240
        while time.time() < deadline:
            if (run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text().strip():
                pids = subprocess.run(["pgrep", "-f", f"deepspeed_worker.*{run_dir}"], capture_output=True,
                                      text=True).stdout.split()
                if len(pids) >= 2:
                    os.kill(int(pids[-1]), signal.SIGKILL)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_rank)
    killer.start()
    start = time.time()
    with pytest.raises(LLMSpecError, match="deepspeed: the launcher exited with status"):
        run(spec, run_dir, backend="deepspeed", announce=quiet)
    killer.join()
    assert time.time() - start < 300
    assert len(read_metrics(run_dir / "metrics.jsonl")) < 400


def test_the_cli_shows_progress_and_ctrl_c_stops_every_rank_quietly(tmp_path):
    import sys

    from llmspec.spec.loading import dump_spec

    spec = load_spec("tiny", COMMON + ["parallelism.zero_stage=2", "training.max_steps=100000"])
    (tmp_path / "s.yaml").write_text(dump_spec(spec))
    run_dir = tmp_path / "r"
    env = {**os.environ, "COLUMNS": "100"}
    process = subprocess.Popen([sys.executable, "-m", "llmspec", "run", str(tmp_path / "s.yaml"), "--out",
                                str(run_dir), "--backend", "deepspeed"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    while not list_checkpoints(run_dir / "checkpoints") and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # the progress follower reads metrics.jsonl every half second
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr and "interrupted" in stderr
    assert "step " in stdout and " loss " in stdout  # the same progress bar as the torch engine
    time.sleep(2)
    leftover = subprocess.run(["pgrep", "-f", f"deepspeed_worker.*{run_dir}"], capture_output=True, text=True)
    assert leftover.stdout.split() == []
    assert load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])["step"] % 4 == 0


@pytest.mark.parametrize("layout", [["parallelism.zero_stage=2"], ["parallelism.zero_stage=3"],
                                    ["parallelism.zero_stage=1", "parallelism.pipeline=2"]],
                         ids=["zero2", "zero3", "pipeline2"])
def test_bf16_trains_under_deepspeed(layout, tmp_path):
    """DeepSpeed's bf16 casts parameters, not buffers: RoPE tables follow the activations, so RoPE models train."""
    spec = load_spec("tiny", COMMON + layout + ["training.precision=bf16", "training.max_steps=4"])
    run(spec, tmp_path / "torch", backend="torch", announce=quiet)  # autocast: the reference
    run(spec, tmp_path / "ds", backend="deepspeed", announce=quiet)
    ours, reference = _losses(tmp_path / "ds"), _losses(tmp_path / "torch")
    assert [r[0] for r in ours] == [r[0] for r in reference]
    first = next(r[1] for r in ours if r[1] is not None)
    assert first == pytest.approx(next(r[1] for r in reference if r[1] is not None), rel=2e-2)
    assert all(value is None or value == value for row in ours for value in row[1:])  # no NaN


POST = ["cluster.gpus_per_node=2", "training.micro_batch_size=4", "training.global_batch_size=16",
        "training.max_steps=6", "training.log_interval=1", "training.eval_interval=3", "training.checkpoint_interval=3"]


@pytest.mark.parametrize("name, layout", [
    ("tiny-lora", ["parallelism.zero_stage=2"]),
    ("tiny-dpo", ["parallelism.zero_stage=3", "post_training.adapter.type=lora"]),  # reference: adapters off
    ("tiny-reward", ["parallelism.zero_stage=1"]),  # a value head on pairs
], ids=["lora-sft-zero2", "dpo-adapter-off-zero3", "reward-zero1"])
def test_post_training_under_deepspeed_tracks_the_single_process_run(name, layout, base, tmp_path):
    spec = load_spec(name, [f"training.init_from={base}", *POST, *layout])
    _tracks_one_process(spec, tmp_path)
    evals = [r for r in read_metrics(tmp_path / "ds" / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 3, 6]  # the held-out metrics ran on every rank, logged by rank 0


@pytest.mark.parametrize("name, layout", [
    ("tiny-grpo", ["parallelism.zero_stage=3"]),  # ranks sample in lockstep: ZeRO-3 gathers on every forward
    ("tiny-ppo", ["parallelism.zero_stage=2", "post_training.epochs=2"]),
], ids=["grpo-zero3", "ppo-zero2"])
def test_rl_under_deepspeed_samples_what_one_process_samples(name, layout, base, tmp_path):
    """Each rank generates its replica's rollouts (seeded by step and replica) as the torch engine does for every
    replica in turn: the same rollout rewards exactly, the same losses and held-out metrics to 1e-4."""
    short = ["training.max_steps=4", "training.eval_interval=2", "training.checkpoint_interval=2",
             "post_training.response_len=8"]
    spec = load_spec(name, [f"training.init_from={base}", *POST, *layout, *short])
    run(spec, tmp_path / "torch", backend="torch", announce=quiet)
    run(spec, tmp_path / "ds", backend="deepspeed", announce=quiet)
    reference, ours = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("torch", "ds"))
    assert [r["step"] for r in ours] == [r["step"] for r in reference]
    for mine, theirs in zip(ours, reference, strict=True):
        for key in ("loss", "val_loss", "reward_mean", "kl", "task_accuracy"):
            if key in theirs:
                assert mine[key] == pytest.approx(theirs[key], abs=1e-4), (mine["step"], key)
    # rank 0's rollouts are the torch engine's replica 0 and 1 together: the logged mean covers this rank only
    assert [r["step"] for r in ours if "rollout_reward" in r] == [1, 2, 3, 4]
    state = load_checkpoint(list_checkpoints(tmp_path / "ds" / "checkpoints")[-1])
    assert "embed.weight" in state["model"] and ("critic" in state) == (name == "tiny-ppo")
    # the frozen reference copy: under ZeRO-3 an inference engine partitioned over the ranks (each holds about
    # half, as the planner counts it), under ZeRO-2 whole on every rank (no partition)
    held = [r["frozen_parameters_held"] for r in json.loads((tmp_path / "ds" / "ranks.json").read_text())["ranks"]]
    total = sum(state["model"][key].numel() for key in state["model"] if key != "lm_head.weight")  # tied: once
    if spec.parallelism.zero_stage == 3:
        assert sum(held) >= total and all(abs(h - total / 2) < 0.01 * total for h in held), (held, total)
    else:
        assert held == [0, 0]
