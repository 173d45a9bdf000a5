"""Loading specs: every problem named with its field path, YAML line and a did-you-mean; never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import MINIMAL, minimal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmspec.errors import SpecError
from llmspec.planner.training import plan
from llmspec.spec import catalogue
from llmspec.spec.loading import dump_spec, load_spec, named_specs, parse_spec
from llmspec.spec.schema import Spec


def problems(text: str, *sets: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, source="s.yaml", sets=list(sets))
    return [str(p) for p in info.value.problems]


def test_named_specs_all_load():
    names = set(named_specs())
    assert {"gpt2-124m", "gpt2-1.5b", "llama2-7b", "llama2-70b", "llama3-8b", "llama3-70b", "llama3-405b",
            "mistral-7b", "mixtral-8x7b", "qwen2-7b", "tiny"} <= names
    for name in names:
        assert load_spec(name).name == name.removeprefix("published/")


def test_named_specs_cite_a_source():
    for path in named_specs().values():
        assert path.read_text().startswith("# "), path


def test_derived_fields():
    spec = minimal()
    assert spec.model.head_dim == 16 and spec.model.n_kv_heads == 4 and spec.model.d_ff == 256
    assert spec.parallelism.data_parallel == 8 and spec.training.gradient_accumulation_steps == 1
    gated = minimal("model.mlp=swiglu")
    assert gated.model.d_ff == 256  # 8·64/3 = 170.7 -> rounded up to a multiple of 256


def test_token_suffixes():
    assert minimal("training.tokens=2T", "training.max_steps=null").training.total_tokens == 2 * 10**12
    assert minimal("training.tokens=300B", "training.max_steps=null").training.tokens == 300 * 10**9
    assert minimal("training.tokens=1.5e9", "training.max_steps=null").training.tokens == 1_500_000_000


def test_misspelt_key_gets_line_and_did_you_mean():
    text = MINIMAL.replace("n_heads: 4", "n_head: 4")
    found = problems(text)
    assert any("s.yaml:3: model.n_head: unknown field 'n_head'; did you mean 'n_heads'?" in p for p in found)


def test_misspelt_section():
    found = problems(MINIMAL + "parallelisme: {zero_stage: 2}\n")
    assert any("parallelisme" in p and "did you mean 'parallelism'" in p and "s.yaml:5" in p for p in found)


def test_wrong_type_names_field_and_value():
    found = problems(MINIMAL.replace("d_model: 64", "d_model: big"))
    assert any(p.startswith("s.yaml:3: model.d_model:") and "'big'" in p for p in found)


def test_invalid_yaml_has_line():
    found = problems("name: x\nmodel: {vocab_size: [\n")
    assert len(found) == 1 and found[0].startswith("s.yaml:") and "invalid YAML" in found[0]


def test_unknown_top_level_key_named():
    found = problems(MINIMAL + "A: 1\n")
    assert any(": A: unknown field 'A'" in p for p in found), found


def test_not_a_mapping():
    assert "YAML mapping" in problems("- 1\n- 2\n")[0]


def test_set_override_errors_are_attributed():
    found = problems(MINIMAL, "model.n_layers=0")
    assert found == ["--set: model.n_layers: Input should be greater than 0 (got 0)"]
    assert "expected --set section.field=value" in problems(MINIMAL, "model.n_layers")[0]


@pytest.mark.parametrize("sets,path,fragment", [
    (["model.n_heads=3"], "model.n_heads", "not divisible by n_heads"),
    (["model.n_kv_heads=3"], "model.n_kv_heads", "not divisible by n_kv_heads"),
    (["model.n_kv_heads=8"], "model.n_kv_heads", "exceeds n_heads"),
    (["model.position=rope", "model.head_dim=15"], "model.head_dim", "must be even"),
    (["model.rope_scaling={factor: 8}"], "model.rope_scaling", "needs position: rope"),
    (["model.moe={n_experts: 2, top_k: 3}"], "model.moe.top_k", "exceeds n_experts"),
    (["model.moe={n_experts: 2, capacity_factor: 1.25}", "post_training.method=dpo"], "model.moe.capacity_factor",
     "planned for sft and reward only"),
    (["training.seq_len=256"], "training.seq_len", "exceeds model.max_seq_len"),
    (["training.fp8_library=torchao"], "training.fp8_library", "is set but precision is"),
    (["parallelism.tensor=8", "cluster.gpus_per_node=8"], "parallelism.tensor", "must divide n_heads"),
    (["parallelism.pipeline=4"], "parallelism.pipeline", "exceeds n_layers"),
    (["cluster.gpus_per_node=6", "parallelism.tensor=4"], "parallelism.tensor", "not divisible by tensor"),
    (["training.global_batch_size=12"], "training.global_batch_size", "not divisible by micro_batch_size"),
    (["parallelism.offload_params=cpu", "parallelism.zero_stage=2"], "parallelism.offload_params", "zero_stage: 3"),
    (["parallelism.offload_optimizer=cpu"], "parallelism.offload_optimizer", "zero_stage 1, 2 or 3"),
    (["parallelism.pipeline=2", "parallelism.zero_stage=2"], "parallelism.zero_stage", "stage 0 or 1"),
    (["training.precision=bf16", "cluster.gpu=V100"], "training.precision", "does not support bf16"),
    (["training.precision=fp16", "cluster.gpu=cpu"], "training.precision", "does not support fp16"),
    (["cluster.gpu=H1000"], "cluster.gpu", "did you mean"),
    (["training.schedule={min_lr: 1.0}"], "training.schedule.min_lr", "exceeds optimizer.lr"),
    (["training.max_steps=null"], "training", "training.tokens"),
    (["parallelism.virtual_stages=2"], "parallelism.virtual_stages", "needs pipeline > 1"),
    (["parallelism.context=3", "cluster.gpus_per_node=3"], "parallelism.context", "must divide by 6"),
    (["parallelism.context=16"], "parallelism.tensor", "tensor × pipeline × context = 16"),
    (["parallelism.pipeline=2", "parallelism.virtual_stages=2"], "parallelism.virtual_stages",
     "a stage of 1 block cannot run 2 chunks"),
    (["name=../etc"], "name", "pattern"),
    (["data.tokenizer.vocab_size=2000"], "data.tokenizer.vocab_size", "ids from 1000 on have no embedding"),
    (["model.position=rope", "model.rope_scaling={low_freq_factor: 4, high_freq_factor: 1}"],
     "model.rope_scaling.high_freq_factor", "must exceed low_freq_factor 4"),
    (["model.position=rope", "model.rope_scaling={low_freq_factor: 2, high_freq_factor: 2}"],
     "model.rope_scaling.high_freq_factor", "must exceed low_freq_factor 2"),
    (["training.seed=9223372036854775808"], "training.seed", "less than or equal to 9223372036854775807"),
])
def test_cross_field_rules(sets, path, fragment):
    found = problems(MINIMAL, *sets)
    assert any(f": {path}: " in p and fragment in p for p in found), found


def test_every_problem_reported_at_once():
    found = problems(MINIMAL, "training.seq_len=512", "parallelism.pipeline=4")
    assert len(found) == 2


def test_unknown_named_spec_suggests():
    with pytest.raises(SpecError, match="did you mean 'llama2-7b'"):
        load_spec("llama2-7")


def test_dump_round_trips():
    spec = load_spec("mixtral-8x7b")
    again = parse_spec(dump_spec(spec))
    assert again == spec


def test_schema_is_json_schema():
    schema = Spec.model_json_schema()
    assert schema["type"] == "object" and {"model", "training"} <= set(schema["required"])


# Random edits of a valid spec: loading either succeeds or raises SpecError, nothing else.
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(), max_size=3), st.dictionaries(
                       st.text(max_size=6), st.integers(), max_size=2))
KEYS = st.sampled_from(["name", "model", "training", "parallelism", "cluster", "data", "model.n_heads",
                        "model.d_model", "model.mlp", "model.moe", "model.moe.top_k", "model.rope_scaling",
                        "training.tokens", "training.seq_len", "training.optimizer", "training.optimizer.betas",
                        "parallelism.zero_stage", "parallelism.tensor", "cluster.gpu", "cluster.gpu.memory_gib",
                        "cluster.nodes", "data.corpus", "model.head_dim", "training.precision", "bogus.key"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(KEYS, VALUES), min_size=1, max_size=4))
def test_random_bad_specs_never_traceback(edits):
    data = yaml.safe_load(MINIMAL)
    for key, value in edits:
        target = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[parts[-1]] = value
    try:
        text = yaml.safe_dump(data)
    except yaml.YAMLError:
        return
    try:
        spec = parse_spec(text)
    except SpecError as err:
        assert err.problems and all(str(p) for p in err.problems)
    else:
        plan(spec)  # whatever validates also plans


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_random_text_never_tracebacks(text):
    try:
        parse_spec(text)
    except SpecError:
        pass


@pytest.mark.parametrize("gpu", catalogue.names())
def test_every_catalogue_gpu_loads_and_plans_in_each_precision_it_lists(gpu):
    entry = catalogue.lookup(gpu)
    assert entry is not None and catalogue.lookup(gpu.lower()) is entry
    for precision in entry.peak_flops:
        if precision == "fp16" and gpu == "cpu":
            continue
        spec = load_spec("tiny", [f"cluster.gpu={gpu}", f"training.precision={precision}"])
        assert plan(spec, alternatives=False).gpu_name == entry.name


def test_the_json_schema_accepts_every_shipped_spec_and_every_count_form():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(Spec.model_json_schema())
    for name, path in named_specs().items():
        spec = yaml.safe_load(path.read_text())
        errors = [f"{name}: {list(e.path)}: {e.message}" for e in validator.iter_errors(spec)]
        assert errors == []
    data = yaml.safe_load((named_specs()["llama2-7b"]).read_text())
    for tokens in (2_000_000_000_000, 2e12, "2T", "300B", "1.5e12", "4_000_000_000_000", "15.6t"):
        data["training"]["tokens"] = tokens
        assert list(validator.iter_errors(data)) == [], tokens
        assert load_spec("llama2-7b", [f"training.tokens={tokens}"]).training.tokens > 0
    data["training"]["tokens"] = "two trillion"
    assert list(validator.iter_errors(data))


def test_relative_data_paths_are_relative_to_the_spec_file(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    text = (named_specs()["tiny"]).read_text().replace("corpus: builtin", "corpus: [notes.txt, /abs/other.txt]")
    (folder / "spec.yaml").write_text(text.replace("val_fraction: 0.05", "val_fraction: 0.05\n  tokenizer: "
                                                                       "{path: tok/tokenizer.json}"))
    monkeypatch.chdir(tmp_path)  # not the spec's folder
    spec = load_spec("project/spec.yaml")
    assert spec.data.corpus == [str(Path("project") / "notes.txt"), "/abs/other.txt"]
    assert spec.data.tokenizer.path == str(Path("project") / "tok" / "tokenizer.json")
    # a --set value is relative to where the command runs
    assert load_spec("project/spec.yaml", ["data.corpus=here.txt"]).data.corpus == "here.txt"
    # each source of a mixture, and a calibration file (a kernel profile's name stays a name)
    text = text.replace("corpus: [notes.txt, /abs/other.txt]", "sources: [{path: a/*.jsonl}, {path: /abs/b.jsonl}]")
    (folder / "mix.yaml").write_text(text.replace("  gpu: cpu\n", "  gpu: cpu\n  calibration: measured/h100.json\n"))
    spec = load_spec("project/mix.yaml")
    assert [s.path for s in spec.data.sources] == [str(Path("project") / "a" / "*.jsonl"), "/abs/b.jsonl"]
    assert spec.cluster.calibration == str(Path("project") / "measured" / "h100.json")
    (folder / "profile.yaml").write_text((folder / "mix.yaml").read_text().replace("measured/h100.json",
                                                                                   "fused-flash-attention-3"))
    assert load_spec("project/profile.yaml").cluster.calibration == "fused-flash-attention-3"  # a name, not a file


@pytest.mark.parametrize("value,said", [("banana", "Input should be a valid integer or 'auto' (got 'banana')"),
                                        ("0", "Input should be greater than 0 or 'auto' (got 0)")])
def test_a_value_no_union_member_accepts_is_one_line(value, said):
    with pytest.raises(SpecError) as caught:
        load_spec("tiny", [f"parallelism.virtual_stages={value}"])
    assert [str(p.path) for p in caught.value.problems] == ["parallelism.virtual_stages"]
    assert caught.value.problems[0].message == said


@pytest.mark.parametrize("text, said", [
    ("a: &x [*x]\n", "a YAML alias refers to the collection it is in"),  # RecursionError in the duplicate check
    ("a: &x {b: *x}\n", "a YAML alias refers to the collection it is in"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 32 levels deep"),  # PyYAML's own recursion
    ("a: " + "{b: " * 3000 + "1" + "}" * 3000 + "\n", "nested more than 32 levels deep"),
    ("a: " + "[" * 40 + "]" * 40 + "\n", "nested more than 32 levels deep"),  # pydantic would walk it
    ("a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(  # nine aliases of nine: 9^9 values for pydantic
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)), "more than 100,000 values"),
])
def test_specs_that_would_exhaust_the_stack_or_the_clock_are_one_line(text, said):
    [problem] = problems(text + MINIMAL.replace("name: t", "name: u"))
    assert said in problem and problem.startswith("s.yaml: "), problem


def test_a_set_value_that_contains_itself_is_one_line():
    assert problems(MINIMAL, "training.loggers=&x [*x]") == [
        "--set: <spec>: a YAML alias refers to the collection it is in (like `a: &x [*x]`)"]
    [deep] = problems(MINIMAL, "training.loggers=" + "[" * 3000 + "]" * 3000)
    assert deep.startswith("--set: training.loggers: Input should be a valid list (got ") and len(deep) < 200


@pytest.mark.parametrize("field", ["model.tie_embeddings", "model.bias", "model.qkv_bias",
                                   "parallelism.sequence_parallel", "parallelism.overlap_comm",
                                   "post_training.adapter.rslora", "post_training.double_quant"])
def test_a_string_is_not_a_boolean(field):
    """pydantic's lax mode reads 'yes', 'on', '1' as true: a quoted string in a spec is a mistake, said as one."""
    [problem] = problems(MINIMAL, f"{field}='yes'")
    assert f"{field}: Input should be a valid boolean (got 'yes')" in problem
    assert minimal(f"{field}=false") is not None  # YAML's own booleans (yes/no/on/off unquoted too) still are


def test_the_largest_seed_is_what_torch_takes():
    import torch

    seed = minimal("training.seed=9223372036854775807").training.seed
    torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)


def test_a_shared_gpu_name_is_said_and_an_exact_one_is_not():
    assert catalogue.choice_notice("H100") == ("cluster.gpu 'H100' is taken as H100-SXM (it could also mean "
                                               "H100-PCIe: name the one you have)")
    assert "A100-80GB" in catalogue.choice_notice("a100") and "A100-40GB" in catalogue.choice_notice("a100")
    assert [name for name in catalogue.names() if catalogue.choice_notice(name)] == []
    assert catalogue.choice_notice("h100-sxm5") is None and catalogue.choice_notice("nonsense") is None
