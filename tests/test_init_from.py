"""training.init_from: a run starts from an imported transformers model's weights (transformers' loss and ours
agree on the first batch), or from another run; weights that are not the spec's model are refused up front."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig
from typer.testing import CliRunner

from llmspec.cli.app import app
from llmspec.compile.loading import load_model_module
from llmspec.interop.hf import import_hf
from llmspec.runner import run
from llmspec.spec.loading import load_spec
from llmspec.train.checkpoint import list_checkpoints, load_checkpoint
from llmspec.train.job import load_job
from llmspec.train.methods.pretrain import pretraining_batches
from llmspec.train.metrics import read_metrics

CONFIG = LlamaConfig(vocab_size=384, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0, rms_norm_eps=1e-5)
RUN = ["training.max_steps=2", "training.log_interval=1", "training.eval_interval=2", "training.seq_len=64",
       "training.micro_batch_size=2", "training.global_batch_size=2", "training.precision=fp32",
       "training.schedule.warmup_steps=0", "cluster.gpu=cpu", "cluster.gpus_per_node=1", "cluster.nodes=1",
       "parallelism.tensor=1", "parallelism.pipeline=1", "parallelism.zero_stage=0"]


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(CONFIG).eval()
    hf.save_pretrained(root / "hf")
    import_hf(root / "hf", root / "imported", name="little-llama")
    return hf, root / "imported"


def _first_loss(run_dir):
    return next(r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r)


def test_a_run_initialised_from_an_imported_model_starts_at_transformers_loss(imported, tmp_path):
    hf, source = imported
    spec = load_spec(source / "spec.yaml", [*RUN, f"training.init_from={source}"])
    run(spec, tmp_path / "run", backend="torch", announce=quiet)
    job = load_job(tmp_path / "run")
    x, y = pretraining_batches(spec, job.shards)[0].get(0, 0, 0)
    with torch.no_grad():
        logits = hf(x).logits
    expected = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1)).item()
    assert _first_loss(tmp_path / "run") == pytest.approx(expected, rel=1e-5)
    # a randomly initialised run of the same spec starts elsewhere
    random = load_spec(source / "spec.yaml", RUN)
    run(random, tmp_path / "random", backend="torch", announce=quiet)
    assert abs(_first_loss(tmp_path / "random") - expected) > 1e-3


def test_a_run_continues_from_another_run_and_its_tokenizer(imported, tmp_path):
    _, source = imported
    first = load_spec(source / "spec.yaml", RUN)
    run(first, tmp_path / "first", backend="torch", announce=quiet)
    second = load_spec(source / "spec.yaml", [*RUN, f"training.init_from={tmp_path / 'first'}",
                                              "training.seed=1"])
    run(second, tmp_path / "second", backend="torch", announce=quiet)
    assert (tmp_path / "second" / "tokenizer.json").read_text() == (tmp_path / "first" / "tokenizer.json").read_text()
    # the second run's model starts where the first ended: its first loss is the first run's final weights' loss
    model = load_model_module(tmp_path / "second" / "build" / "model.py").Model()
    model.load_state_dict(load_checkpoint(list_checkpoints(tmp_path / "first" / "checkpoints")[-1])["model"])
    job = load_job(tmp_path / "second")
    x, y = pretraining_batches(second, job.shards)[0].get(0, 0, 0)
    with torch.no_grad():
        expected = model(x, y)[1].item()
    assert _first_loss(tmp_path / "second") == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("sets, needle", [
    (["model.d_ff=128"], "blocks.0.mlp.gate_proj.weight is (96, 64) there but (128, 64) in this spec's model"),
    (["model.n_layers=3"], "has no tensor blocks.2.attn_norm.weight"),
    (["model.n_layers=1"], "blocks.1.attn.k_proj.weight is not a tensor of this spec's model"),
])
def test_weights_of_another_shape_are_refused_naming_the_tensor(imported, tmp_path, sets, needle):
    _, source = imported
    args = ["run", str(source / "spec.yaml"), "--dry-run", "--out", str(tmp_path / "r")]
    for item in [*RUN, *sets, f"training.init_from={source}"]:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and needle in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("target, needle", [
    ("missing", "no such file or directory"),
    ("empty", "holds neither checkpoints/ (a run directory) nor model.safetensors"),
    ("notes.txt", "expected a run directory, an import-hf output or a .safetensors/.pt file"),
    ("broken.pt", "broken.pt: cannot read PyTorch weights (RuntimeError)"),
])
def test_a_bad_init_from_path_is_one_line(imported, tmp_path, target, needle):
    _, source = imported
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    args = ["run", str(source / "spec.yaml"), "--dry-run", "--out", str(tmp_path / "r"),
            "--set", f"training.init_from={tmp_path / target}"]
    for item in RUN:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and needle in result.stderr and "Traceback" not in result.output


@pytest.mark.integration
def test_deepspeed_ranks_start_from_the_same_weights(imported, tmp_path):
    import os

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    _, source = imported
    spec = load_spec(source / "spec.yaml", [*RUN, f"training.init_from={source}", "cluster.gpus_per_node=2",
                                            "training.global_batch_size=4", "parallelism.zero_stage=2"])
    run(spec, tmp_path / "torch", backend="torch", announce=quiet)
    run(spec, tmp_path / "ds", backend="deepspeed", announce=quiet)
    assert _first_loss(tmp_path / "ds") == pytest.approx(_first_loss(tmp_path / "torch"), rel=1e-4)
