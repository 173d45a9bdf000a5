"""The ``deepspeed`` backend: the per-rank entry point that ``build/launch.sh`` starts through DeepSpeed's launcher.

Each rank reads the job ``llmspec run`` prepared (RUN_DIR/job.json), builds the compiled model (or, with
``pipeline > 1``, its layer list as a ``PipelineModule``) and trains it with the DeepSpeed engine: ZeRO 0–3,
optimizer/parameter offload, activation checkpointing as compiled into model.py. It follows the torch backend's
loop contract: the same schedule function sets the learning rate every step (the WarmupCosineLR section of
ds_config.json is for scripts of your own), the same batches (rank r's micro-batch m of step t), the same metrics.
Without offload the optimizer is torch's AdamW (weight decay on ≥2-D weights only); with offload it is the one
ds_config.json names (DeepSpeedCPUAdam), as DeepSpeed requires.

Checkpoints: DeepSpeed's own (model, optimizer, every rank's RNG) under checkpoints/deepspeed/ for --resume, and
a consolidated model in the compiled model's names (checkpoints/step-N.pt) for generate and export-hf.
Each rank ends with barrier → destroy_process_group → os._exit, which avoids a known abort at interpreter exit.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch

from llmspec.compile.ds_config import ds_config_dict
from llmspec.compile.loading import load_model_module
from llmspec.data.shards import Batches
from llmspec.errors import LLMSpecError
from llmspec.loader import dump_spec
from llmspec.train.checkpoint import save_checkpoint
from llmspec.train.job import Job, load_job
from llmspec.train.loop import StepLog, TrainingError, due, evaluate, stopped_message
from llmspec.train.optim import make_optimizer, param_groups
from llmspec.train.schedule import lr_at

# A rank that loses its peers gives up after this long instead of hanging (seconds; LLMSPEC_DIST_TIMEOUT).
DIST_TIMEOUT = int(os.environ.get("LLMSPEC_DIST_TIMEOUT", "300"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="llmspec DeepSpeed worker (started by launch.sh)")
    parser.add_argument("--build-dir", default=".")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)))
    args, _ = parser.parse_known_args(argv)
    code = 0
    import deepspeed
    from deepspeed import comm as dist

    try:
        cpu = deepspeed.get_accelerator().device_name() == "cpu"
        deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl", timeout=timedelta(seconds=DIST_TIMEOUT))
        train(load_job(Path(args.run_dir)), "cpu" if cpu else f"cuda:{args.local_rank}")
    except LLMSpecError as error:
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {error}", file=sys.stderr, flush=True)
        code = 2
    except Exception as error:  # noqa: BLE001 - e.g. a peer died: say so on one line, exit non-zero, never hang
        print(f"error: rank {os.environ.get('RANK', '?')}: {type(error).__name__}: {error}", file=sys.stderr,
              flush=True)
        code = 1
    finally:
        sys.stdout.flush()
        if code == 0 and dist.is_initialized():
            dist.barrier()
            torch.distributed.destroy_process_group()
        os._exit(code)


def _pipeline_module(module, spec):
    from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec

    config = module.ModelConfig()
    layers = []
    for key, cls, method in module.pipeline_layers(config):
        if key is None:
            layers.append(LayerSpec(cls, config))
        else:
            forward = None if method == "forward" else (lambda layer, x, name=method: getattr(layer, name)(x))
            layers.append(TiedLayerSpec(key, cls, config, forward_fn=forward, tied_weight_attr=["embed.weight"]))
    return PipelineModule(layers=layers, loss_fn=module.pipeline_loss, num_stages=spec.parallelism.pipeline,
                          partition_method="type:BlockLayer", activation_checkpoint_interval=0)


def _config(spec, offload: bool) -> dict:
    config = ds_config_dict(spec)
    config.pop("scheduler")  # the worker drives the learning rate with lr_at, as the torch backend does
    if not offload:
        config.pop("optimizer", None)  # a client torch AdamW instead (DeepSpeed refuses both)
    return config


def train(job: Job, device: str) -> None:
    import deepspeed
    from deepspeed import comm as dist

    spec, tr, par = job.spec, job.spec.training, job.spec.parallelism
    rank = dist.get_rank()
    torch.manual_seed(tr.seed)
    module = load_model_module(job.model_file)
    pipelined = par.pipeline > 1
    model = module.Model()  # seeded: the same initial weights as the torch backend
    if pipelined:
        reference, model = model.state_dict(), _pipeline_module(module, spec)
        n_layers = spec.model.n_layers
        model.load_state_dict({key: reference[_model_key(key, n_layers)] for key in model.state_dict()})
    offload = par.offload_optimizer != "none"
    optimizer = None if offload else make_optimizer(spec, model, device.split(":")[0])
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           model_parameters=param_groups(model, tr.optimizer.weight_decay),
                                           config=_config(spec, offload))
    dp_rank = engine.grid.get_data_parallel_id() if pipelined else rank
    dp = par.data_parallel
    ds_dir = job.checkpoints / "deepspeed"
    start = 0
    if job.resume:
        _, state = engine.load_checkpoint(str(ds_dir))
        start = state["step"]
        torch.set_rng_state(torch.load(ds_dir / f"step-{start:08d}" / f"rng-rank{rank}.pt", weights_only=True))
        if rank == 0:
            print(f"resumed from {ds_dir} at step {start}", flush=True)
    log = StepLog(job, device.split(":")[0], start, job.resume) if rank == 0 else None
    train_batches = Batches(job.shards.load("train"), tr.seq_len, tr.micro_batch_size, tr.seed, "train")
    val_batches = Batches(job.shards.load("val"), tr.seq_len, tr.micro_batch_size, tr.seed, "val")

    def to_device(pair):
        return tuple(t.to(device) for t in pair)

    try:
        for step in range(start, tr.steps):
            lr = lr_at(spec, step)
            for group in engine.optimizer.param_groups:
                group["lr"] = lr
            engine.train()
            if pipelined:
                micro = range(engine.gradient_accumulation_steps())
                batches = iter([to_device(train_batches.get(step, m, dp_rank)) for m in micro])
                loss = engine.train_batch(batches).item()  # averaged over micro-batches and replicas
            else:
                total = torch.zeros(())
                for m in range(engine.gradient_accumulation_steps()):
                    _, micro_loss = engine(*to_device(train_batches.get(step, m, dp_rank)))
                    engine.backward(micro_loss)
                    engine.step()
                    total += micro_loss.detach().float().cpu()
                dist.all_reduce(total)
                loss = total.item() / (engine.gradient_accumulation_steps() * dp)
            done = step + 1
            if not math.isfinite(loss):
                raise TrainingError(stopped_message(job, done, f"loss is {loss}"))
            if log:
                log.step(done, loss, lr)
            if due(tr.eval_interval, done, tr.steps):
                val_loss = _evaluate(engine, pipelined, val_batches, to_device)
                if log:
                    log.eval(done, val_loss)
            if due(tr.checkpoint_interval, done, tr.steps):
                _checkpoint(engine, job, done, ds_dir, rank, pipelined)
    finally:
        if log:
            log.close()


def _evaluate(engine, pipelined: bool, batches: Batches, to_device) -> float:
    engine.eval()
    with torch.no_grad():
        if pipelined:
            return evaluate(lambda x, y: engine.eval_batch(iter([to_device((x, y))]), num_micro_batches=1).item(),
                            batches)
        # every rank evaluates the same batches (those the torch backend uses); ZeRO-3 needs all ranks anyway
        return evaluate(lambda x, y: engine(*to_device((x, y)))[1].item(), batches)


def _checkpoint(engine, job: Job, done: int, ds_dir: Path, rank: int, pipelined: bool) -> None:
    from deepspeed import comm as dist

    tag = f"step-{done:08d}"
    state = _consolidated(engine, job, pipelined)  # collective: every rank takes part
    if rank == 0 and not all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
        raise TrainingError(stopped_message(job, done, "the weights hold inf/nan"))
    engine.save_checkpoint(str(ds_dir), tag=tag, client_state={"step": done})
    torch.save(torch.get_rng_state(), ds_dir / tag / f"rng-rank{rank}.pt")
    if rank == 0:
        save_checkpoint(job.checkpoints, done, {"step": done, "model": state, "spec": dump_spec(job.spec),
                                                "backend": "deepspeed"})
    dist.barrier()


def _consolidated(engine, job: Job, pipelined: bool) -> dict[str, torch.Tensor]:
    """The full model state in the compiled Model's parameter names, on rank 0 (empty elsewhere)."""
    from deepspeed import comm as dist

    if job.spec.parallelism.zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict() or {}
        return {k: v.detach().cpu().clone() for k, v in state.items()}
    local = {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}
    if not pipelined:
        return local if dist.get_rank() == 0 else {}
    gathered: list = [None] * dist.get_world_size()
    n_layers = job.spec.model.n_layers
    dist.all_gather_object(gathered, {_model_key(k, n_layers): v for k, v in local.items()})
    merged = {k: v for part in gathered for k, v in part.items()}
    if job.spec.model.tie_embeddings:
        merged["lm_head.weight"] = merged["embed.weight"]
    return merged if dist.get_rank() == 0 else {}


def _model_key(key: str, n_layers: int) -> str:
    """A PipelineModule key (tied_modules.embed.*, 1.*, …, L+1.*) → the Model key (embed.*, blocks.i.*, norm.*)."""
    head, _, rest = key.partition(".")
    if head == "tied_modules":
        return rest.partition(".")[2]
    if 1 <= int(head) <= n_layers:
        return f"blocks.{int(head) - 1}.{rest}"
    return rest  # the head layer: norm.*, lm_head.weight


if __name__ == "__main__":
    main()
