"""The ``deepspeed`` backend: the per-rank entry point that ``build/launch.sh`` starts through DeepSpeed's launcher.

Each rank reads the job ``llmspec run`` prepared (RUN_DIR/job.json), builds the compiled model (or, with
``pipeline > 1``, its layer list as a ``PipelineModule``) and trains it with the DeepSpeed engine: ZeRO 0–3,
optimizer/parameter offload, activation checkpointing as compiled into model.py, and with ``tensor > 1`` AutoTP
(the rules in ds_config.json's ``tensor_parallel.partition_config`` shard the compiled model's projections).
It is an engine under the one loop (``llmspec.train.loop.fit``): the loop sets the learning rate every step (the
WarmupCosineLR section of ds_config.json is for scripts of your own), draws the same batches (rank r's
micro-batch m of step t) and writes the same metrics as for the torch engine.
Without offload the optimizer is torch's AdamW (weight decay on ≥2-D weights only); with offload it is the one
ds_config.json names (DeepSpeedCPUAdam), as DeepSpeed requires.

Checkpoints: DeepSpeed's own (model, optimizer, every rank's RNG) under checkpoints/deepspeed/ for --resume, and
a consolidated model in the compiled model's names (checkpoints/step-N.pt) for generate and export-hf.
Each rank ends with barrier → destroy_process_group → os._exit, which avoids a known abort at interpreter exit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from datetime import timedelta
from pathlib import Path

import torch

from llmspec.backends import deepspeed_limits
from llmspec.backends.cpu_shm import remove_allreduce_buffers
from llmspec.compile.ds_config import ds_config_dict
from llmspec.compile.loading import load_model_module, pipeline_module
from llmspec.errors import LLMSpecError
from llmspec.files import write_atomic
from llmspec.train.checkpoint import save_checkpoint
from llmspec.train.engine import Batch, Engine
from llmspec.train.job import Job, load_job
from llmspec.train.loop import fit
from llmspec.train.methods import method_for
from llmspec.train.optim import make_optimizer, param_groups
from llmspec.train.ppo import split_states

# A rank that loses its peers gives up after this long instead of hanging (seconds; LLMSPEC_DIST_TIMEOUT).
DIST_TIMEOUT = int(os.environ.get("LLMSPEC_DIST_TIMEOUT", "300"))


def run_dir_argument(argv: list[str] | None = None) -> tuple[Path, int]:
    """(run directory, local rank) from the worker's arguments. ``--run-dir`` is what launch.sh prepared; without
    it, the run around ``--build-dir`` when that is a prepared RUN_DIR/build. Otherwise one line and exit 2 on
    rank 0 (every rank exits): a worker started by hand on a bare build has no job to train."""
    parser = argparse.ArgumentParser(description="llmspec DeepSpeed worker (started by launch.sh)")
    parser.add_argument("--build-dir", default=".")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)))
    args, _ = parser.parse_known_args(argv)  # launch.sh's own options (--resume) pass through to here
    build_dir = Path(args.build_dir).resolve()
    run_dir = Path(args.run_dir) if args.run_dir else build_dir.parent
    if not (run_dir / "job.json").is_file():
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {run_dir}: not a prepared run directory (no job.json); start the build's launch.sh, "
                  "which prepares one (`bash launch.sh --run-dir DIR`), or `llmspec run`", file=sys.stderr,
                  flush=True)
        sys.exit(2)
    return run_dir, args.local_rank


def main(argv: list[str] | None = None) -> None:
    run_dir, local_rank = run_dir_argument(argv)
    code = 0
    # AutoTP's all-gathers call a torch function deprecated in 2.13 once per step; say it once, not every step
    warnings.filterwarnings("once", message=".*all_gather_into_tensor.* is deprecated", category=FutureWarning)
    import deepspeed
    from deepspeed import comm as dist

    try:
        cpu = deepspeed.get_accelerator().device_name() == "cpu"
        deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl", timeout=timedelta(seconds=DIST_TIMEOUT))
        job = load_job(run_dir)
        fit(job, DeepSpeedEngine(job, "cpu" if cpu else f"cuda:{local_rank}"),
            announce=lambda text: print(text, flush=True))
    except LLMSpecError as error:
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {error}", file=sys.stderr, flush=True)
        code = 2
    except Exception as error:  # noqa: BLE001 - e.g. a peer died: say so on one line, exit non-zero, never hang
        print(f"error: rank {os.environ.get('RANK', '?')}: {type(error).__name__}: {error}", file=sys.stderr,
              flush=True)
        code = 1
    except KeyboardInterrupt:  # a Ctrl-C that reached the rank: stop quietly, as the launcher does
        code = 130
    finally:
        sys.stdout.flush()
        if code == 0 and dist.is_initialized():
            dist.barrier()  # every rank is done with the others' buffers
            torch.distributed.destroy_process_group()
        remove_allreduce_buffers(os.environ.get("MASTER_PORT", "*"), os.environ.get("RANK", "*"))
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
    split = spec.stage_layers
    if split is None:  # DeepSpeed balances the blocks over the stages
        return PipelineModule(layers=layers, loss_fn=module.pipeline_loss, num_stages=spec.parallelism.pipeline,
                              partition_method="type:BlockLayer", activation_checkpoint_interval=0)
    # layers: the embedding, the blocks, the head (and the tied embedding that scores): each stage takes its
    # count of blocks; the first also the embedding, the last also what follows the blocks
    bounds = [0, *(1 + sum(split[:i + 1]) for i in range(len(split) - 1)), len(layers)]
    return _StagesAsGiven(bounds, layers=layers, loss_fn=module.pipeline_loss, num_stages=spec.parallelism.pipeline,
                          activation_checkpoint_interval=0)


def _StagesAsGiven(bounds: list[int], **kwargs):
    """A PipelineModule whose stage boundaries are ``bounds`` (layer indices), for the uneven splits DeepSpeed's
    partition methods (uniform, parameters, type:) cannot express."""
    from deepspeed.pipe import PipelineModule

    class StagesAsGiven(PipelineModule):
        def _partition_layers(self, method: str = "uniform") -> None:
            self.parts = bounds
            stage = self._topo.get_coord(self.global_rank).pipe
            self._set_bounds(start=bounds[stage], stop=bounds[stage + 1])

    return StagesAsGiven(**kwargs)


def _config(spec, offload: bool) -> dict:
    config = ds_config_dict(spec)
    config.pop("scheduler")  # the worker drives the learning rate with lr_at, as the torch backend does
    if not offload:
        config.pop("optimizer", None)  # a client torch AdamW instead (DeepSpeed refuses both)
    return config


class DeepSpeedEngine(Engine):
    """ZeRO 0–3 with optional offload on one data-parallel replica per rank (or per AutoTP group of ``tensor``
    ranks, which see the same batches); with ``pipeline > 1`` a
    ``PipelineModule`` whose ``train_batch`` runs the 1F1B schedule over the step's micro-batches."""

    refusals = staticmethod(deepspeed_limits.refusals)

    def __init__(self, job: Job, device: str):
        import deepspeed
        from deepspeed import comm as dist

        spec, tr, par = job.spec, job.spec.training, job.spec.parallelism
        self.job, self.device, self.rank = job, device, dist.get_rank()
        self.is_main = self.rank == 0
        module = load_model_module(job.model_file)
        self.pipelined = par.pipeline > 1
        self.method = method_for(spec)
        model = self.method.model(job, module)  # seeded or init_from: the same initial weights as the torch engine
        if self.pipelined:
            reference, model = model.state_dict(), _pipeline_module(pipeline_module(module), spec)
            n_layers = spec.model.n_layers
            model.load_state_dict({key: reference[_model_key(key, n_layers)] for key in model.state_dict()})
        self.model = model  # the module (generation and held-out metrics run it; ZeRO-3 gathers on every rank)
        self.loss = self.method.loss(model)  # (a reference copy is taken here, before partitioning)
        offload = par.offload_optimizer != "none"
        # AutoEP's experts (ZeRO reduces them within their expert-data-parallel group, named as AutoEP names it)
        experts = f"ep_size_{par.expert}" if par.expert > 1 else None
        optimizer = None if offload else make_optimizer(spec, model, device.split(":")[0], experts)
        groups = param_groups(model, tr.optimizer.weight_decay, experts)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, model_parameters=groups,
                                                    config=_config(spec, offload))
        # Batches are drawn per data-parallel replica: the ranks of one pipeline or tensor-parallel group share one.
        if self.pipelined:
            self.dp_rank = self.engine.grid.get_data_parallel_id()
        elif par.tensor > 1:
            self.dp_rank = self.engine.mpu.get_data_parallel_rank()
        else:
            self.dp_rank = self.rank
        self._consolidated: tuple[int, dict[str, torch.Tensor]] | None = None
        self.frozen_engines: list = []  # the frozen models partitioned under ZeRO-3 (ranks.json records them)
        reference = self.loss.reference
        if reference is not None and reference.frozen is not None:  # taken whole, before the engine partitioned
            reference.frozen = self.frozen(reference.frozen)
        self._record_layout()

    def frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """Under ZeRO-3 a frozen model is an inference engine of its own, partitioned over the ranks as the planner
        counts it (each holds 1/dp; a forward gathers it, on every rank together, as TRL prepares its reference
        and reward models); under ZeRO 0-2 it stays whole on every rank (a stage-0 engine adds nothing)."""
        if self.job.spec.parallelism.zero_stage != 3:
            return model
        import deepspeed

        config = {key: value for key, value in _config(self.job.spec, offload=False).items()
                  if key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16", "fp16",
                             "zero_optimization")}
        config["zero_optimization"] = {"stage": 3, "stage3_param_persistence_threshold": 0}
        engine, *_ = deepspeed.initialize(model=model.requires_grad_(False), config=config)
        engine.eval()
        self.frozen_engines.append(engine)
        return engine

    def _record_layout(self) -> None:
        """RUN_DIR/ranks.json: the parameters each rank holds (its tensor/pipeline shard, before ZeRO partitions
        it), to set beside the plan's ``params.per_gpu``."""
        held = sum(getattr(p, "ds_numel", p.numel()) for p in self.engine.module.parameters())
        # a frozen model partitioned by ZeRO-3: the elements of its partition this rank holds
        frozen = sum(p.ds_tensor.numel() for engine in self.frozen_engines for p in engine.module.parameters())
        every = _on_rank0({"rank": self.rank, "data_parallel_rank": self.dp_rank, "parameters": held,
                           "frozen_parameters_held": frozen})
        if self.is_main:
            write_atomic(self.job.run_dir / "ranks.json", json.dumps({"ranks": every}, indent=2))

    def _to_device(self, batch: Batch) -> Batch:
        return tuple(t.to(self.device, non_blocking=True) for t in batch)

    def batch_slots(self) -> list[tuple[int, int]]:
        return [(m, self.dp_rank) for m in range(self.engine.gradient_accumulation_steps())]

    def set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def train_step(self, batches: list[Batch]) -> torch.Tensor:
        if self.pipelined:  # averaged over micro-batches and replicas by DeepSpeed
            return self.engine.train_batch(iter([self._to_device(b) for b in batches])).detach().float()
        total = torch.zeros((), device=self.device)
        for batch in batches:
            loss = self.loss(self.engine, *self._to_device(batch))
            self.engine.backward(loss)
            self.engine.step()
            total += loss.detach().float()
        return total / len(batches)

    def global_mean(self, losses: torch.Tensor) -> torch.Tensor:
        if self.pipelined:
            return losses
        from deepspeed import comm as dist

        dist.all_reduce(losses)
        return losses / dist.get_world_size()

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> float:
        if self.pipelined:
            return self.engine.eval_batch(iter([self._to_device(batch)]), num_micro_batches=1).item()
        # every rank evaluates the same batches (those the torch engine uses); ZeRO-3 needs all ranks anyway
        return self.loss(self.engine, *self._to_device(batch)).item()

    def train_mode(self, training: bool) -> None:
        self.engine.train(training)

    def weights_finite(self) -> bool:
        from deepspeed import comm as dist

        step = self.engine.global_steps
        state = _consolidated(self.engine, self.job, self.pipelined)  # collective: every rank takes part
        self._consolidated = (step, state)
        bad = torch.tensor(float(not all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())))
        dist.all_reduce(bad)  # rank 0 holds the state; every rank must agree before saving (a collective)
        return bad.item() == 0

    def save(self, checkpoints: Path, step: int, spec_yaml: str) -> None:
        from deepspeed import comm as dist

        ds_dir, tag = checkpoints / "deepspeed", f"step-{step:08d}"
        if self._consolidated is None or self._consolidated[0] != self.engine.global_steps:
            self.weights_finite()
        state = self._consolidated[1]
        self._consolidated = None
        self.engine.save_checkpoint(str(ds_dir), tag=tag, client_state={"step": step})
        torch.save(torch.get_rng_state(), ds_dir / tag / f"rng-rank{self.rank}.pt")
        if self.is_main:
            save_checkpoint(checkpoints, step, {"step": step, **split_states(state), "spec": spec_yaml,
                                                "backend": "deepspeed"})
        dist.barrier()

    def load(self, checkpoints: Path) -> tuple[int, str]:
        ds_dir = checkpoints / "deepspeed"
        _, state = self.engine.load_checkpoint(str(ds_dir))
        step = state["step"]
        rng = ds_dir / f"step-{step:08d}" / f"rng-rank{self.rank}.pt"
        torch.set_rng_state(torch.load(rng, weights_only=True))
        return step, str(ds_dir)


