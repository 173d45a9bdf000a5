"""Every spec field is consumed where docs/architecture.md says it is.

Each field is changed on its own (on the tiny spec, in a context where the change can show) and the test records
which outputs move: the plan (``plan --json`` and the inference plan), the compiled files (model.py,
ds_config.json, launch.sh) and the transformers config (``export-hf``). A field moves all three, or is named below
with the consumers it has and why. The fields declared ``run`` are exactly those the run's code reads from the spec
(an AST walk of its modules).
"""

from __future__ import annotations

import ast
import functools
import json
from pathlib import Path

import pytest

from llmspec.compile.build import build_files
from llmspec.errors import LLMSpecError
from llmspec.interop.hf_config import hf_config
from llmspec.planner.inference import inference_plan
from llmspec.planner.training import plan
from llmspec.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
EVERYWHERE = {"plan", "compile", "hf"}

# Fields that do not move all three outputs, with the consumers they have ("run": read by `llmspec run`).
CONSUMERS: dict[str, set[str]] = {
    # the planner counts parameters and FLOPs: which gated activation, eps, RoPE's base and scaling, and the
    # initialisation change none of them
    # swiglu → geglu; gelu vs swiglu moves the plan (tested via model.norm); DeepSpeed's AutoEP runs swiglu experts
    "model.mlp": {"compile", "hf", "run"},
    "model.norm_eps": {"compile", "hf"},
    "model.rope_theta": {"compile", "hf"},
    "model.rope_scaling": {"compile", "hf"},
    "model.init_std": {"compile", "hf"},
    # Llama-family configs have no residual dropout (GPT-2's resid_pdrop: see tiny-gpt2)
    "model.dropout": {"compile", "plan"},
    # the batch: the model is built for max_seq_len; DeepSpeed gets micro-batch and accumulation
    "training.seq_len": {"plan", "run"},
    "training.micro_batch_size": {"compile", "plan", "run"},
    "training.global_batch_size": {"compile", "plan", "run"},
    "training.tokens": {"compile", "plan", "run"},
    "training.max_steps": {"compile", "plan", "run"},
    "training.precision": {"compile", "plan", "run"},
    "training.optimizer.name": {"compile", "plan", "run"},  # the planner counts optimizer states
    # the optimizer and schedule: ds_config.json and the run, never memory or time
    "training.optimizer.lr": {"compile", "run"},
    "training.optimizer.betas": {"compile", "run"},
    "training.optimizer.weight_decay": {"compile", "run"},
    "training.optimizer.eps": {"compile", "run"},
    "training.schedule.warmup_steps": {"compile", "run"},
    "training.schedule.min_lr": {"compile", "run"},
    "training.grad_clip": {"compile", "run"},
    "training.log_interval": {"compile", "run"},  # ds_config's steps_per_print
    "training.eval_interval": {"run"},
    "training.checkpoint_interval": {"run"},
    "training.seed": {"run"},
    "training.loggers": {"run"},  # where the run's metrics go besides metrics.jsonl
    # the layout: DeepSpeed's config and launch, and the plan; transformers knows nothing of it
    "parallelism.zero_stage": {"compile", "plan", "run"},
    "parallelism.tensor": {"compile", "plan", "run"},
    "parallelism.pipeline": {"compile", "plan", "run"},
    "parallelism.activation_checkpointing": {"compile", "plan"},
    "parallelism.offload_optimizer": {"compile", "plan", "run"},
    "parallelism.offload_params": {"compile", "plan", "run"},  # the engine names the offload it runs
    "parallelism.overlap_comm": {"compile", "plan"},
    "parallelism.reduce_bucket_size": {"compile", "plan"},
    "parallelism.allgather_bucket_size": {"compile"},  # DeepSpeed's ZeRO-1/2 gather bucket: not a peak term
    "parallelism.prefetch_bucket_size": {"compile", "plan"},
    "parallelism.max_live_parameters": {"compile"},  # a ZeRO-3 cap the planner's gather term stays under
    "parallelism.nvme_path": {"compile", "run"},  # ds_config's swap folder; the engine checks it before offloading
    # plan-only: what-if inputs the engine does not (yet) execute: interleaving, other byte regimes
    "parallelism.virtual_stages": {"plan", "run"},  # run refuses v > 1
    # run refuses it (the compiled attention exchanges no keys and values); the build's batch split follows the
    # data-parallel degree it derives
    "parallelism.context": {"compile", "plan", "run"},
    "parallelism.sequence_parallel": {"plan", "run"},  # run refuses it: AutoTP holds the sequence whole
    "parallelism.tp_comm_overlap": {"plan", "run"},  # run refuses it: AutoTP waits for each collective
    "parallelism.ep_comm_overlap": {"plan", "run"},  # run refuses it: AutoEP waits for each all-to-all
    "published": {"plan"},  # shown beside the plan's own figure
    "training.fp8_library": {"plan"},  # what FP8 linears save and keep: planned (run refuses fp8)
    "cluster.hosts": {"compile", "run"},  # the hostfile and launch.sh; run refuses several nodes without hosts
    "training.init_from": {"run"},  # the weights before step 0: nothing planned or compiled changes
    "post_training": {"compile", "plan", "run"},  # the method: its batches, loss and extra models
    "parallelism.first_stage_layers": {"plan", "run"},  # run partitions DeepSpeed's pipeline as given
    "parallelism.last_stage_layers": {"plan", "run"},
    "parallelism.expert": {"compile", "plan", "run"},  # ds_config's expert_parallel (AutoEP)
    "parallelism.byte_regime": {"plan", "run"},  # run refuses pure16 (its engines keep an fp32 master)
    # the cluster: where and how fast; the compiled files name the GPU count and nodes
    "cluster.gpu": {"compile", "plan", "run"},
    "cluster.gpus_per_node": {"compile", "plan", "run"},
    "cluster.nodes": {"compile", "plan", "run"},  # run refuses several nodes without hosts
    "cluster.intra_node_bandwidth": {"plan"},
    "cluster.inter_node_bandwidth": {"plan"},
    "cluster.price_per_gpu_hour": {"plan"},
    "cluster.efficiency": {"plan"},
    "cluster.calibration": {"plan"},
    "cluster.memory_reserve_gib": {"plan"},  # and so `run`, which refuses what the plan says does not fit
    "cluster.host_memory_gib": {"plan"},  # likewise
    "cluster.nvme_gib": {"plan"},
    # data: only the run reads it
    "data.corpus": {"run"},
    "data.tokenizer.vocab_size": {"run"},
    "data.tokenizer.path": {"run"},
    "data.val_fraction": {"run"},
    "data.sources": {"run"},
    "data.workers": {"run"},  # how many processes encode: the same shards for any number
    "data.tokenizer.sample_bytes": {"run"},
    "data.sampler": {"run"},
    "data.document_masking": {"compile", "plan", "run"},  # the model's segments; what masking saves
    # NoPE layers skip a rotation: no parameter, counted FLOP or saved byte moves
    "model.nope_layers": {"compile", "hf"},
    # scales: a multiplication that keeps nothing for backward and counts no FLOP
    "model.embed_scale": {"compile", "hf"},
    "model.query_scale": {"compile", "hf"},
}
# the run reads these through a derived property of the spec
READ_AS = {"training.max_steps": "training.steps", "training.tokens": "training.steps",
           "parallelism.first_stage_layers": "spec.stage_layers", "parallelism.last_stage_layers": "spec.stage_layers"}
