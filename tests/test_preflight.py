"""Pre-flight: what the engine that would run a spec refuses, asked of that engine (its answers also make the "what
plan plans, run runs" table); the GPUs a spec names are on this machine (count, type, memory), or run refuses in one
line."""

from __future__ import annotations

import pytest

from llmspec.backends.runnable import ENGINES, PROBES, markdown_table, pick_engine, runnable_rows
from llmspec.errors import DoesNotFitError, LLMSpecError
from llmspec.spec.loading import load_spec
from llmspec.train.preflight import check_devices, check_runnable, cpu_specs

# the features the plan plans and `llmspec run` does not execute, by engine (the torch engine runs any layout's
# step in one process)
REFUSED = {"torch": {"training.precision fp8", "parallelism.byte_regime pure16"},
           "deepspeed": {"training.precision fp8", "parallelism.byte_regime pure16", "cluster.nodes 2 (no hosts named)",
                         "parallelism.tensor 2 with pipeline 2", "parallelism.expert 2 with zero_stage 3",
                         "model.moe.capacity_factor with parallelism.expert 2", "parallelism.sequence_parallel",
                         "parallelism.tp_comm_overlap", "parallelism.ep_comm_overlap", "parallelism.context 2",
                         "parallelism.virtual_stages 2"}}
H100 = ("NVIDIA H100 80GB HBM3", 85_045_477_376)
A100_40 = ("NVIDIA A100-SXM4-40GB", 42_298_834_944)
SMALL_ON_H100 = ["cluster.gpu=H100-SXM", "cluster.gpus_per_node=2", "cluster.nodes=1", "training.global_batch_size=32"]


def test_the_gpus_the_spec_names_pass():
    check_devices(load_spec("tiny", SMALL_ON_H100), [H100, H100])


@pytest.mark.parametrize("found, needle", [
    ([H100], "cluster.gpus_per_node 2: this machine has 1 × NVIDIA H100 80GB HBM3 (79.20 GiB)"),
    ([A100_40, A100_40], "cluster.gpu H100-SXM: this machine has 2 × NVIDIA A100-SXM4-40GB"),
])
def test_missing_or_other_gpus_are_named(found, needle):
    with pytest.raises(LLMSpecError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        check_devices(load_spec("tiny", SMALL_ON_H100), found)


def test_a_smaller_gpu_of_the_same_family_is_refused():
    spec = load_spec("tiny", ["cluster.gpu=A100-80GB", "cluster.gpus_per_node=2", "cluster.nodes=1",
                              "training.global_batch_size=32"])
    with pytest.raises(LLMSpecError, match="planned with 80.00 GiB per GPU, but this machine has 2 × NVIDIA A100"):
        check_devices(spec, [A100_40, A100_40])


def test_without_a_gpu_a_spec_runs_on_the_cpu_when_it_fits_there_else_names_the_cpu_specs():
    check_devices(load_spec("tiny", SMALL_ON_H100), [])
    with pytest.raises(DoesNotFitError, match=r"this machine has no GPU.*named specs for a CPU: tiny, .*tiny-gpt2"):
        check_devices(load_spec("llama2-7b", ["cluster.nodes=1"]), [])
    assert {"tiny", "tiny-gpt2", "tiny-moe"} <= set(cpu_specs()) and "llama2-7b" not in cpu_specs()


def test_a_custom_gpu_is_checked_by_count_and_memory_not_by_name():
    custom = ["cluster.gpu={name: lab-gpu, memory_gib: 79, peak_tflops: {bf16: 900}}", "cluster.gpus_per_node=1",
              "cluster.nodes=1", "training.precision=bf16"]
    check_devices(load_spec("tiny", custom), [H100])
    with pytest.raises(LLMSpecError, match="planned with 79.00 GiB per GPU, but this machine has 1 × NVIDIA A100"):
        check_devices(load_spec("tiny", custom), [A100_40])


def test_run_asks_the_engine_it_would_pick():
    spec = load_spec("tiny", ["cluster.gpus_per_node=2", "training.global_batch_size=32", "parallelism.context=2"])
    assert pick_engine(spec) == "deepspeed" and pick_engine(spec, "torch") == "torch"
    with pytest.raises(LLMSpecError, match=r"^parallelism.context 2: planned, not trained \(the compiled model's "
                       r"attention exchanges no keys and values between GPUs\); set parallelism.context=1 to run$"):
        check_runnable(spec, ENGINES["deepspeed"].refusals)
    check_runnable(spec, ENGINES["torch"].refusals)  # one process computes the whole sequence's attention
    with pytest.raises(LLMSpecError, match="--backend megatron: expected auto, torch or deepspeed"):
        pick_engine(spec, "megatron")


def test_the_runnable_table_holds_each_engines_answer_on_each_probe():
    rows = runnable_rows()
    assert [feature for feature, _, _ in rows] == [feature for feature, _ in PROBES]
    for engine in ENGINES:
        assert {feature for feature, _, answers in rows if answers[engine].startswith("refused: ")} == REFUSED[engine]
    for feature, picked, answers in rows:
        spec = load_spec("tiny", dict(PROBES)[feature])
        assert picked == pick_engine(spec)
        for engine, answer in answers.items():
            refused = ENGINES[engine].refusals(spec)
            if refused:  # the table gives the reason run prints, for the setting the row names
                assert answer.startswith(f"refused: {refused[0].why}") and str(refused[0]).startswith(
                    feature.split(" (")[0])
    table = markdown_table().splitlines()
    assert len(table) == len(PROBES) + 2 and all(line.count(" | ") == len(ENGINES) + 1 for line in table[2:])


def test_the_docs_table_is_what_the_engines_answer():
    """docs/training.md's "what plan plans, run runs" table is generated from the engines' refusals."""
    from llmspec.cli import docs

    page = (docs.DOCS / "training.md").read_text(encoding="utf-8")
    assert page == docs.render_training(page), "regenerate: python -m llmspec.cli.docs"


def test_without_a_gpu_the_check_says_what_the_run_will_do():
    """A dry run prints it (issue 30): the run trains on this CPU, not on the GPUs the spec names."""
    said = check_devices(load_spec("tiny", SMALL_ON_H100), [])
    assert said.startswith("no GPU on this machine: tiny trains on its CPU instead of 2 × H100-SXM (there the plan "
                           "needs ") and "the times above are the GPU's" in said
    assert check_devices(load_spec("tiny", SMALL_ON_H100), [H100, H100]) is None
