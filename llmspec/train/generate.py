"""A run directory's model and tokenizer, and what they offer: ``generate``, samples.txt, ``export-hf RUN_DIR``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from llmspec.compile.build import check_output_dir
from llmspec.compile.loading import load_model_module
from llmspec.compile.measured_models import dtype_of
from llmspec.data.chat import DEFAULT_JINJA, ChatTemplate
from llmspec.data.tokenizer import END_OF_TEXT
from llmspec.errors import LLMSpecError
from llmspec.spec.loading import parse_spec
from llmspec.spec.schema import Spec
from llmspec.train.checkpoint import latest_checkpoint, load_checkpoint
from llmspec.train.sampling import sample


def load_run(run_dir: str | Path) -> tuple[Spec, torch.nn.Module, object]:
    """The spec, the model at the latest checkpoint (eval mode, CPU) and the tokenizer of a run directory."""
    from tokenizers import Tokenizer

    run_dir = Path(run_dir)
    spec_file = run_dir / "spec.yaml"
    if not spec_file.is_file():
        raise LLMSpecError(f"{run_dir}: not a run directory (no spec.yaml)")
    spec = parse_spec(spec_file.read_text(), source=str(spec_file))
    path = latest_checkpoint(run_dir / "checkpoints")
    if path is None:
        raise LLMSpecError(f"{run_dir}: no checkpoint yet")
    model = load_model_module(run_dir / "build" / "model.py").Model()
    model.load_state_dict(load_checkpoint(path)["model"])
    return spec, model.eval(), Tokenizer.from_file(str(run_dir / "tokenizer.json"))


def generate(run_dir: str | Path, prompt: str, max_new_tokens: int = 100, temperature: float = 0.8,
             top_k: int | None = 50, top_p: float | None = None, seed: int = 0, chat: bool = False) -> str:
    """The prompt continued (the text and its continuation), or with ``chat`` the reply to it as a user message
    under the run's chat template (``llmspec.data.chat``): the reply only, up to the token that ends it."""
    spec, model, tokenizer = load_run(run_dir)
    template = ChatTemplate.beside(Path(run_dir) / "tokenizer.json")
    if chat:
        prompt = template.prompt({"prompt": prompt})
    if hasattr(model, "value_head"):  # a reward model scores the text instead of continuing it
        return _score(model, tokenizer, prompt)
    return _complete(spec, model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed, template.end,
                     reply_only=chat)


def _complete(spec, model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed,
              stop: str = END_OF_TEXT, reply_only: bool = False) -> str:
    """The prompt and its continuation up to ``stop`` (or, ``reply_only``, the continuation alone)."""
    if temperature < 0:
        raise LLMSpecError(f"--temperature {temperature}: must be ≥ 0 (0 is greedy)")
    if top_p is not None and not 0 < top_p <= 1:
        raise LLMSpecError(f"--top-p {top_p}: must be in (0, 1]")
    ids = tokenizer.encode(prompt).ids
    if not ids:
        raise LLMSpecError("the prompt is empty")
    generator = torch.Generator().manual_seed(seed)
    out = sample(model, torch.tensor([ids]), max_new_tokens, spec.model.max_seq_len, temperature, top_k, top_p,
                 generator, stop_token=tokenizer.token_to_id(stop))
    tokens = out[0].tolist()[len(ids) if reply_only else 0:]
    return tokenizer.decode(tokens).strip() if reply_only else tokenizer.decode(tokens)


def write_samples(run_dir: Path, prompts: list[str]) -> list[str]:
    spec, model, tokenizer = load_run(run_dir)
    if hasattr(model, "value_head"):
        return _write_scores(run_dir, model, tokenizer, prompts)
    texts = [_complete(spec, model, tokenizer, p, 80, 0.8, 50, 0.95, seed=i) for i, p in enumerate(prompts)]
    (run_dir / "samples.txt").write_text("".join(f"--- {p!r}\n{t}\n\n" for p, t in zip(prompts, texts, strict=True)))
    return texts


