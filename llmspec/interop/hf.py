"""``llmspec import-hf`` and ``export-hf``: transformers checkpoints in and out, exactly.

Import writes ``spec.yaml`` (the model as found; training, parallelism and cluster are placeholders to edit) and,
when the checkpoint has weights, ``model.safetensors`` in the compiled model's parameter names. Export writes
``config.json`` and ``model.safetensors`` that ``AutoModelForCausalLM.from_pretrained`` loads.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmspec.compile.build import check_output_dir
from llmspec.compile.loading import model_module
from llmspec.errors import LLMSpecError
from llmspec.files import replaced_atomically, write_atomic
from llmspec.interop.hf_config import family_of, hf_config, hf_family, model_from_hf
from llmspec.interop.hf_weights import from_hf, to_hf
from llmspec.spec.loading import dump_spec, parse_spec
from llmspec.spec.schema import Spec


def read_hf_config(hf_dir: Path) -> dict[str, Any]:
    path = hf_dir / "config.json"
    if not path.is_file():
        raise LLMSpecError(f"{hf_dir}: no config.json (expected a transformers checkpoint directory)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise LLMSpecError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(config, dict):
        raise LLMSpecError(f"{path}: expected a JSON object")
    return config


def read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor] | None:
    """All tensors of a checkpoint (safetensors or PyTorch .bin, single or sharded), or None when it has none."""
    for index_name, loader in (("model.safetensors.index.json", _load_safetensors),
                               ("pytorch_model.bin.index.json", _load_bin)):
        index = hf_dir / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            tensors: dict[str, torch.Tensor] = {}
            for shard in shards:
                tensors.update(loader(hf_dir / Path(shard).name))
            return tensors
    if (hf_dir / "model.safetensors").is_file():
        return _load_safetensors(hf_dir / "model.safetensors")
    if (hf_dir / "pytorch_model.bin").is_file():
        return _load_bin(hf_dir / "pytorch_model.bin")
    return None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise LLMSpecError(f"{path}: cannot read safetensors ({error})") from None


def _load_bin(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)  # never unpickle code
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's input error
        raise LLMSpecError(f"{path}: cannot read PyTorch weights ({type(error).__name__})") from None


def spec_name(text: str) -> str:
    """A spec name from free text (a directory name): letters, digits, . _ - only."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:64]
    return name or "imported"


def imported_spec(config: dict[str, Any], name: str, source: str) -> Spec:
    model = model_from_hf(config, source)
    seq_len = min(model["max_seq_len"], 4096)
    data = {
        "name": spec_name(name),
        "model": model,
        # Placeholders: a checkpoint says nothing about how it will be trained. Edit before planning a run.
        "training": {"seq_len": seq_len, "micro_batch_size": 1, "global_batch_size": 8, "max_steps": 1000,
                     "precision": "bf16", "schedule": {"warmup_steps": 100}},
        "parallelism": {"zero_stage": 0},
        "cluster": {"gpu": "A100-80GB", "gpus_per_node": 8, "nodes": 1},
    }
    return parse_spec(yaml.safe_dump(data, sort_keys=False), source=source)


def _expected_state(spec: Spec) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return model_module(spec).Model().state_dict()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def import_hf(hf_dir: str | Path, out_dir: str | Path, name: str | None = None) -> list[Path]:
    """Write ``spec.yaml`` (and ``model.safetensors`` when there are weights) for a transformers checkpoint."""
    hf_dir, out = Path(hf_dir), Path(out_dir)
    check_output_dir(out, (hf_dir,))
    config = read_hf_config(hf_dir)
    source = str(hf_dir / "config.json")
    spec = imported_spec(config, name or hf_dir.resolve().name, source)
    weights = read_hf_weights(hf_dir)
    state = None
    if weights is not None:
        state = from_hf(weights, _expected_state(spec), family_of(config), spec.model.tie_embeddings, str(hf_dir))
    check_output_dir(out).mkdir(parents=True, exist_ok=True)
    written = [write_atomic(out / "spec.yaml", dump_spec(spec, editable=True))]
    if state is not None:
        # safetensors refuses shared storage: the tied head is stored as its own copy so that
        # load_state_dict(strict=True) finds every name.
        if spec.model.tie_embeddings:
            state["lm_head.weight"] = state["lm_head.weight"].clone()
        written.append(_save_atomic(state, out / "model.safetensors", {"format": "pt", "llmspec_spec": spec.name}))
    for name in TOKENIZER_FILES:  # the checkpoint's own tokenizer, for `data.tokenizer.path` and export-hf
        if (hf_dir / name).is_file():
            shutil.copyfile(hf_dir / name, out / name)
            written.append(out / name)
    return written


