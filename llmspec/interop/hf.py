"""``llmspec import-hf`` and ``export-hf``: transformers checkpoints in and out, exactly.

Import writes ``spec.yaml`` (the model as found; training, parallelism and cluster are placeholders to edit) and,
when the checkpoint has weights, ``model.safetensors`` in the compiled model's parameter names, beside the
checkpoint's tokenizer and what travels with it (chat template, generation config: ``hf_files``) and a note of
where it was read (``imported_from.json``). Export writes ``config.json`` and ``model.safetensors`` that
``AutoModelForCausalLM.from_pretrained`` loads. Neither replaces a file it did not write (``output``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

from llmspec.compile.loading import model_module
from llmspec.errors import LLMSpecError, Problem, SpecError
from llmspec.interop.hf_config import hf_config, hf_family
from llmspec.interop.hf_config_read import config_key, family_of, language_model_config, model_from_hf
from llmspec.interop.hf_files import IMPORT_RECORD, TOKENIZER_FILES, files_in, generation_config_of, import_record
from llmspec.interop.hf_weights import from_hf, language_model_weights, to_hf
from llmspec.interop.output import Content, Tensors, check_output, write_output
from llmspec.spec.loading import dump_spec, parse_spec
from llmspec.spec.schema import Spec


def read_hf_config(hf_dir: Path) -> dict[str, Any]:
    path = hf_dir / "config.json"
    if not path.is_file():
        raise LLMSpecError(f"{hf_dir}: no config.json (expected a transformers checkpoint directory)")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise LLMSpecError(f"{path}: cannot read ({error})") from None
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


def check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or infinity, naming the first such tensor: nothing trains or samples from them."""
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            nan = int(torch.isnan(tensor).sum())
            what = f"{nan:,} NaN" if nan else f"{int(torch.isinf(tensor).sum()):,} infinite"
            raise LLMSpecError(f"{source}: tensor {key} holds {what} value(s) of {tensor.numel():,}; a model with "
                               "weights that are not finite cannot be trained or sampled (nothing was written)")


def imported_spec(config: dict[str, Any], name: str, source: str) -> Spec:
    """The spec of a transformers config; a problem is named by the config.json key it comes from (and its line),
    not by the spec field it becomes."""
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
    try:
        return parse_spec(yaml.safe_dump(data, sort_keys=False), source=source)
    except SpecError as error:
        problems = {str(p): p for p in (_in_config(problem, config, source) for problem in error.problems)}
        raise SpecError(list(problems.values())) from None  # one line per key (seq_len is the context's too)


def _in_config(problem: Problem, config: dict[str, Any], source: str) -> Problem:
    """A problem of the derived spec as one of config.json: the key (and its line), the message in its words."""
    key = config_key(problem.path, config)
    if key is None:
        return Problem(problem.path, problem.message, None, source)
    words = {field: config_key(f"model.{field}", config) for field in _SPEC_WORDS}
    message = re.sub(r"\b(?:model\.)?(" + "|".join(_SPEC_WORDS) + r")\b", lambda m: words[m.group(1)] or m.group(0),
                     problem.message)
    return Problem(key, message, _line_of(key, Path(source)), source)


# the spec's words a validation message may use, longest first (so that n_kv_heads is not read as n_heads)
_SPEC_WORDS = ("original_max_seq_len", "tie_embeddings", "max_seq_len", "n_kv_heads", "vocab_size", "rope_theta",
               "n_layers", "head_dim", "norm_eps", "n_heads", "d_model", "d_ff")


