"""The compiler: model.py (readable, standalone, only the paths used), ds_config.json, launch.sh, build."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from llmspec.cli.app import app
from llmspec.compile.build import build, build_files
from llmspec.compile.loading import load_model_module, model_module, model_module_of, objectives_module, pipeline_module
from llmspec.compile.model_source import (
    TEMPLATES,
    features,
    generated_sources,
    model_source,
    render,
    template_text,
    values,
)
from llmspec.errors import LLMSpecError
from llmspec.spec.loading import load_spec, named_specs, parse_spec
from llmspec.spec.post_training import METHODS
from llmspec.train.logprobs import compiled

PIPE = ["parallelism.pipeline=2", "cluster.gpus_per_node=2", "cluster.gpu=cpu"]
VARIANTS = [
    ("tiny", []), ("tiny-gpt2", []), ("tiny-moe", []),
    ("tiny", ["parallelism.activation_checkpointing=selective", "model.dropout=0.1"]),
    ("tiny", ["parallelism.activation_checkpointing=full", "model.tie_embeddings=false", "model.mlp=geglu"]),
    ("tiny-gpt2", ["model.mlp=relu", "model.norm=rmsnorm", "model.bias=false"]),
    ("tiny", [*PIPE, "model.sliding_window=64"]), ("tiny-gpt2", PIPE), ("tiny-moe", [*PIPE, "model.dropout=0.1"]),
    ("tiny", ["model.rope_scaling.factor=8", "model.rope_scaling.original_max_seq_len=64"]),
    ("tiny", ["model.rope_scaling.type=linear", "model.rope_scaling.factor=2"]),
    ("tiny-moe", ["model.moe.capacity_factor=1.25", "parallelism.activation_checkpointing=selective"]),
]
# The 2026 families' combinations (each one of docs/architecture.md's families in miniature)
LONGROPE = ["model.rope_scaling.type=longrope", "model.rope_scaling.original_max_seq_len=64",
            "model.rope_scaling.short_factor=[1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]",
            "model.rope_scaling.long_factor=[2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5]", "model.partial_rotary=0.5"]
GEMMA2 = ["model.layer_types=[sliding, full]", "model.sliding_window=16", "model.norm_placement=sandwich",
          "model.attn_softcap=50.0", "model.final_softcap=30.0", "model.query_scale=0.125", "model.embed_scale=11.3",
          "model.mlp=geglu_tanh"]
GEMMA3 = ["model.layer_types=[sliding, sliding, full]", "model.sliding_window=16", "model.rope_local_theta=10000",
          "model.rope_theta=1000000", "model.rope_scaling.type=linear", "model.rope_scaling.factor=8",
          "model.qk_norm=head", "model.norm_placement=sandwich", "model.embed_scale=11.3", "model.mlp=geglu_tanh"]
FAMILY_VARIANTS = [
    ("tiny", GEMMA2), ("tiny", GEMMA3), ("tiny", [*GEMMA2, "parallelism.activation_checkpointing=full"]),
    ("tiny", ["model.qk_norm=full", "model.norm_placement=post"]),  # OLMo 2
    ("tiny", ["model.nope_layers=2", "parallelism.activation_checkpointing=selective"]),  # SmolLM3
    ("tiny", ["model.partial_rotary=0.25", "model.parallel_residual=true", "model.norm=layernorm", "model.bias=true",
              "model.mlp=gelu", "model.tie_embeddings=false"]),  # Pythia
    ("tiny", LONGROPE),  # Phi-3/4
    ("tiny", ["model.rope_scaling.type=yarn", "model.rope_scaling.factor=4",
              "model.rope_scaling.original_max_seq_len=64", "model.qk_norm=head"]),  # Qwen3 with YaRN
    ("tiny", ["model.layer_types=[chunked, sliding, full]", "model.sliding_window=16",
              "model.attention_chunk_size=32"]),
    ("tiny", ["model.layer_types=[chunked, full]", "model.attention_chunk_size=32", "model.attn_softcap=20.0"]),
    ("tiny", ["model.attention_chunk_size=32", "model.layer_types=[chunked]"]),
    ("tiny", ["model.sliding_window=16", "model.attn_softcap=20.0", "model.query_scale=0.1"]),
    # QLoRA and LoRA on the families' layers: the base quantised around the QK-norms, soft caps and post norms
    ("tiny-lora", [*GEMMA3, "post_training.base_precision=nf4"]),
    ("tiny-lora", ["model.qk_norm=full", "model.norm_placement=post", "post_training.base_precision=int8"]),
    ("tiny-lora", [*GEMMA2, "post_training.adapter.dropout=0.1"]),
    ("tiny", [*PIPE, "model.qk_norm=head", "model.norm_placement=sandwich", "model.embed_scale=11.3",
              "model.final_softcap=30.0", "model.partial_rotary=0.5", "model.attn_softcap=20.0"]),
]
VARIANTS += FAMILY_VARIANTS
# One spec per feature flag of model_source.features, with that feature on (the named specs and VARIANTS cover the
# features off and in combination).
FEATURE_VARIANTS = {
    **{method: (f"tiny-{method}", []) for method in METHODS},
    "rl": ("tiny-ppo", []), "adapter": ("tiny-lora", []), "lora": ("tiny-lora", []),
    "lora_dropout": ("tiny-lora", ["post_training.adapter.dropout=0.1"]),
    "prefix": ("tiny-lora", ["post_training.adapter.type=prefix"]), "value_head": ("tiny-reward", []),
    "nf4": ("tiny-lora", ["post_training.base_precision=nf4", "post_training.double_quant=true"]),
    "int8": ("tiny-lora", ["post_training.base_precision=int8"]),
    "quantised": ("tiny-dpo", ["post_training.adapter.type=lora", "post_training.base_precision=nf4"]),
    "rope": ("tiny", []), "learned": ("tiny-gpt2", []),
    "rope_scaling": ("tiny", ["model.rope_scaling.factor=8", "model.rope_scaling.original_max_seq_len=64"]),
    "rope_llama3": ("tiny", ["model.rope_scaling.factor=8", "model.rope_scaling.original_max_seq_len=64"]),
    "rope_linear": ("tiny", ["model.rope_scaling.type=linear", "model.rope_scaling.factor=2"]),
    "fused_qkv": ("tiny-gpt2", []), "rmsnorm": ("tiny", []), "layernorm": ("tiny-gpt2", []), "gated": ("tiny", []),
    "moe": ("tiny-moe", []), "capacity": ("tiny-moe", ["model.moe.capacity_factor=1.25"]), "tied": ("tiny", []),
    "sliding_window": ("tiny", ["model.sliding_window=64"]), "dropout": ("tiny-gpt2", ["model.dropout=0.1"]),
    "selective": ("tiny", ["parallelism.activation_checkpointing=selective"]),
    "full": ("tiny", ["parallelism.activation_checkpointing=full"]),
    "checkpointing": ("tiny-moe", ["parallelism.activation_checkpointing=full"]),
    "pipeline": ("tiny", [*PIPE, "model.sliding_window=64", "parallelism.activation_checkpointing=full"]),
    "rope_yarn": ("tiny", ["model.rope_scaling.type=yarn", "model.rope_scaling.factor=4"]),
    "rope_longrope": ("tiny", LONGROPE), "partial_rotary": ("tiny", ["model.partial_rotary=0.5"]),
    "nope": ("tiny", ["model.nope_layers=2"]), "local_rope": ("tiny", GEMMA3),
    "qk_norm": ("tiny", ["model.qk_norm=head"]), "qk_norm_head": ("tiny", ["model.qk_norm=head"]),
    "qk_norm_full": ("tiny", ["model.qk_norm=full"]), "pre_norm": ("tiny", []),
    "post_norm": ("tiny", ["model.norm_placement=post"]), "sandwich": ("tiny", ["model.norm_placement=sandwich"]),
    "parallel_residual": ("tiny", ["model.parallel_residual=true"]),
    "chunked": ("tiny", ["model.layer_types=[chunked, full]", "model.attention_chunk_size=32"]),
    "layered": ("tiny", GEMMA2), "masked": ("tiny", ["model.sliding_window=64"]), "context": ("tiny", []),
    "softcap": ("tiny", ["model.attn_softcap=50.0"]), "final_softcap": ("tiny", ["model.final_softcap=30.0"]),
    "query_scale": ("tiny", ["model.query_scale=0.125"]), "embed_scale": ("tiny", ["model.embed_scale=11.3"]),
    "segments": ("tiny", ["data.document_masking=true", "parallelism.activation_checkpointing=full"]),
}


def _variant(name: str, sets: list[str]):
    return load_spec(name, sets)


def _template_flags() -> set[str]:
    """Every name an ``#if`` line of a template tests."""
    return {word for file in TEMPLATES for line in template_text(file).splitlines() if line.startswith("#if ")
            for word in re.findall(r"\w+", line[4:]) if word not in ("and", "or", "not")}