def _consolidated(engine, job: Job, pipelined: bool) -> dict[str, torch.Tensor]:
    """The full model state in the compiled Model's parameter names, on rank 0 (empty elsewhere)."""
    from deepspeed import comm as dist

    if job.spec.parallelism.zero_stage == 3 or job.spec.parallelism.tensor > 1:
        # gathers ZeRO-3 partitions and AutoTP shards (in the parameters' own dtype, despite the name)
        state = engine._consolidated_16bit_state_dict() or {}
        return {k: v.detach().cpu().clone() for k, v in state.items()}
    local = {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}
    if job.spec.parallelism.expert > 1:
        return _experts_gathered(engine, local)
    if not pipelined:
        return local if dist.get_rank() == 0 else {}
    n_layers = job.spec.model.n_layers
    gathered = _on_rank0({_model_key(k, n_layers): v for k, v in local.items()})
    if gathered is None:
        return {}
    merged = {k: v for part in gathered for k, v in part.items()}
    if job.spec.model.tie_embeddings:
        merged["lm_head.weight"] = merged["embed.weight"]
    return merged


def _on_rank0(obj) -> list | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere): only rank 0 writes what they make up."""
    every = [None] * torch.distributed.get_world_size() if torch.distributed.get_rank() == 0 else None
    torch.distributed.gather_object(obj, every, dst=0)
    return every


_AUTOEP_EXPERT = re.compile(r"^(?P<layer>.+)\.experts\.w(?P<w>[123])$")
_AUTOEP_ROUTER = re.compile(r"^(?P<layer>.+)\.router\.gate\.weight$")
# AutoEP's stacked expert weights → the compiled MLP's projections (the names ds_config.json gives it)
_AUTOEP_NAMES = {"1": "gate_proj", "2": "down_proj", "3": "up_proj"}


def _experts_gathered(engine, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The compiled Model's state from AutoEP layers: each rank holds experts [r·E/ep, (r+1)·E/ep) of every MoE
    layer stacked as w1/w2/w3 and its router as ``router.gate``; rank 0 gets them back under the Model's names."""
    ep_rank = {name: module.ep_rank for name, module in engine.module.named_modules()
               if hasattr(module, "num_local_experts") and hasattr(module, "ep_rank")}
    every = _on_rank0((ep_rank, {k: v for k, v in local.items() if _AUTOEP_EXPERT.match(k)}))
    if every is None:
        return {}
    state = {}
    for key, value in local.items():
        router = _AUTOEP_ROUTER.match(key)
        if router:
            state[f"{router['layer']}.router.weight"] = value
        elif not _AUTOEP_EXPERT.match(key):
            state[key] = value
    for ranks, experts in every:
        for key, stacked in experts.items():
            found = _AUTOEP_EXPERT.match(key)
            first = ranks[found["layer"]] * stacked.shape[0]
            for i, weight in enumerate(stacked):
                state[f"{found['layer']}.experts.{first + i}.{_AUTOEP_NAMES[found['w']]}.weight"] = weight.clone()
    return state


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