def _line_of(key: str, path: Path) -> int | None:
    """The line of config.json where ``key`` (dotted for a nested one) is written, if it can be found."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start = 0
    for part in key.split("."):
        found = re.compile(rf'"{re.escape(part)}"\s*:').search(text, start)
        if found is None:
            return None
        start = found.start()
    return text.count("\n", 0, start) + 1


def _expected_state(spec: Spec) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return model_module(spec).Model().state_dict()


def import_hf(hf_dir: str | Path, out_dir: str | Path, name: str | None = None, force: bool = False) -> list[Path]:
    """Write ``spec.yaml`` (and ``model.safetensors`` when there are weights) for a transformers checkpoint, with
    its tokenizer, chat template and generation config, and ``imported_from.json``. A file in ``out_dir`` that
    import-hf did not write, or a run directory, is refused unless ``force``."""
    hf_dir, out = Path(hf_dir), Path(out_dir)
    # the checkpoint's own tokenizer and what travels with it, for `data.tokenizer.path`, fine-tunes and export-hf
    carried: dict[str, Content] = dict(files_in(hf_dir, TOKENIZER_FILES))
    names = ["spec.yaml", "model.safetensors", *carried, "generation_config.json", IMPORT_RECORD]
    check_output(out, names, "import-hf", force, (hf_dir,))  # before reading gigabytes of weights
    source = str(hf_dir / "config.json")
    full = read_hf_config(hf_dir)
    config = language_model_config(full, source)  # a multimodal checkpoint: its language model
    spec = imported_spec(config, name or hf_dir.resolve().name, source)
    files: dict[str, Content] = {"spec.yaml": dump_spec(spec, editable=True)}
    weights = read_hf_weights(hf_dir)
    if weights is not None and config is not full:
        weights = language_model_weights(weights)
    if weights is not None:
        check_finite(weights, str(hf_dir))
        state = from_hf(weights, _expected_state(spec), family_of(config), spec.model, str(hf_dir))
        # safetensors refuses shared storage: the tied head is stored as its own copy so that
        # load_state_dict(strict=True) finds every name.
        if spec.model.tie_embeddings:
            state["lm_head.weight"] = state["lm_head.weight"].clone()
        files["model.safetensors"] = Tensors(state, {"format": "pt", "llmspec_spec": spec.name})
    files.update(carried)
    generation = generation_config_of(config, hf_dir)  # the special token ids, carried to the export
    if generation is not None and "generation_config.json" not in files:
        files["generation_config.json"] = json.dumps(generation, indent=2) + "\n"
    files[IMPORT_RECORD] = json.dumps(import_record(hf_dir), indent=2) + "\n"
    return write_output(out, files, "import-hf", force, (hf_dir,))


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


def export_hf(weights: str | Path, spec: Spec, out_dir: str | Path, force: bool = False) -> list[Path]:
    """config.json + model.safetensors for transformers, from the compiled model's weights."""
    hf_family(spec)  # refuses a spec no transformers family computes, before reading anything
    check_output(Path(out_dir), EXPORTED, "export-hf", force, (Path(weights),))
    return export_state(load_weights(Path(weights)), spec, out_dir, source=str(weights), force=force)


# what an export of weights writes (a run's export adds its tokenizer, template and adapter)
EXPORTED = ("config.json", "model.safetensors")


def export_state(state: dict[str, torch.Tensor], spec: Spec, out_dir: str | Path, source: str = "weights",
                 force: bool = False) -> list[Path]:
    """config.json + model.safetensors for transformers, from a state dict of the compiled model."""
    return write_output(Path(out_dir), hf_model_files(state, spec, source), "export-hf", force)


def hf_model_files(state: dict[str, torch.Tensor], spec: Spec, source: str = "weights",
                   token_ids: dict[str, int] | None = None) -> dict[str, Content]:
    """config.json (with ``token_ids``: bos/eos/pad_token_id) and model.safetensors, from a state dict of the
    compiled model."""
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
    tensors = to_hf(state, family, spec.model)
    dtype = str(state["embed.weight"].dtype).removeprefix("torch.")
    config = {**hf_config(spec, dtype), **(token_ids or {})}
    return {"config.json": json.dumps(config, indent=2) + "\n", "model.safetensors": Tensors(tensors, {"format": "pt"})}


def export_reward_state(state: dict[str, torch.Tensor], spec: Spec, out_dir: str | Path,
                        force: bool = False) -> list[Path]:
    """``reward_model_files`` written into ``out_dir``."""
    return write_output(Path(out_dir), reward_model_files(state, spec), "export-hf", force)


def reward_model_files(state: dict[str, torch.Tensor], spec: Spec,
                       token_ids: dict[str, int] | None = None) -> dict[str, Content]:
    """A reward model (the compiled model under a value head) for transformers' ``*ForSequenceClassification``
    with one label: the base's tensors, the value head as ``score``. transformers reads the score at the last
    position that is not padding; ``pad_token_id`` is left unset (the tokenizer pads with end-of-text, which ends
    every scored response), so it reads the last position: one sequence, or unpadded batches of equal length."""
    family = hf_family(spec)
    if set(state) != set(_expected_state(spec)):
        raise LLMSpecError(f"weights: do not match the reward model of spec {spec.name!r}")
    body = {name: tensor for name, tensor in state.items() if name != "value_head.weight"}
    tensors = {**to_hf(body, family, spec.model), "score.weight": state["value_head.weight"].detach().contiguous()}
    config = hf_config(spec.model_copy(update={"post_training": None}), str(tensors["score.weight"].dtype)[6:])
    head = "GPT2LMHeadModel" if family == "gpt2" else config["architectures"][0]
    config.update(architectures=[head.replace("LMHeadModel", "ForSequenceClassification")
                                 .replace("ForCausalLM", "ForSequenceClassification")],
                  num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    config.update({key: value for key, value in (token_ids or {}).items() if key != "pad_token_id"})
    return {"config.json": json.dumps(config, indent=2) + "\n", "model.safetensors": Tensors(tensors, {"format": "pt"})}