def test_every_feature_flag_selects_code_and_every_template_flag_is_set():
    flags = set(features(load_spec("tiny")))
    assert _template_flags() <= flags, _template_flags() - flags  # a block no spec could ever emit
    # a flag no template tests is vestigial, but for pipeline (it calls for pipeline.py) and a method whose loss is
    # model.py's cross-entropy (no objectives.py of its own)
    assert flags - _template_flags() == {"pipeline", "sft"}
    assert set(FEATURE_VARIANTS) == flags  # the lint check below has a spec for every flag
    placeholders = {name for file in TEMPLATES for name in re.findall(r"\{\{(\w+)\}\}", template_text(file))}
    supplied = set().union(*(values(_variant(*variant)) for variant in FEATURE_VARIANTS.values()))
    assert supplied == placeholders, supplied ^ placeholders  # a value no template reads, or one never given


def test_generated_files_are_lint_clean_and_formatted(tmp_path):
    """Every named spec, VARIANTS, and a spec per feature flag, each built as build lays its files out and checked
    with the project's ruff configuration (model.py a first-party module beside pipeline.py, as in the build)."""
    folders = []
    variants = [(n, []) for n in sorted(named_specs())] + VARIANTS
    for flag, variant in FEATURE_VARIANTS.items():
        assert features(_variant(*variant))[flag], flag
        variants.append(variant)
    for i, (name, sets) in enumerate(variants):
        folder = tmp_path / f"build_{i}"
        folder.mkdir()
        for file, text in generated_sources(_variant(name, sets)).items():
            (folder / file).write_text(text)
        folders.append(folder)
    assert {path.name for folder in folders for path in folder.iterdir()} == set(TEMPLATES)
    ruff = [sys.executable, "-m", "ruff"]
    config = ["--no-cache", "--config", str(Path(__file__).resolve().parents[1] / "pyproject.toml")]
    for folder in folders:
        lint = subprocess.run([*ruff, "check", *config, "--config", f"src = [{str(folder)!r}]", str(folder)],
                              capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run([*ruff, "format", "--check", *config, *map(str, folders)], capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.mark.parametrize("name", sorted(named_specs()))
def test_generated_files_import_torch_only(name):
    for file, text in generated_sources(load_spec(name)).items():
        tree = ast.parse(text)
        modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                   for alias in node.names}
        modules |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        beside = {"model"} if file != "model.py" else set()  # pipeline.py builds on the model.py beside it
        assert modules <= {"torch", "dataclasses", "functools", "math"} | beside, (file, modules)


def test_model_py_holds_the_model_only():
    """model.py is nanoGPT's shape of file: the model and its cross-entropy; a method's loss is in objectives.py,
    the pipeline engine's layers in pipeline.py, each written only for a spec that uses it."""
    for name in ("tiny-reward", "tiny-dpo", "tiny-ppo", "tiny-grpo"):
        sources = generated_sources(load_spec(name))
        assert set(sources) == {"model.py", "objectives.py"}, name
        method = name.removeprefix("tiny-")
        assert f"def {method}_loss(" in sources["objectives.py"] and "_loss(" not in sources["model.py"], name
        assert "def cross_entropy" not in sources["objectives.py"] and "class " not in sources["objectives.py"]
    assert set(generated_sources(load_spec("tiny-sft"))) == {"model.py"}  # sft trains on model.py's cross-entropy
    piped = generated_sources(load_spec("tiny", PIPE))
    assert set(piped) == {"model.py", "pipeline.py"} and "Layer" not in piped["model.py"]
    assert "def pipeline_layers(" in piped["pipeline.py"]


def test_only_the_paths_the_spec_uses_are_emitted():
    gpt2 = model_source(load_spec("gpt2-124m"))
    for absent in ("rope", "RMSNorm", "MoE", "sliding_window", "checkpoint", "gate_proj", "enable_gqa", "math"):
        assert absent not in gpt2, absent
    assert "nn.LayerNorm" in gpt2 and "qkv_proj" in gpt2 and "pos_embed" in gpt2 and 'approximate="tanh"' in gpt2
    llama = model_source(load_spec("llama3-8b"))
    for absent in ("pos_embed", "LayerNorm", "qkv_proj", "MoE", "Dropout", "pipeline_layers", "sliding_window"):
        assert absent not in llama, absent
    assert "apply_rope" in llama and "rope_low_freq_factor" not in llama and "enable_gqa=True" in llama
    scaled = model_source(load_spec("llama3-405b"))
    assert "rope_low_freq_factor: float = 1.0" in scaled and "import math" in scaled
    assert "class MoE" in model_source(load_spec("mixtral-8x7b"))
    assert "sliding_window_mask" in model_source(load_spec("mistral-7b"))


def test_config_defaults_are_the_spec_values():
    spec = load_spec("llama3-405b")
    config = model_module(spec).ModelConfig()
    mo = spec.model
    assert (config.vocab_size, config.d_model, config.n_layers, config.n_heads, config.n_kv_heads, config.head_dim,
            config.d_ff, config.max_seq_len) == (mo.vocab_size, mo.d_model, mo.n_layers, mo.n_heads, mo.n_kv_heads,
                                                 mo.head_dim, mo.d_ff, mo.max_seq_len)
    assert config.rope_theta == mo.rope_theta and config.norm_eps == mo.norm_eps
    assert config.rope_scaling_factor == mo.rope_scaling.factor


def test_template_conditions_are_checked():
    with pytest.raises(ValueError, match="unknown feature 'ropes'"):
        render("#if ropes\nx\n#endif\n", {"rope": True}, {})
    with pytest.raises(ValueError, match="without #endif"):
        render("#if rope\nx\n", {"rope": True}, {})
    assert render("#if a and not b or c\nyes\n#endif\n", {"a": False, "b": True, "c": True}, {}) == "yes\n"


def _loss_and_grads(spec, seed=0):
    torch.manual_seed(seed)
    model = model_module(spec).Model()
    torch.manual_seed(1)
    idx = torch.randint(0, spec.model.vocab_size, (2, 96))
    logits, loss = model(idx, torch.roll(idx, -1, 1))
    loss.backward()
    return logits, loss, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2", "tiny-moe"])
def test_checkpointing_changes_memory_not_results(name):
    base_logits, base_loss, base_grads = _loss_and_grads(load_spec(name, ["model.sliding_window=32"]))
    assert base_logits.shape == (2, 96, load_spec(name).model.vocab_size)
    for mode in ("selective", "full"):
        _, loss, grads = _loss_and_grads(load_spec(name, ["model.sliding_window=32",
                                                          f"parallelism.activation_checkpointing={mode}"]))
        assert torch.equal(loss, base_loss)
        for key, grad in base_grads.items():
            assert grads[key] is not None and torch.allclose(grads[key], grad, atol=1e-6), (mode, key)


def test_forward_without_targets_and_in_eval_mode():
    spec = load_spec("tiny", ["parallelism.activation_checkpointing=full"])
    model = model_module(spec).Model().eval()
    with torch.no_grad():
        logits, loss = model(torch.zeros(1, 5, dtype=torch.long))
    assert loss is None and logits.shape == (1, 5, spec.model.vocab_size)


def test_sliding_window_limits_what_a_query_sees():
    spec = load_spec("tiny", ["model.sliding_window=4"])
    torch.manual_seed(0)
    model = model_module(spec).Model().eval()
    idx = torch.randint(0, 2048, (1, 12))
    changed = idx.clone()
    changed[0, 0] = (idx[0, 0] + 1) % 2048
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    # one layer moves information at most window-1 positions: 4 layers reach position 4·3 = 12 at the most
    assert not torch.allclose(a[0, 1], b[0, 1])
    one_layer = load_spec("tiny", ["model.sliding_window=4", "model.n_layers=1"])
    torch.manual_seed(0)
    model = model_module(one_layer).Model().eval()
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    assert not torch.allclose(a[0, 3], b[0, 3]) and torch.allclose(a[0, 4:], b[0, 4:])


@pytest.mark.parametrize("name, sets", [
    ("tiny", []), ("tiny-gpt2", []), ("tiny-moe", []),
    ("tiny", ["model.qk_norm=head", "model.norm_placement=sandwich", "model.embed_scale=11.3",
              "model.attn_softcap=20.0", "model.final_softcap=30.0", "model.partial_rotary=0.5",
              "model.query_scale=0.1"]),
    ("tiny", ["model.parallel_residual=true", "model.rope_scaling.type=yarn", "model.rope_scaling.factor=4"]),
])
def test_pipeline_layers_compute_the_same_model(name, sets):
    spec = load_spec(name, [*PIPE, "model.sliding_window=16", *sets])
    module = model_module(spec)
    torch.manual_seed(0)
    model = module.Model().eval()
    layers, shared = [], {}
    for key, cls, method in pipeline_module(module).pipeline_layers(module.ModelConfig()):
        layer = shared.get(key) or cls(module.ModelConfig())
        if key:
            shared[key] = layer
        layers.append((layer, method))
    # copy Model's weights into the flat layers
    embed = layers[0][0]
    embed.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith(("embed.", "pos_embed."))})
    for i, (layer, _) in enumerate(layers[1:1 + spec.model.n_layers]):
        layer.load_state_dict(model.blocks[i].state_dict())
    head = layers[1 + spec.model.n_layers][0]
    head.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith("norm.")
                          or (k.startswith("lm_head.") and not spec.model.tie_embeddings)})
    idx = torch.randint(0, spec.model.vocab_size, (2, 40))
    x = idx
    with torch.no_grad():
        for layer, method in layers:
            x = getattr(layer, method)(x)
        expected, _ = model(idx)
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=1e-5)