# The run's code: what `llmspec run` executes besides the compiled files (which the test above covers).
RUN_CODE = ("llmspec/train", "llmspec/data", "backends", "llmspec/runner.py")
DERIVED = {"training.gradient_accumulation_steps", "parallelism.data_parallel"}  # computed, never set apart

GPT2_FAMILY = ["model.norm=layernorm", "model.position=learned", "model.bias=true", "model.mlp=gelu",
               "model.n_kv_heads=4"]
# A change that shows; a list is a set of --set changes made together (the HF family ties them).
CHANGE = {
    "training.init_from": "runs/tiny", "parallelism.first_stage_layers": "1", "parallelism.last_stage_layers": "1",
    "cluster.hosts": "[node-a, node-b]", "post_training": "{method: dpo, adapter: {type: lora}}",
    "model.norm": GPT2_FAMILY, "model.position": GPT2_FAMILY, "model.mlp": "geglu",
    "model.rope_scaling": "{type: linear, factor: 2.0}", "model.moe": "{n_experts: 4, top_k: 2}",
    "model.sliding_window": "64", "model.dropout": "0.1", "model.head_dim": "64",
    "training.precision": "bf16", "training.optimizer.name": "sgd", "training.optimizer.betas": "[0.8, 0.9]",
    "training.tokens": "2M", "training.max_steps": "300", "training.micro_batch_size": "8",
    "training.seq_len": "128", "training.fp8_library": "torchao", "training.loggers": "[csv]",
    "parallelism.nvme_path": "nvme-swap",
    "cluster.host_memory_gib": "0.001", "cluster.nvme_gib": "0.001",
    "parallelism.activation_checkpointing": "full", "parallelism.offload_optimizer": "cpu",
    "parallelism.offload_params": "cpu", "parallelism.byte_regime": "zero_paper",
    "parallelism.reduce_bucket_size": "1000", "parallelism.prefetch_bucket_size": "1000",
    "parallelism.allgather_bucket_size": "1000", "parallelism.max_live_parameters": "1000",
    "cluster.gpu": "A100-80GB", "cluster.intra_node_bandwidth": "0.01", "cluster.inter_node_bandwidth": "0.01",
    "cluster.price_per_gpu_hour": "3.0", "cluster.efficiency": "0.3",
    "published": "{source: a paper, tflops_per_gpu: 1.0}",
    "data.corpus": "notes.txt", "data.tokenizer.path": "tokenizer.json", "data.tokenizer.vocab_size": "1024",
    "data.sources": "[{path: notes.txt}]", "data.workers": "1", "data.sampler": "random",
    "cluster.calibration": "rates.json",
    # the 2026 families' fields (the HF family each implies changes with them)
    "model.qk_norm": "head", "model.norm_placement": "sandwich", "model.layer_types": "[sliding, full]",
    "model.attention_chunk_size": ["model.layer_types=[chunked, full]", "model.attention_chunk_size=32"],
    "model.rope_local_theta": "50000", "model.nope_layers": "2", "model.attn_softcap": "50.0",
    "model.final_softcap": "30.0", "model.embed_scale": "11.3", "model.query_scale": "0.1",
    "model.parallel_residual": ["model.parallel_residual=true", "model.norm=layernorm", "model.bias=true",
                                "model.mlp=gelu", "model.tie_embeddings=false"],
}
TWO_GPUS = ["cluster.gpus_per_node=2", "training.global_batch_size=32"]
CONTEXT = {
    "parallelism.pipeline": TWO_GPUS, "parallelism.tensor": TWO_GPUS, "cluster.gpus_per_node": TWO_GPUS[1:],
    "parallelism.virtual_stages": [*TWO_GPUS, "parallelism.pipeline=2"],
    "parallelism.context": TWO_GPUS,
    "training.fp8_library": ["training.precision=fp8", "cluster.gpu=H100-SXM"],
    "cluster.nvme_gib": ["parallelism.zero_stage=1", "parallelism.offload_optimizer=nvme"],
    "parallelism.nvme_path": ["parallelism.zero_stage=1", "parallelism.offload_optimizer=nvme"],
    "parallelism.sequence_parallel": [*TWO_GPUS, "parallelism.tensor=2"],
    "parallelism.tp_comm_overlap": [*TWO_GPUS, "parallelism.tensor=2"],
    "parallelism.ep_comm_overlap": [*TWO_GPUS, "model.moe={n_experts: 4, top_k: 2}", "parallelism.expert=2",
                                    "training.micro_batch_size=4"],  # two micro-batches: one hides the other
    "cluster.hosts": ["cluster.nodes=2", *TWO_GPUS[1:]],
    "model.layer_types": ["model.sliding_window=64"], "model.rope_local_theta": ["model.layer_types=[sliding, full]",
                                                                                  "model.sliding_window=64"],
    "parallelism.first_stage_layers": [*TWO_GPUS, "parallelism.pipeline=2"],
    "parallelism.expert": [*TWO_GPUS, "model.moe={n_experts: 4, top_k: 2}"],
    "parallelism.last_stage_layers": [*TWO_GPUS, "parallelism.pipeline=2"], "cluster.nodes": TWO_GPUS[1:],
    "cluster.intra_node_bandwidth": TWO_GPUS, "cluster.inter_node_bandwidth": ["cluster.nodes=2", *TWO_GPUS[1:]],
    "parallelism.offload_optimizer": ["parallelism.zero_stage=2"], "parallelism.allgather_bucket_size":
    ["parallelism.zero_stage=2"], "parallelism.byte_regime": ["training.precision=bf16"],
    "training.tokens": ["training.max_steps=null", "training.tokens=1M"],
    **{f"parallelism.{name}": ["parallelism.zero_stage=3"] for name in
       ("offload_params", "overlap_comm", "reduce_bucket_size", "prefetch_bucket_size", "max_live_parameters")},
}


