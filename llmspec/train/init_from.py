"""``training.init_from``: start a run from existing weights (a run directory or an ``import-hf`` output).

The source is resolved and its tensor shapes checked against the compiled model before any data is prepared (shapes
are read without loading the tensors); each engine then loads the weights into its freshly built model before
step 0. The source's tokenizer, when it has one, is the run's (its ids are the ones the weights learned).
A resumed run starts from its own checkpoint instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from llmspec.errors import LLMSpecError
from llmspec.interop.hf import load_weights
from llmspec.spec.schema import Spec
from llmspec.train.checkpoint import latest_checkpoint

WEIGHT_SUFFIXES = (".safetensors", ".pt")


@dataclass(frozen=True)
class InitSource:
    weights: Path
    tokenizer: Path | None


def resolve(path: str | Path, field: str = "training.init_from") -> InitSource:
    """The weights file and tokenizer of a run directory (its latest checkpoint), an ``import-hf`` output
    (model.safetensors) or a weights file (``field``: the spec field that named it)."""
    path = Path(path).expanduser()
    label = f"{field} {path}"
    if path.is_file():
        if path.suffix not in WEIGHT_SUFFIXES:
            raise LLMSpecError(f"{label}: expected a run directory, an import-hf output or a .safetensors/.pt file")
        return InitSource(path, None)
    if not path.is_dir():
        from llmspec.spec.loading import named_specs

        first = f" (train the base first: `llmspec run {path.name}`)" if path.name in named_specs() else ""
        raise LLMSpecError(f"{label}: no such file or directory{first}")
    tokenizer = path / "tokenizer.json" if (path / "tokenizer.json").is_file() else None
    if (path / "model.safetensors").is_file():
        return InitSource(path / "model.safetensors", tokenizer)
    checkpoint = latest_checkpoint(path / "checkpoints")
    if checkpoint is not None:
        return InitSource(checkpoint, tokenizer)
    raise LLMSpecError(f"{label}: holds neither checkpoints/ (a run directory) nor model.safetensors (an import-hf "
                       "output)")


def tensor_shapes(weights: Path, field: str = "training.init_from") -> dict[str, tuple[int, ...]]:
    """Each tensor's shape, read from the safetensors header or a memory-mapped PyTorch file (no tensor is read)."""
    label = f"{field} {weights}"
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(weights), "pt") as handle:
                return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
        except Exception as error:  # noqa: BLE001 - a damaged file is the user's input error
            raise LLMSpecError(f"{label}: cannot read it ({type(error).__name__}: {error})") from None
    try:
        state = load_weights(weights, mmap=True)
    except LLMSpecError as error:
        raise LLMSpecError(f"{field} {error}") from None
    if not isinstance(state, dict):
        raise LLMSpecError(f"{label}: holds no state dict")
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def check_shapes(source: InitSource, expected: dict[str, tuple[int, ...]], field: str = "training.init_from",
                 found: dict[str, tuple[int, ...]] | None = None) -> None:
    """Refuse weights that are not the spec's model (``field`` names the spec field they came from), naming the
    first tensor that differs."""
    found = tensor_shapes(source.weights, field) if found is None else found
    label = f"{field} {source.weights}"
    for name, shape in expected.items():
        if name not in found:
            raise LLMSpecError(f"{label}: has no tensor {name} (the spec's model needs {len(expected)} tensors)")
        if found[name] != shape:
            raise LLMSpecError(f"{label}: {name} is {_fmt(found[name])} there but {_fmt(shape)} in this spec's "
                               "model")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise LLMSpecError(f"{label}: {extra[0]} is not a tensor of this spec's model ({len(extra)} extra)")


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")"


def expected_shapes(spec: Spec) -> dict[str, tuple[int, ...]]:
    """The tensors the source must hold: the model's own, or for post-training the base's (the pretrained model
    the adapters, value head and quantisation are added to)."""
    from llmspec.compile.loading import model_module

    base = spec if spec.post_training is None else spec.model_copy(update={"post_training": None})
    with torch.device("meta"):
        return {name: tuple(t.shape) for name, t in model_module(base).Model().state_dict().items()}


def check_init_from(spec: Spec) -> InitSource | None:
    """The spec's init_from source, checked against its model; None when it starts from random weights."""
    if spec.training.init_from is None:
        return None
    source = resolve(spec.training.init_from)
    check_shapes(source, expected_shapes(spec))
    return source


def initial_model(job, module=None) -> torch.nn.Module:
    """The job's model before step 0, built from model.py under the training seed, then given the init_from
    weights (a resumed run's checkpoint is loaded over them; the job has them only where a reference copy needs
    the start). Its method adds what it trains beside it (``Method.model``: PPO's critic)."""
    from llmspec.compile.loading import load_model_module

    torch.manual_seed(job.spec.training.seed)
    model = (module or load_model_module(job.model_file)).Model()
    if job.init_weights is not None:  # resuming too: a reference copy is taken of the start (the checkpoint follows)
        load_initial_weights(model, job.init_weights)
    return model


def load_initial_weights(model: torch.nn.Module, weights: Path) -> None:
    """Copy the weights into ``model`` (the shapes were checked when the run was prepared). A post-training
    model takes a base's tensors: an adapted linear's under ``base_layer`` (PEFT's names), a quantised one's
    quantised as it loads; only what the run trains from scratch (adapters) may be left out."""
    modules = dict(model.named_modules())
    state = {}
    for name, tensor in load_weights(weights).items():
        path, _, leaf = name.rpartition(".")
        state[f"{path}.base_layer.{leaf}" if hasattr(modules.get(path), "base_layer") else name] = tensor
    fresh = {name for name, p in model.named_parameters() if p.requires_grad and added_tensor(name)}
    fresh |= {f"{path}.{buffer}" for path, module in modules.items() if hasattr(module, "dequantised")
              for buffer, _ in module.named_buffers(recurse=False)}
    result = model.load_state_dict(state, strict=False)
    missing = [name for name in result.missing_keys if name not in fresh]
    # a reward model or critic replaces the base's LM head with a value head
    unexpected = [name for name in result.unexpected_keys
                  if not (name.startswith("lm_head.") and hasattr(model, "value_head"))]
    if missing or unexpected:
        raise LLMSpecError(f"training.init_from {weights}: "
                           + (f"has no tensor {missing[0]}" if missing else
                              f"{unexpected[0]} is not a tensor of this spec's model"))


def added_tensor(name: str) -> bool:
    """Tensors a post-training model adds to its base (its adapters, prefix and value head)."""
    return any(part in name for part in ("lora_A", "lora_B", "prefix_key", "prefix_value", "value_head"))
