"""``llmspec measure``: the compiled model, measured without memory, beside the planner's predictions.

- Parameters: the model built on the meta device, shared tensors counted once.
- FLOPs: one micro-batch forward + backward on the meta device under ``FlopCounterMode``. There SDPA takes the
  math path, which the counter sees, and counts attention in full (every query against every key). The planner
  counts the causal triangle (or the window), so the comparison swaps in full attention on the planner's side;
  recomputed FLOPs (checkpointing) are counted by both.
- Activations: the bytes saved for backward by one micro-batch under ``FakeTensorMode`` on the CPU device, where
  SDPA takes the flash path and saves O(s) statistics as GPU kernels do. Saved-tensor hooks see every saved
  tensor; each storage counts once (by ``untyped_storage()._cdata``), parameters excluded; logits, loss and RoPE
  tables included (``memory.activations`` in shared/design.md).
- Post-training: the step is the method's loss, the functions of the generated objectives.py; a method that
  generates its batches (PPO, GRPO) also has generation and scoring phases (``llmspec.compile.measure_rl``).

The models are built as ``llmspec.compile.measured_models`` says (MoE: balanced routing).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from llmspec.compile import measure_rl
from llmspec.compile.loading import model_module, objectives_module
from llmspec.compile.measured_models import build, fp8_saved_inputs, quantised, routing
from llmspec.planner.inputs import sequence_length
from llmspec.planner.rl_phases import PHASES_KEY
from llmspec.planner.training import CHECKPOINTING, plan, single_device_env, single_device_rl_step
from llmspec.spec.loading import value_model_spec
from llmspec.spec.post_training import sequences_per_example
from llmspec.spec.schema import Spec


@dataclass
class Comparison:
    measured: float
    planned: float

    @property
    def ratio(self) -> float:
        """planned / measured: 1.0 is a perfect prediction."""
        return self.planned / self.measured if self.measured else float("nan")

    def to_json(self) -> dict[str, float]:
        return {"measured": self.measured, "planned": self.planned, "ratio": self.ratio}


@dataclass
class Measurement:
    spec: Spec
    params: Comparison
    flops: dict[str, Comparison] = field(default_factory=dict)  # per checkpointing mode, one micro-batch
    activations: dict[str, Comparison] = field(default_factory=dict)  # bytes, per checkpointing mode
    notes: list[str] = field(default_factory=list)
    trainable: Comparison | None = None  # post-training: parameters with gradients
    frozen_bytes: Comparison | None = None  # post-training: the frozen weights as stored
    phases: dict[str, Comparison] = field(default_factory=dict)  # ppo/grpo: generation and scoring, per GPU

    def to_json(self) -> dict[str, Any]:
        tr = self.spec.training
        extra = {} if self.trainable is None else {"trainable": self.trainable.to_json(),
                                                   "frozen_bytes": self.frozen_bytes.to_json()}
        if self.phases:
            extra["phases"] = {name: c.to_json() for name, c in self.phases.items()}
        return {
            "name": self.spec.name,
            "micro_batch": {"sequences": tr.micro_batch_size, "seq_len": sequence_length(self.spec)},
            "params": self.params.to_json(), **extra,
            "flops": {mode: c.to_json() for mode, c in self.flops.items()},
            "activations": {mode: c.to_json() for mode, c in self.activations.items()},
            "notes": self.notes,
        }


def _with_checkpointing(spec: Spec, mode: str) -> Spec:
    par = spec.parallelism.model_copy(update={"activation_checkpointing": mode})
    return spec.model_copy(update={"parallelism": par})


def _batch(spec: Spec, device: str) -> torch.Tensor:
    tr = spec.training
    return torch.zeros((tr.micro_batch_size * sequences_per_example(spec.post_training), sequence_length(spec)),
                       dtype=torch.long, device=device)


def _trained(spec: Spec) -> list[torch.nn.Module]:
    """The models a step trains, built on the current device or fake mode: the compiled model, and a critic where
    one trains beside it (``value_model_spec``: a value head on the policy's architecture, trained as the policy
    is)."""
    post = spec.post_training
    critic = [build(value_model_spec(spec))] if post is not None and post.trains_critic else []
    return [build(spec), *critic]


def _train_step(spec: Spec, trained: list[torch.nn.Module], objectives: Any, device: str,
                backward: bool = True) -> torch.Tensor:
    """One micro-batch of the spec's objective, forward (+ backward); returns its loss. Without objectives.py
    (pretraining, sft): model.py's next-token cross-entropy. Else the method's loss (objectives.py's
    ``<method>_loss``) on what it takes:
    - a critic trains beside the policy (ppo): the policy's logits and the critic's values, with the rollouts' old
      log-probs, values, advantages and returns (inputs: zeros here);
    - other rollouts (grpo): the policy's and the reference's per-token log-probs, one advantage per sequence;
    - pairs under a value head (reward): each sequence's score after its last token;
    - other pairs (dpo): the policy's and the reference's sequence log-probs (the reference's from the data when
      precomputed)."""
    idx, targets = _batch(spec, device), _batch(spec, device) + 1  # distinct inputs and targets, as in training
    post, model = spec.post_training, trained[0]
    if objectives is None and spec.data.document_masking:  # each row's documents (one here: shapes decide)
        loss = model(idx, targets, segments=torch.zeros_like(idx))[1]
    elif objectives is None:
        loss = model(idx, targets)[1]
    else:
        method_loss = getattr(objectives, f"{post.method}_loss")
        if post.trains_critic:
            rollout = torch.zeros(idx.shape, device=device)
            loss = method_loss(model(idx)[0], trained[1](idx)[0], targets, rollout, rollout, rollout, rollout)
        elif post.generates:
            policy = objectives.token_logprobs(model(idx)[0], targets)
            reference = objectives.token_logprobs(_reference_logits(spec, model, idx), targets)
            advantages = torch.zeros(idx.shape[0], device=device)
            loss = method_loss(policy, reference, advantages, (targets != -100).float())
        elif post.value_model:
            scores = model(idx)[0][:, -1]
            pairs = scores.shape[0] // 2
            loss = method_loss(scores[:pairs], scores[pairs:])
        else:
            policy = objectives.sequence_logprobs(model(idx)[0], targets)
            reference = torch.zeros(idx.shape[0], device=device) if post.reference == "precomputed" else \
                objectives.sequence_logprobs(_reference_logits(spec, model, idx), targets)
            pairs = idx.shape[0] // 2
            loss = method_loss(policy[:pairs], policy[pairs:], reference[:pairs], reference[pairs:])
    if backward:
        loss.backward()
    return loss


def _reference_logits(spec: Spec, model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """The reference's logits, without gradients: the model with its adapters off, or a frozen copy."""
    with torch.no_grad():
        if spec.post_training.reference == "adapter_off":
            model.set_adapters(False)
            try:
                return model(idx)[0]
            finally:
                model.set_adapters(True)
        with torch.device(idx.device):  # copy: a second model, frozen (its weights do not matter to the count)
            frozen = build(spec).eval()
        return frozen(idx)[0]


