"""DeepSpeed parity for a fine-tune: a LoRA spec under ZeRO-2 on 2 CPU ranks (gloo, bf16). The bytes the engine
holds on each rank — 16-bit adapter weights, 16-bit and fp32 gradient partitions, fp32 master and Adam partitions,
and the frozen base, replicated — equal the plan's memory rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmspec.planner.training import plan
from llmspec.spec.loading import load_spec

pytestmark = pytest.mark.integration

SETS = ["post_training.adapter.type=lora", "post_training.adapter.targets=[q_proj, v_proj, o_proj]",
        "parallelism.zero_stage=2", "cluster.gpus_per_node=2", "training.global_batch_size=8",
        "training.micro_batch_size=4", "training.seq_len=64", "training.precision=bf16"]


def test_lora_under_zero2_holds_the_planned_bytes(tmp_path):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch-extensions"))}
    worker = Path(__file__).with_name("zero_parity_worker.py")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), "tiny", str(tmp_path), *SETS], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    planned = plan(load_spec("tiny", sets=SETS), alternatives=False)
    mem = planned.memory
    assert planned.params["trainable"] % 2 == 0  # no partition padding: the bytes compare exactly
    for rank in (0, 1):
        held = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert held["trainable_dtype"] == "torch.bfloat16"
        assert held["trainable_16bit"] == mem["weights"]  # 16-bit adapter weights, whole on every rank
        assert held["16bit_gradients"] + held["fp32_gradients"] == mem["gradients"]  # (2 + 4) / dp per param
        assert held["master"] + held["optimizer_states"] == mem["optimizer"]  # (4 + 8) / dp per param
        assert held["frozen"] == mem["frozen"]  # the base: ZeRO-2 does not partition what does not train
