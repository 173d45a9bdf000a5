"""One rank of the ZeRO parity check (tests/test_zero_parity.py): build the compiled model of a post-training spec,
hand DeepSpeed its trainable parameters, run one step, and write the bytes the engine holds on this rank.

Run by ``torchrun --nproc_per_node 2 tests/zero_parity_worker.py SPEC OUT [--set ...]`` with DS_ACCELERATOR=cpu."""

from __future__ import annotations

import json
import os
import sys

import deepspeed
import torch
import torch.distributed as dist

from llmspec.compile.ds_config import ds_config_dict
from llmspec.compile.loading import model_module
from llmspec.spec.loading import load_spec


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def main() -> None:
    source, out, *sets = sys.argv[1:]
    spec = load_spec(source, sets=sets)
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    model = model_module(spec).Model()
    config = ds_config_dict(spec)
    config.pop("scheduler", None)
    engine, _, _, _ = deepspeed.initialize(model=model, config=config,
                                           model_parameters=[p for p in model.parameters() if p.requires_grad])
    zero = engine.optimizer
    held: dict[str, int] = {}

    # the fp32 gradient partitions exist while the wrapped optimizer steps: record them there
    inner_step = zero.optimizer.step

    def step(*args, **kwargs):
        held["fp32_gradients"] = _bytes(p.grad for group in zero.optimizer.param_groups for p in group["params"])
        return inner_step(*args, **kwargs)

    zero.optimizer.step = step
    tr = spec.training
    idx = torch.randint(0, spec.model.vocab_size, (tr.micro_batch_size, tr.seq_len))
    loss = engine(idx, idx)[1]
    engine.backward(loss)
    held["16bit_gradients"] = _bytes(g for group in zero.averaged_gradients.values() for g in group)
    engine.step()
    held["master"] = _bytes(zero.single_partition_of_fp32_groups)
    held["optimizer_states"] = _bytes(t for state in zero.optimizer.state.values() for t in state.values()
                                      if torch.is_tensor(t) and t.dim() > 0)
    held["frozen"] = _bytes(p for p in engine.module.parameters() if not p.requires_grad)
    held["trainable_16bit"] = _bytes(p for p in engine.module.parameters() if p.requires_grad)
    held["trainable_dtype"] = str(next(p for p in engine.module.parameters() if p.requires_grad).dtype)
    rank = dist.get_rank()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
        json.dump(held, handle)
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":
    main()