def test_init_scales_residual_projections():
    spec = load_spec("tiny", ["model.n_layers=8", "model.d_model=256", "model.n_heads=4", "model.n_kv_heads=4"])
    torch.manual_seed(0)
    model = model_module(spec).Model()
    std = spec.model.init_std
    assert abs(model.blocks[0].attn.q_proj.weight.std().item() - std) < 0.1 * std
    assert abs(model.blocks[0].attn.o_proj.weight.std().item() - std / 4) < 0.1 * std / 4


# ---- ds_config -------------------------------------------------------------------------------------------
DS_VARIANTS = [(n, []) for n in sorted(named_specs())] + [
    ("llama2-7b", ["parallelism.offload_optimizer=cpu", "parallelism.offload_params=cpu"]),
    ("gpt2-124m", ["training.precision=fp16", "parallelism.zero_stage=2", "parallelism.offload_optimizer=nvme"]),
    ("tiny", ["parallelism.activation_checkpointing=full", "training.schedule.warmup_steps=0"]),
    ("llama3-8b", ["training.precision=fp8", "cluster.gpu=H100-SXM"]),  # the bf16 engine: DeepSpeed has no FP8
]


@pytest.fixture(scope="module")
def deepspeed_config():
    import os

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed.runtime.config as ds_runtime_config

    return ds_runtime_config