def _write_scores(run_dir: Path, model: torch.nn.Module, tokenizer, texts: list[str]) -> list[str]:
    """A reward model scores instead of generating: each text's score after its last token."""
    lines = [_score(model, tokenizer, text) for text in texts]
    (run_dir / "samples.txt").write_text("scores of the reward model:\n" + "\n".join(lines) + "\n")
    return lines


@torch.no_grad()
def _score(model: torch.nn.Module, tokenizer, text: str) -> str:
    """A reward model's score of ``text``, read after its last token."""
    ids = tokenizer.encode(text).ids[-model.config.max_seq_len:]
    if not ids:
        raise LLMSpecError("the prompt is empty")
    return f"{model(torch.tensor([ids]))[0][0, -1].item():+.3f}  {text!r}"


def export_run(run_dir: str | Path, out: str | Path) -> list[Path]:
    """config.json + model.safetensors + the tokenizer, loadable with transformers' Auto classes (a LoRA run: the
    merged model, and its adapter for PEFT in ``out/adapter``; a reward model: a sequence classifier)."""
    run_dir, out = Path(run_dir), Path(out)
    check_output_dir(out, (run_dir,))  # before the run is read: nothing is written into the run
    spec, model, _ = load_run(run_dir)
    written = _export_weights(spec, model, out)
    shutil.copyfile(run_dir / "tokenizer.json", out / "tokenizer.json")
    written += [out / "tokenizer.json", _write_tokenizer_config(run_dir, spec, out)]
    if (run_dir / "chat_template.jinja").is_file():
        written.append(Path(shutil.copyfile(run_dir / "chat_template.jinja", out / "chat_template.jinja")))
    return written


def _write_tokenizer_config(run_dir: Path, spec: Spec, out: Path) -> Path:
    """The base's tokenizer config (its chat template and special tokens) when it came from Hugging Face, else one
    for the run's own tokenizer; a run under the default chat template gets it as Jinja (transformers'
    ``apply_chat_template`` then renders the prompts the run was fine-tuned on)."""
    base = run_dir / "tokenizer_config.json"
    config = json.loads(base.read_text(encoding="utf-8")) if base.is_file() else {
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": END_OF_TEXT, "bos_token": END_OF_TEXT,
        "unk_token": END_OF_TEXT, "model_max_length": spec.model.max_seq_len}
    if ChatTemplate.beside(run_dir / "tokenizer.json").is_default:
        config["chat_template"] = DEFAULT_JINJA
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out / "tokenizer_config.json"


def _export_weights(spec: Spec, model: torch.nn.Module, out: Path) -> list[Path]:
    """The run's model for transformers; a LoRA run's merged into its base (a quantised base dequantised first, as
    its forward does), plus its adapter in PEFT's format (``out/adapter``)."""
    from llmspec.interop.hf import export_reward_state, export_state
    from llmspec.interop.peft_adapter import base_spec, dequantised_state, merged_spec, merged_state, write_adapter

    post = spec.post_training
    state = dequantised_state(model, dtype_of(spec))
    if post is None or post.adapter.type == "none" and not post.value_model:
        return export_state(state, spec, out)
    if post.adapter.type == "prefix":
        raise LLMSpecError("export-hf: prefix key/values have no transformers export (a transformers model holds no "
                           "per-layer prefix, and PEFT's prefix tuning shifts positions by the prefix length, which "
                           "this model does not); LoRA runs and full fine-tunes export")
    if post.value_model:  # a sequence-classification model with one label; LoRA merged into its base first
        if post.adapter.type == "lora":
            return export_reward_state(merged_state(state, spec), merged_spec(spec), out)
        return export_reward_state(state, spec, out)
    written = export_state(merged_state(state, spec), base_spec(spec), out)
    if not spec.model.fused_qkv:
        written += write_adapter(state, spec, out / "adapter")
    return written
