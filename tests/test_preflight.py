"""Pre-flight: the GPUs a spec names are on this machine (count, type, memory), or run refuses in one line."""

from __future__ import annotations

import pytest

from llmspec.errors import DoesNotFitError, LLMSpecError
from llmspec.spec.loading import load_spec
from llmspec.train.preflight import check_devices, cpu_specs

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
    with pytest.raises(DoesNotFitError, match=r"this machine has no GPU.*named specs for a CPU: tiny, tiny-gpt2"):
        check_devices(load_spec("llama2-7b", ["cluster.nodes=1"]), [])
    assert {"tiny", "tiny-gpt2", "tiny-moe"} <= set(cpu_specs()) and "llama2-7b" not in cpu_specs()


def test_a_custom_gpu_is_checked_by_count_and_memory_not_by_name():
    custom = ["cluster.gpu={name: lab-gpu, memory_gib: 79, peak_tflops: {bf16: 900}}", "cluster.gpus_per_node=1",
              "cluster.nodes=1", "training.precision=bf16"]
    check_devices(load_spec("tiny", custom), [H100])
    with pytest.raises(LLMSpecError, match="planned with 79.00 GiB per GPU, but this machine has 1 × NVIDIA A100"):
        check_devices(load_spec("tiny", custom), [A100_40])