def test_ds_config_parses_with_deepspeeds_own_class(deepspeed_config, monkeypatch):
    # DeepSpeed takes the data-parallel size from an initialised process group; stand in for one rank.
    monkeypatch.setattr(deepspeed_config.dist, "get_rank", lambda *args, **kwargs: 0)

    class DataParallel:
        def __init__(self, size):
            self.size = size

        def get_data_parallel_world_size(self):
            return self.size

    for name, sets in DS_VARIANTS:
        spec = load_spec(name, sets)
        text = build_files(spec)["ds_config.json"]
        config = deepspeed_config.DeepSpeedConfig(json.loads(text), mpu=DataParallel(spec.parallelism.data_parallel))
        tr, par = spec.training, spec.parallelism
        assert config.zero_optimization_stage == par.zero_stage
        assert (config.train_batch_size, config.train_micro_batch_size_per_gpu, config.gradient_accumulation_steps) \
            == (tr.global_batch_size, tr.micro_batch_size, tr.gradient_accumulation_steps)
        assert config.bfloat16_config.enabled == (tr.precision in ("bf16", "fp8"))
        assert config.float16_config.enabled == (tr.precision == "fp16")
        assert config.gradient_clipping == tr.grad_clip
        assert config.scheduler_name == "WarmupCosineLR"
        assert config.scheduler_params["warmup_type"] == "linear"
        assert config.scheduler_params["total_num_steps"] == tr.steps
        offload = config.zero_config.offload_optimizer
        assert (str(getattr(offload.device, "value", offload.device)) if offload else "none") == par.offload_optimizer