def count_params(spec: Spec) -> tuple[int, int]:
    """(trainable, frozen) parameters of the compiled model; a quantised linear counts its weights as frozen
    parameters (they are stored as buffers of codes and constants)."""
    with torch.device("meta"):
        model = model_module(spec).Model()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # a tied tensor counts once
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    frozen += sum(m.in_features * m.out_features for m in quantised(model))
    return trainable, frozen


def frozen_bytes(spec: Spec) -> int:
    """Bytes of the compiled model's frozen weights as stored: parameters that do not train, and the codes and
    constants of quantised linears."""
    with torch.device("meta"):
        model = build(spec)
    held = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    return held + sum(b.numel() * b.element_size() for m in quantised(model) for b in m.buffers(recurse=False))


def count_flops(spec: Spec) -> int:
    """FLOPs of one micro-batch forward + backward (recompute included) on the meta device."""
    with torch.device("meta"):
        trained = _trained(spec)
        objectives = objectives_module(model_module(spec))
    with routing(spec), FlopCounterMode(display=False) as counter:
        _train_step(spec, trained, objectives, "meta")
    return counter.get_total_flops()


def count_saved_bytes(spec: Spec) -> int:
    """Bytes saved for backward by one micro-batch (FakeTensorMode on the CPU device: SDPA's flash path): the
    storages of the tensors the step's graph still holds once its forward is done. A tensor packed and then let go
    (inside a checkpointed region whose output needs no gradient) is not held; a storage counts once."""
    with FakeTensorMode():
        trained = _trained(spec)
        fp8_saved_inputs(spec, trained[0])
        parameters = {p.untyped_storage()._cdata for model in trained for p in model.parameters()}
        packed: list[tuple[weakref.ref, int, int]] = []  # (the tensor as the graph holds it, storage, bytes)

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage._cdata not in parameters:
                packed.append((weakref.ref(tensor), storage._cdata, storage.nbytes()))
            return tensor

        with routing(spec), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = _train_step(spec, trained, objectives_module(model_module(spec)), "cpu", backward=False)
        # while the loss holds the graph: the storages of the tensors it still keeps (a freed storage's address may
        # have been reused, so only live tensors name a storage)
        held = {storage: size for tensor, storage, size in packed if tensor() is not None}
        del loss
    return sum(held.values())