def load_weights(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or a PyTorch file (a training checkpoint's model); ``mmap``: a PyTorch
    file's tensors are mapped, not read (for their shapes)."""
    if not path.is_file():
        raise LLMSpecError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    state = _load_bin(path, mmap)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint: {"model": ..., "optimizer": ...}
    return state


def export_hf(weights: str | Path, spec: Spec, out_dir: str | Path) -> list[Path]:
    """config.json + model.safetensors for transformers, from the compiled model's weights."""
    hf_family(spec)  # refuses a spec no transformers family computes, before reading anything
    check_output_dir(Path(out_dir), (Path(weights),))
    return export_state(load_weights(Path(weights)), spec, out_dir, source=str(weights))


def export_state(state: dict[str, torch.Tensor], spec: Spec, out_dir: str | Path,
                 source: str = "weights") -> list[Path]:
    """config.json + model.safetensors for transformers, from a state dict of the compiled model."""
    family = hf_family(spec)
    expected = _expected_state(spec)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise LLMSpecError(f"{source}: does not match spec {spec.name!r} ({what})")
    for key, like in expected.items():
        if tuple(state[key].shape) != tuple(like.shape):
            raise LLMSpecError(f"{source}: {key} has shape {tuple(state[key].shape)}, spec {spec.name!r} "
                               f"implies {tuple(like.shape)}")
    out = check_output_dir(Path(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    tensors = to_hf(state, family, spec.model.tie_embeddings)
    dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    return [write_atomic(out / "config.json", json.dumps(hf_config(spec, dtype), indent=2) + "\n"),
            _save_atomic(tensors, out / "model.safetensors", {"format": "pt"})]


def export_reward_state(state: dict[str, torch.Tensor], spec: Spec, out_dir: str | Path) -> list[Path]:
    """A reward model (the compiled model under a value head) for transformers' ``*ForSequenceClassification``
    with one label: the base's tensors, the value head as ``score``. transformers reads the score at the last
    position that is not padding; ``pad_token_id`` is left unset (the tokenizer pads with end-of-text, which ends
    every scored response), so it reads the last position: one sequence, or unpadded batches of equal length."""
    family = hf_family(spec)
    if set(state) != set(_expected_state(spec)):
        raise LLMSpecError(f"weights: do not match the reward model of spec {spec.name!r}")
    body = {name: tensor for name, tensor in state.items() if name != "value_head.weight"}
    tensors = {**to_hf(body, family, tied=True), "score.weight": state["value_head.weight"].detach().contiguous()}
    config = hf_config(spec.model_copy(update={"post_training": None}), str(tensors["score.weight"].dtype)[6:])
    head = "GPT2LMHeadModel" if family == "gpt2" else config["architectures"][0]
    config.update(architectures=[head.replace("LMHeadModel", "ForSequenceClassification")
                                 .replace("ForCausalLM", "ForSequenceClassification")],
                  num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    out = check_output_dir(Path(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    return [write_atomic(out / "config.json", json.dumps(config, indent=2) + "\n"),
            _save_atomic(tensors, out / "model.safetensors", {"format": "pt"})]


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    with replaced_atomically(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    return path