def test_ds_config_model_is_strict():
    from pydantic import ValidationError

    from llmspec.compile.ds_config import DeepSpeedConfig, ds_config

    good = ds_config(load_spec("tiny")).model_dump(exclude_none=True)
    misspelt = dict(good)
    misspelt["zero_optimisation"] = misspelt.pop("zero_optimization")
    with pytest.raises(ValidationError, match="zero_optimisation"):
        DeepSpeedConfig.model_validate(misspelt)


# ---- launch.sh and build -------------------------------------------------------------------------------
def test_launch_script_single_and_multi_node():
    one = build_files(load_spec("tiny"))
    assert "--num_gpus 1" in one["launch.sh"] and "--hostfile" not in one["launch.sh"] and "hostfile" not in one
    assert "export DS_ACCELERATOR=cpu" in one["launch.sh"]
    many = build_files(load_spec("llama2-7b"))
    # no hosts named: no hostfile is invented; launch.sh takes the user's and says so when it is missing
    assert "hostfile" not in many and '--hostfile "$HOSTFILE" ' in many["launch.sh"]
    assert "--num_nodes 64 --num_gpus 8" in many["launch.sh"] and "DS_ACCELERATOR" not in many["launch.sh"]
    assert "NCCL_SOCKET_IFNAME" in many["launch.sh"] and "MASTER_PORT" in many["launch.sh"]
    named = build_files(load_spec("llama2-7b", ["cluster.nodes=2", "cluster.hosts=[gpu-a, gpu-b.example.org]"]))
    assert named["hostfile"] == "gpu-a slots=8\ngpu-b.example.org slots=8\n"
    assert "--hostfile hostfile --master_port" in named["launch.sh"]