def measure(spec: Spec, modes: tuple[str, ...] = CHECKPOINTING) -> Measurement:
    """Measure the compiled model of ``spec`` for each checkpointing mode and compare with the planner."""
    planned = plan(spec, alternatives=False)
    trainable, frozen = count_params(spec)
    result = Measurement(spec, Comparison(trainable + frozen, planned.params["trainable"] + planned.params["frozen"]))
    if spec.post_training is not None:
        result.trainable = Comparison(trainable, planned.params["trainable"])
        result.frozen_bytes = Comparison(frozen_bytes(spec), planned.env["bytes_frozen"])
    post = spec.post_training
    roles = ("policy", "critic") if post is not None and post.trains_critic else ("policy",)
    for mode in modes:
        variant = _with_checkpointing(spec, mode)
        # fake tensors follow the CPU kernels; FlopCounterMode counts every key of SDPA. PPO's step trains the
        # policy and its critic (one loss, one backward): both models' FLOPs and saved bytes
        envs = [single_device_env(spec, mode, cpu_kernels=True, full_attention=True, role=role) for role in roles]
        result.flops[mode] = Comparison(count_flops(variant),
                                        sum(env["flops_per_token_hardware"] * env["b"] * env["s"] for env in envs))
        result.activations[mode] = Comparison(count_saved_bytes(variant),
                                              float(sum(env["memory_activations"] for env in envs)))
    if post is not None and post.generates:
        step = single_device_rl_step(spec, spec.parallelism.activation_checkpointing, cpu_kernels=True,
                                     full_attention=True)
        generation, cache = measure_rl.count_generation(spec)
        result.phases = {
            "generation_flops": Comparison(generation, float(step[PHASES_KEY]["generation"]["flops"])),
            "kv_cache_bytes": Comparison(cache, float(step["rl_kv_cache"])),
            "scoring_flops": Comparison(measure_rl.count_scoring(spec), float(step[PHASES_KEY]["scoring"]["flops"])),
        }
    result.notes.append("FLOPs: one micro-batch forward + backward (+ recompute); attention counted in full "
                        "(FlopCounterMode's convention) on both sides")
    result.notes.append("activations: one micro-batch on one device (no tensor/pipeline split), planned as CPU kernels "
                        "save them (LayerNorm keeps mean/rstd in the input dtype there, fp32 on GPUs)")
    if spec.post_training is not None:
        pairs = " (pairs run as 2 sequences each)" if sequences_per_example(post) == 2 else ""
        result.notes.append(f"{post.method}: its objective's step{pairs}; frozen weights as stored (quantisation "
                            "codes and constants)")
    if result.phases:
        result.notes.append(f"{post.method}: the training step is its loss on rollout-length sequences"
                            f"{' (policy and critic)' if post.trains_critic else ' (and the reference forward)'}; "
                            f"generation ({measure_rl.rollouts_per_gpu(spec)} rollouts, every response at full "
                            "length) and scoring per GPU per step")
    if spec.model.moe:
        result.notes.append("MoE: balanced routing (each expert gets tokens × top_k / n_experts)")
    return result
