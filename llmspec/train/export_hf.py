"""``llmspec export-hf RUN_DIR -o DIR``: a run directory as transformers and PEFT load it.

The model (a LoRA run's merged into its base, a quantised base dequantised as its forward dequantises it; a reward
model as a sequence classifier), the run's tokenizer and chat template, and the special token ids, so that the
export's template, tokenizer, config.json and generation_config.json agree on the one token that ends a reply:
transformers' ``generate`` stops where ``llmspec generate --chat`` stops. The ids are the run's tokenizer's ids of
the base's special tokens (carried from ``import-hf`` through the run beside the tokenizer), or, for a model
pretrained by llmspec, of <|endoftext|>, which ends its documents and its default template's replies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llmspec.compile.measured_models import dtype_of
from llmspec.data.chat import DEFAULT_JINJA, ChatTemplate
from llmspec.data.tokenizer import END_OF_TEXT
from llmspec.errors import LLMSpecError
from llmspec.interop.hf import hf_model_files, reward_model_files
from llmspec.interop.hf_files import (
    base_model_name,
    exported_generation_config,
    files_in,
    read_json,
    special_token_ids,
)
from llmspec.interop.output import Content, check_output, write_output
from llmspec.interop.peft_adapter import adapter_files, base_spec, dequantised_state, merged_spec, merged_state
from llmspec.spec.schema import Spec
from llmspec.train.generate import load_run


def export_run(run_dir: str | Path, out: str | Path, force: bool = False) -> list[Path]:
    """config.json + model.safetensors + generation_config.json + the tokenizer and its chat template, loadable with
    transformers' Auto classes (a LoRA run: the merged model, and its adapter for PEFT in ``out/adapter``; a reward
    model: a sequence classifier). A file in ``out`` that export-hf did not write is refused unless ``force``."""
    run_dir, out = Path(run_dir), Path(out)
    check_output(out, [], "export-hf", force, (run_dir,))  # before the run is read: nothing is written into the run
    spec, model, tokenizer = load_run(run_dir)
    return _export(spec, lambda ids: _model_files(spec, model, ids, run_dir, out), run_dir, tokenizer, out, force,
                   trained=True)


def export_folder(folder: str | Path, spec: Spec, out: str | Path, force: bool = False) -> list[Path]:
    """An ``import-hf`` output (spec.yaml, model.safetensors) as ``export_run`` exports a run: the model, and, where
    the folder holds a tokenizer, the tokenizer, its chat template and the token ids."""
    from tokenizers import Tokenizer

    from llmspec.interop.hf import hf_family, load_weights

    folder, out = Path(folder), Path(out)
    hf_family(spec)  # refuses a spec no transformers family computes, before reading anything
    check_output(out, [], "export-hf", force, (folder,))
    state = load_weights(folder / "model.safetensors")
    if not (folder / "tokenizer.json").is_file():
        return write_output(out, hf_model_files(state, spec, str(folder)), "export-hf", force, (folder,))
    try:
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as error:  # noqa: BLE001 - the tokenizers library raises its own types for a damaged file
        raise LLMSpecError(f"{folder / 'tokenizer.json'}: not a readable tokenizer ({error})") from None
    return _export(spec, lambda ids: hf_model_files(state, spec, str(folder), ids), folder, tokenizer, out, force,
                   trained=False)


def _export(spec: Spec, model_files: Callable[[dict[str, int]], dict[str, Content]], source: Path, tokenizer: Any,
            out: Path, force: bool, trained: bool) -> list[Path]:
    """The model's files (``model_files(token_ids)``) with the tokenizer of ``source`` and what travels with it,
    under the token ids they agree on (``trained``: a run, which may have been fine-tuned under the default
    template; an import was not, and keeps its tokenizer config as it is)."""
    template = ChatTemplate.beside(source / "tokenizer.json")
    tokenizer_config = _tokenizer_config(source, spec, template, tokenizer, trained)
    generation = read_json(source / "generation_config.json")
    classifier = spec.post_training is not None and spec.post_training.value_model
    # the token that ends a reply: the template's (a run under the default one learned <|endoftext|>), where the
    # tokenizer holds it; else the tokenizer config's eos_token
    ends_replies = trained or not template.is_default
    end = template.end if ends_replies and tokenizer.token_to_id(template.end) is not None else None
    ids = special_token_ids(tokenizer, tokenizer_config, generation, end, pad=not classifier)
    files = model_files(ids)
    if not classifier:  # what generate() reads its stop token from
        files["generation_config.json"] = json.dumps(exported_generation_config(generation, ids), indent=2) + "\n"
    files["tokenizer.json"] = source / "tokenizer.json"
    files["tokenizer_config.json"] = json.dumps(tokenizer_config, indent=2) + "\n"
    files.update(files_in(source, ("chat_template.jinja", "additional_chat_templates")))
    return write_output(out, files, "export-hf", force, (source,))


def _tokenizer_config(run_dir: Path, spec: Spec, template: ChatTemplate, tokenizer: Any, trained: bool = True
                      ) -> dict[str, Any]:
    """The base's tokenizer config (its chat template and special tokens) when it came from Hugging Face, else one
    for the run's own tokenizer; a run under the default chat template gets it as Jinja (transformers'
    ``apply_chat_template`` then renders the prompts the run was fine-tuned on) and its end token as eos_token."""
    config = read_json(run_dir / "tokenizer_config.json") or {
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": END_OF_TEXT, "bos_token": END_OF_TEXT,
        "unk_token": END_OF_TEXT, "model_max_length": spec.model.max_seq_len}
    if template.is_default and trained:
        config["chat_template"] = DEFAULT_JINJA
        if tokenizer.token_to_id(template.end) is not None:
            config["eos_token"] = template.end
    return config


def hf_base(spec: Spec) -> str | None:
    """The Hugging Face model a run started from: what import-hf recorded in its ``training.init_from`` folder."""
    init = spec.training.init_from
    return base_model_name(Path(init).expanduser()) if init else None


def _model_files(spec: Spec, model: torch.nn.Module, ids: dict[str, int], run_dir: Path, out: Path
                 ) -> dict[str, Content]:
    """The run's model for transformers; a LoRA run's merged into its base (a quantised base dequantised first, as
    its forward does), plus its adapter in PEFT's format (``adapter/``)."""
    post = spec.post_training
    state = dequantised_state(model, dtype_of(spec))
    if post is None or post.adapter.type == "none" and not post.value_model:
        return hf_model_files(state, spec, str(run_dir), ids)
    if post.adapter.type == "prefix":
        raise LLMSpecError("export-hf: prefix key/values have no transformers export (a transformers model holds no "
                           "per-layer prefix, and PEFT's prefix tuning shifts positions by the prefix length, which "
                           "this model does not); LoRA runs and full fine-tunes export")
    if post.value_model:  # a sequence-classification model with one label; LoRA merged into its base first
        if post.adapter.type == "lora":
            return reward_model_files(merged_state(state, spec), merged_spec(spec), ids)
        return reward_model_files(state, spec, ids)
    files = hf_model_files(merged_state(state, spec), base_spec(spec), str(run_dir), ids)
    if not spec.model.fused_qkv:
        base = hf_base(spec)
        merged = None if base else out.resolve()
        adapter = adapter_files(state, spec, base or str(merged), merged)
        files.update({f"adapter/{name}": content for name, content in adapter.items()})
    return files