def test_launch_script_without_hosts_refuses_in_one_line(tmp_path):
    build(load_spec("tiny", ["cluster.nodes=2", "training.global_batch_size=32"]), tmp_path / "b")
    result = subprocess.run(["bash", str(tmp_path / "b" / "launch.sh")], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode != 0 and "set HOSTFILE to a DeepSpeed hostfile of 2 hosts with slots=1" in result.stderr


@pytest.mark.parametrize("text, needle", [
    ("a slots=8\nb slots=8\n", None),
    ("# nodes\n\na slots=8   # the first\nb slots=8\n", None),
    ("a slots=8\n", "names 1 host(s), but cluster.nodes is 2"),
    ("a slots=8\nb slots=4\n", "hosts:2: b has slots=4, but cluster.gpus_per_node is 8"),
    ("a slots=8\na slots=8\n", "hosts:2: host a is listed twice"),
    ("a\nb slots=8\n", "hosts:1: expected 'HOST slots=N'"),
    ("$(reboot) slots=8\nb slots=8\n", "is not a host name"),
    ("# nothing\n", "names no host"),
])
def test_hostfile_is_validated_against_the_cluster(tmp_path, text, needle):
    (tmp_path / "hosts").write_text(text)
    result = CliRunner().invoke(app, ["build", "llama2-7b", "--set", "cluster.nodes=2", "--hostfile",
                                      str(tmp_path / "hosts"), "-o", str(tmp_path / "b")])
    if needle is None:
        assert result.exit_code == 0, result.output
        assert (tmp_path / "b" / "hostfile").read_text() == "a slots=8\nb slots=8\n"
        assert "cluster:\n" in (tmp_path / "b" / "spec.yaml").read_text()
        assert "- a\n" in (tmp_path / "b" / "spec.yaml").read_text()
    else:
        assert result.exit_code == 2 and needle in result.stderr and "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "b").exists()


def test_resumed_builds_keep_what_the_user_edited(tmp_path):
    spec = load_spec("tiny")
    build(spec, tmp_path / "b")
    launch = tmp_path / "b" / "launch.sh"
    launch.write_text(launch.read_text().replace("set -euo pipefail", "set -euo pipefail\nexport NCCL_DEBUG=INFO"))
    build(spec, tmp_path / "b", keep_edited=True)
    assert "NCCL_DEBUG=INFO" in launch.read_text()
    with pytest.raises(LLMSpecError, match="launch.sh: edited since llmspec wrote it"):
        build(spec, tmp_path / "b")  # still known as edited


def test_build_writes_every_file(tmp_path):
    spec = load_spec("tiny-moe")
    paths = build(spec, tmp_path / "out")
    names = {p.name for p in paths}
    assert names == {"model.py", "ds_config.json", "launch.sh", "plan.json", "spec.yaml"}
    out = tmp_path / "out"
    assert (out / "launch.sh").stat().st_mode & 0o111
    assert json.loads((out / "plan.json").read_text())["params"]["total"] == 1_410_688
    assert parse_spec((out / "spec.yaml").read_text()) == spec
    assert not list(out.glob(".*.tmp"))


def test_cli_build_and_bad_output(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["build", "tiny", "-o", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b" / "model.py").exists()
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    result = runner.invoke(app, ["build", "tiny", "-o", str(blocker)])
    assert result.exit_code == 2 and "not a directory" in result.output
    assert blocker.read_text() == "keep me"
    result = runner.invoke(app, ["build", "tiny", "-o", str(tmp_path / "c"), "--set", "model.d_modle=3"])
    assert result.exit_code == 2 and "d_model" in result.output and not (tmp_path / "c").exists()


def test_generated_model_runs_as_a_standalone_file(tmp_path):
    build(load_spec("tiny"), tmp_path)
    code = ("import torch, model; m = model.Model(); "
            "l, loss = m(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long)); "
            "print(tuple(l.shape), loss.item() > 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(1, 8, 2048) True"


def test_the_files_beside_model_py_import_it_standalone(tmp_path):
    """objectives.py and pipeline.py run in the build directory with PyTorch alone, pipeline.py on the model.py
    beside it."""
    build(load_spec("tiny", PIPE), tmp_path / "piped")
    code = "import model, pipeline; c = model.ModelConfig(); print(len(pipeline.pipeline_layers(c)) - c.n_layers)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "piped", capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"  # the embedding, the head and the tied embedding that scores
    build(load_spec("tiny-dpo"), tmp_path / "dpo")
    code = "import torch, objectives; x = torch.zeros(2, 4); print(objectives.dpo_loss(*x.T).item())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "dpo", capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(0.0)).item())


def test_a_model_is_linked_to_the_objectives_of_its_own_build(tmp_path):
    """compiled(model) is the objectives.py beside the model.py the model's class came from: two builds whose
    model.py are the same and whose objectives differ (beta) stay apart; a method without one has None."""
    built = {}
    for beta in ("0.1", "0.5"):
        build(load_spec("tiny-dpo", [f"post_training.beta={beta}"]), tmp_path / beta)
        built[beta] = load_model_module(tmp_path / beta / "model.py")
    assert (tmp_path / "0.1" / "model.py").read_text() == (tmp_path / "0.5" / "model.py").read_text()
    for beta, module in built.items():
        model = module.Model()
        assert model_module_of(model) is module and compiled(model) is objectives_module(module)
        assert compiled(model).dpo_loss.__defaults__[0] == float(beta)
    plain = model_module(load_spec("tiny-sft"))
    assert compiled(plain.Model()) is None and objectives_module(plain) is None and pipeline_module(plain) is None
    assert compiled(torch.nn.Linear(1, 1)) is None  # not a compiled model


def test_a_rebuild_removes_the_generated_files_it_no_longer_writes(tmp_path):
    build(load_spec("tiny-dpo"), tmp_path / "a")
    assert (tmp_path / "a" / "objectives.py").is_file()
    build(load_spec("tiny-sft"), tmp_path / "a")
    assert not (tmp_path / "a" / "objectives.py").exists() and (tmp_path / "a" / "model.py").is_file()
    build(load_spec("tiny", PIPE), tmp_path / "b")
    (tmp_path / "b" / "pipeline.py").write_text("# mine\n")  # edited: the user's from now on
    build(load_spec("tiny"), tmp_path / "b")
    assert (tmp_path / "b" / "pipeline.py").read_text() == "# mine\n"


def test_build_names_come_from_validated_specs():
    with pytest.raises(Exception, match="name"):
        parse_spec(Path("specs/tiny.yaml").read_text().replace("name: tiny", 'name: "../evil; rm -rf"'))


@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2"])
def test_the_file_generates_on_its_own(name):
    """model.py stands alone: Model.generate samples without llmspec (greedy is deterministic)."""
    spec = load_spec(name)
    torch.manual_seed(0)
    model = model_module(spec).Model().eval()
    prompt = torch.tensor([[1, 2, 3]])
    out = model.generate(prompt, max_new_tokens=5, temperature=0)
    assert out.shape == (1, 8) and torch.equal(out[:, :3], prompt)
    assert torch.equal(out, model.generate(prompt, max_new_tokens=5, temperature=0))
    logits, _ = model(out[:, :-1])
    assert torch.equal(out[0, 3:], logits[0, 2:].argmax(-1))  # each new token is the argmax after its prefix
    sampled = model.generate(prompt, max_new_tokens=5, temperature=1.0, top_k=4)
    assert sampled.shape == (1, 8)


CACHE_VARIANTS = [
    ("tiny", []), ("tiny-gpt2", ["model.dropout=0.1"]), ("tiny-moe", []),
    ("tiny", ["model.sliding_window=5"]),  # decoding past the window
    ("tiny-lora", ["post_training.adapter.type=prefix", "post_training.adapter.n_virtual=3"]),
    ("tiny-lora", []),
    # the 2026 families' layers, windows and chunks shorter than the 12 tokens decoded
    *[(name, [*(s.replace("=16", "=5").replace("=32", "=4") for s in sets)]) for name, sets in FAMILY_VARIANTS
      if not any(s.startswith("parallelism.pipeline") for s in sets)],
]


@pytest.mark.parametrize(("name", "sets"), CACHE_VARIANTS)
def test_kv_cache_decoding_equals_the_full_forward(name, sets):
    """The prompt once, then one token per call against the KV cache: the same next-token logits at every position
    as one forward over the whole sequence (RoPE/learned positions offset, sliding window, prefix keys, LoRA)."""
    torch.manual_seed(0)
    model = model_module(load_spec(name, sets)).Model().eval()
    for parameter in model.parameters():  # adapters start at zero (LoRA B) or near it: make them count
        if parameter.requires_grad and parameter.dim() > 1:
            torch.nn.init.normal_(parameter, std=0.05)
    tokens = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        full = model(tokens)[0]
        model.start_cache(tokens.shape[1])
        steps = [model(tokens[:, :4])[0]] + [model(tokens[:, i : i + 1])[0] for i in range(4, tokens.shape[1])]
        assert model.cached_tokens() == tokens.shape[1]
        model.stop_cache()
    assert steps[0].shape[1] == 1  # the prompt's last position only: all the next token needs
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 3:], atol=1e-5, rtol=1e-4)
    assert model.cached_tokens() == 0
    with pytest.raises(ValueError, match="one token per call"):
        model.start_cache(12)
        model(tokens[:, :4])
        model(tokens[:, 4:6])
    model.stop_cache()


def test_kv_cache_sampling_equals_recomputing_the_window():
    """The one sampler (llmspec.train.sampling) draws the same tokens with the cache as without it, batched, and
    pads the rows that stopped with the stop token."""
    from llmspec.train.sampling import sample

    torch.manual_seed(0)
    model = model_module(load_spec("tiny")).Model().train()
    prompt = torch.randint(0, 2048, (3, 5))
    with_cache = sample(model, prompt, 8, 256, temperature=1.0, generator=torch.Generator().manual_seed(1))
    without = sample(model, prompt, 8, 12, temperature=1.0, generator=torch.Generator().manual_seed(1))  # no room
    assert model.training and model.cached_tokens() == 0  # mode restored, cache dropped
    assert torch.equal(with_cache, without) and with_cache.shape == (3, 13)
    stop = int(with_cache[0, 6])  # row 0's second new token: stop there
    stopped = sample(model, prompt, 8, 256, temperature=1.0, generator=torch.Generator().manual_seed(1),
                     stop_token=stop)
    assert torch.equal(stopped[0, :7], with_cache[0, :7]) and (stopped[0, 7:] == stop).all()


@pytest.mark.parametrize("name, sets", [
    ("tiny", []), ("tiny-moe", []), ("tiny-moe", ["model.moe.capacity_factor=0.5"]), ("tiny", GEMMA2), ("tiny", GEMMA3),
    ("tiny", LONGROPE),
    ("mistral-7b", ["model.n_layers=1", "model.d_model=64", "model.n_heads=4", "model.n_kv_heads=2", "model.d_ff=96",
                    "model.vocab_size=128", "model.sliding_window=8"]),
])
def test_16_bit_parameters_with_fp32_buffers_train(name, sets):
    """DeepSpeed's bf16 mode casts parameters, not buffers: RoPE tables and masks must follow the activations."""
    spec = load_spec(name, sets)
    model = model_module(spec).Model().train()
    for param in model.parameters():
        param.data = param.data.to(torch.bfloat16)
    assert any(buffer.dtype == torch.float32 for buffer in model.buffers())
    idx = torch.randint(0, spec.model.vocab_size, (2, 16))
    logits, loss = model(idx, idx)
    loss.backward()
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in model.parameters())


def test_build_keeps_a_hand_edited_file_unless_forced(tmp_path):
    spec = load_spec("tiny")
    build(spec, tmp_path / "b")
    model = tmp_path / "b" / "model.py"
    build(spec, tmp_path / "b")  # unchanged files: rebuilding is fine
    model.write_text(model.read_text() + "\n# my change\n")
    other = load_spec("tiny", ["model.n_layers=2"])
    result = CliRunner().invoke(app, ["build", "tiny", "--set", "model.n_layers=2", "-o", str(tmp_path / "b")])
    assert result.exit_code == 2 and "model.py: edited since llmspec wrote it" in result.stderr
    assert model.read_text().endswith("# my change\n")
    assert "n_layers: int = 4" in model.read_text()  # nothing else was written either
    build(other, tmp_path / "b", force=True)
    assert "# my change" not in model.read_text() and "n_layers: int = 2" in model.read_text()


def test_build_never_replaces_a_file_it_did_not_write(tmp_path):
    """`llmspec build spec.yaml -o .`: the output directory holds the input spec, which build would replace."""
    (tmp_path / "spec.yaml").write_text(named_specs()["tiny"].read_text())
    before = (tmp_path / "spec.yaml").read_text()
    result = CliRunner().invoke(app, ["build", str(tmp_path / "spec.yaml"), "-o", str(tmp_path)])
    assert result.exit_code == 2 and "spec.yaml: not written by llmspec build" in result.stderr
    assert (tmp_path / "spec.yaml").read_text() == before and not (tmp_path / "model.py").exists()
    build(load_spec("tiny"), tmp_path / "b")
    build(load_spec("tiny"), tmp_path / "b")  # its own files: rebuilt freely


def test_moe_capacity_fixes_the_rows_each_expert_computes_in_training():
    def run(factor, train=True):
        spec = load_spec("tiny-moe", [f"model.moe.capacity_factor={factor}"] if factor else [])
        torch.manual_seed(0)
        model = model_module(spec).Model().train(train)
        rows = []
        for block in model.blocks:
            for expert in block.mlp.experts:
                expert.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
        idx = torch.randint(0, spec.model.vocab_size, (2, 64), generator=torch.Generator().manual_seed(1))
        logits, loss = model(idx, torch.roll(idx, -1, 1))
        return loss, rows

    tokens, top_k, experts, layers = 128, 2, 4, 2
    dropless, routed = run(None)
    assert sum(routed) == layers * tokens * top_k  # every routed token once
    loss, rows = run(0.5)  # each expert a fixed ⌈0.5 · 128 · 2 / 4⌉ = 32 rows: the busier ones drop tokens
    assert rows == [32] * layers * experts and loss != dropless
    loss, rows = run(2.0)  # capacity 128 = every token: padding only, the dropless model's loss
    assert rows == [128] * layers * experts and torch.allclose(loss, dropless, atol=1e-6)
    loss, rows = run(0.5, train=False)  # inference routes every token
    assert sum(rows) == layers * tokens * top_k and torch.equal(loss, run(None, train=False)[0])


@pytest.mark.parametrize("sets", [[], ["parallelism.activation_checkpointing=full"], ["model.partial_rotary=0.5",
                                                                                    "model.qk_norm=head"]])
def test_a_packed_row_computes_each_document_as_if_alone(sets):
    """Document masking: a row packing three documents gives each the logits it has alone (attention stays within
    it, RoPE restarts at its first token), and its gradients flow; without segments the row is one sequence."""
    model = model_module(load_spec("tiny", ["data.document_masking=true", *sets])).Model()
    torch.manual_seed(0)
    docs = [torch.randint(0, 2048, (n,)) for n in (5, 7, 4)]
    packed = torch.cat(docs)[None].repeat(2, 1)
    segments = torch.cat([torch.full((len(doc),), i) for i, doc in enumerate(docs)])[None].repeat(2, 1)
    logits, loss = model(packed, packed, segments=segments)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        alone = torch.cat([model(doc[None])[0] for doc in docs], dim=1)
        whole = model(packed[:1])[0]
    torch.testing.assert_close(logits[:1].detach(), alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(whole[:, 5:], alone[:, 5:], atol=1e-3)  # without segments the documents see each other