def outputs(sets: list[str]) -> dict[str, str]:
    spec = load_spec("tiny", sets)
    compiled = {k: v for k, v in build_files(spec).items() if k not in ("plan.json", "spec.yaml")}
    return {"plan": json.dumps([plan(spec).to_json(), inference_plan(spec)], sort_keys=True, default=float),
            "compile": json.dumps(compiled, sort_keys=True), "hf": _hf(spec)}


def _hf(spec) -> str:
    """The transformers config, or the one line export-hf refuses the spec with (it reads the field to refuse it:
    no transformers family computes that model exactly)."""
    try:
        return json.dumps(hf_config(spec), sort_keys=True)
    except LLMSpecError as err:
        return f"refused: {err}"


def leaf_fields(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(leaf_fields(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def change_of(field: str, value) -> list[list[str]]:
    if field in CHANGE:
        change = CHANGE[field]
        return [change] if isinstance(change, list) else [[f"{field}={change}"]]
    if isinstance(value, bool):
        return [[f"{field}={str(not value).lower()}"]]
    if isinstance(value, int):
        return [[f"{field}={c}"] for c in (value * 2, value + 1) if c != value]
    if isinstance(value, float):
        return [[f"{field}={value / 2!r}"]]
    raise AssertionError(f"{field}: no change known for {value!r}; add one to CHANGE")


FIELDS = sorted(set(leaf_fields(load_spec("tiny").model_dump())) - DERIVED - {"name"})


@pytest.mark.parametrize("field", FIELDS)
def test_field_is_consumed_where_declared(field, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data.corpus and the tokenizer path are files; the spec only names them
    (tmp_path / "notes.txt").write_text("text\n")
    (tmp_path / "rates.json").write_text('{"gpu": "cpu", "matmul": 0.2}\n')  # a measured calibration of this CPU
    context = CONTEXT.get(field, [])
    before = outputs(context)
    value = leaf_fields(load_spec("tiny", context).model_dump())[field]
    moved = f"{field}: no valid change; add one to CHANGE"
    for change in change_of(field, value):
        try:
            after = outputs([*context, *change])
        except LLMSpecError:
            continue
        moved = {name for name in before if before[name] != after[name]}
        break
    assert moved == CONSUMERS.get(field, EVERYWHERE) - {"run"}


def _dotted(node: ast.expr, aliases: dict[str, set[str]]) -> set[str]:
    """The dotted paths an expression reads (``spec.training.seed``), a local alias spelled out as what it names;
    ``x.model_copy(...)`` reads as ``x``. Empty for anything but names, attributes and such copies."""
    attrs = []
    while isinstance(node, ast.Attribute | ast.Call):
        if isinstance(node, ast.Attribute):
            attrs.append(node.attr)
            node = node.value
        elif isinstance(node.func, ast.Attribute) and node.func.attr == "model_copy":
            node = node.func.value
        else:
            return set()
    if not isinstance(node, ast.Name):
        return set()
    rest = "".join(f".{attr}" for attr in reversed(attrs))
    return {root + rest for root in aliases.get(node.id, {node.id})}


def attribute_reads(path: Path) -> set[str]:
    """Every dotted attribute path a module reads, with its aliases (``tr = spec.training`` makes ``tr.seed`` read
    ``spec.training.seed``). Aliases are collected per module: a name bound twice reads as either binding."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bindings = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
                bindings += zip(target.elts, value.elts, strict=True)
            else:
                bindings.append((target, value))
    aliases: dict[str, set[str]] = {}
    for _ in range(3):  # an alias of an alias (opt = tr.optimizer)
        for target, value in bindings:
            if isinstance(target, ast.Name):
                aliases.setdefault(target.id, set()).update(p for p in _dotted(value, aliases) if "." in p)
        aliases = {name: paths for name, paths in aliases.items() if paths}
    return {p for node in ast.walk(tree) if isinstance(node, ast.Attribute) for p in _dotted(node, aliases)}


@functools.cache
def run_reads() -> frozenset[str]:
    where = [ROOT / entry for entry in RUN_CODE]
    files = [path for place in where for path in (place.rglob("*.py") if place.is_dir() else [place])]
    return frozenset().union(*map(attribute_reads, files))


def read_by_the_run(field: str) -> bool:
    path = READ_AS.get(field, field)
    return any(read == path or read.endswith(f".{path}") for read in run_reads())


@pytest.mark.parametrize("field", sorted(CONSUMERS))
def test_the_run_reads_a_field_exactly_when_declared(field):
    declared = "run" in CONSUMERS[field]
    assert read_by_the_run(field) == declared, (f"{field}: declared {sorted(CONSUMERS[field])}, but the run's code "
                                                f"({', '.join(RUN_CODE)}) {'never reads' if declared else 'reads'} it")


def test_aliases_and_copies_are_followed_to_the_field_they_read(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f(spec):\n    tr, par = spec.training, spec.parallelism.model_copy(update={})\n"
                      "    opt = tr.optimizer\n    return opt.betas, par.tensor, spec.cluster\n")
    assert {"spec.training.optimizer.betas", "spec.parallelism.tensor", "spec.cluster"} <= attribute_reads(module)
    assert not {read for read in attribute_reads(module) if read.endswith(("training.seed", ".name"))}


def test_every_declared_field_exists():
    assert set(CONSUMERS) - set(FIELDS) == set()
