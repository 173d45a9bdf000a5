"""A run directory's model and tokenizer, and what they offer: ``generate``, samples.txt, ``export-hf RUN_DIR``."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from llmspec.compile.loading import load_model_module
from llmspec.data.chat import ChatTemplate
from llmspec.data.tokenizer import END_OF_TEXT
from llmspec.errors import LLMSpecError
from llmspec.spec.loading import parse_spec
from llmspec.spec.schema import Spec
from llmspec.train.checkpoint import latest_checkpoint, load_checkpoint
from llmspec.train.sampling import sample


def load_run(run_dir: str | Path) -> tuple[Spec, torch.nn.Module, object]:
    """The spec, the model at the latest checkpoint (eval mode, CPU) and the tokenizer of a run directory."""
    run_dir = Path(run_dir)
    spec_file = run_dir / "spec.yaml"
    if not spec_file.is_file():
        raise LLMSpecError(f"{run_dir}: not a run directory (no spec.yaml)")
    try:
        text = spec_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise LLMSpecError(f"{spec_file}: not readable ({_first_line(error)})") from None
    spec = parse_spec(text, source=str(spec_file))
    path = latest_checkpoint(run_dir / "checkpoints")
    if path is None:
        raise LLMSpecError(f"{run_dir}: no checkpoint yet")
    model_file = run_dir / "build" / "model.py"
    if not model_file.is_file():
        raise LLMSpecError(f"{run_dir}: no build/model.py (the run's model; `llmspec build` writes it)")
    try:
        model = load_model_module(model_file).Model()
    except Exception as error:  # noqa: BLE001 - model.py is the user's to edit: whatever it raises is their input's
        raise LLMSpecError(f"{model_file}: cannot build the model from it ({_first_line(error)})") from None
    try:
        model.load_state_dict(load_checkpoint(path)["model"])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as error:  # another model's
        raise LLMSpecError(f"{path}: not the weights of {model_file} ({_first_line(error)})") from None
    return spec, model.eval(), _tokenizer(run_dir / "tokenizer.json")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__


def _tokenizer(path: Path):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # noqa: BLE001 - tokenizers raises a bare Exception for a missing or damaged file
        raise LLMSpecError(f"{path}: not a readable tokenizer ({_first_line(error)})") from None


def trained_context(spec: Spec) -> int:
    """How many tokens a sequence the run's weights were trained on holds: the run's seq_len, or for weights that
    started elsewhere (init_from, an imported base) the model's max_seq_len, what the base was built for."""
    return spec.model.max_seq_len if spec.training.init_from else spec.training.seq_len


def generate(run_dir: str | Path, prompt: str, max_new_tokens: int = 100, temperature: float = 0.8,
             top_k: int | None = 50, top_p: float | None = None, seed: int = 0, chat: bool = False,
             on_text: Callable[[str], None] | None = None, on_notice: Callable[[str], None] | None = None) -> str:
    """The prompt continued (the text and its continuation), or with ``chat`` the reply to it as a user message
    under the run's chat template (``llmspec.data.chat``): the reply only, up to the token that ends it.
    ``on_text`` receives the text as it is generated, piece by piece (the pieces join to the answer); ``on_notice``
    a line when the request was changed: ``max_new_tokens`` past the trained context is cut to it."""
    spec, model, tokenizer = load_run(run_dir)
    template = ChatTemplate.beside(Path(run_dir) / "tokenizer.json")  # a damaged one: one line naming it
    if chat:
        prompt = template.prompt({"prompt": prompt})
    if hasattr(model, "value_head"):  # a reward model scores the text instead of continuing it
        return _score(model, tokenizer, prompt)
    return _complete(spec, model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed, template.end,
                     reply_only=chat, on_text=on_text, on_notice=on_notice)


def _complete(spec, model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed,
              stop: str = END_OF_TEXT, reply_only: bool = False, on_text: Callable[[str], None] | None = None,
              on_notice: Callable[[str], None] | None = None) -> str:
    """The prompt and its continuation up to ``stop`` (or, ``reply_only``, the continuation alone), at most up to
    the trained context."""
    if not math.isfinite(temperature) or temperature < 0:
        raise LLMSpecError(f"--temperature {temperature}: must be ≥ 0 (0 is greedy)")
    if top_p is not None and not 0 < top_p <= 1:
        raise LLMSpecError(f"--top-p {top_p}: must be in (0, 1]")
    if not 0 <= seed < 2**63:
        raise LLMSpecError(f"--seed {seed}: must be in [0, 2^63)")
    ids = tokenizer.encode(prompt).ids
    if not ids:
        raise LLMSpecError("the prompt is empty")
    if max(ids) >= spec.model.vocab_size:  # a tokenizer that is not the run's: its ids have no embedding
        raise LLMSpecError(f"the tokenizer gives id {max(ids)}, past model.vocab_size {spec.model.vocab_size}: it is "
                           "not the run's tokenizer.json")
    context = trained_context(spec)
    room = context - len(ids)
    if room <= 0:
        raise LLMSpecError(f"the prompt is {len(ids)} tokens: the model was trained on sequences of {context}, "
                           "which leaves it no room to answer; shorten it")
    if max_new_tokens > room:  # past the trained positions the model was never taught what comes next
        if on_notice is not None:
            on_notice(f"--max-new-tokens {max_new_tokens} cut to {room}: the model was trained on sequences of "
                      f"{context} tokens and the prompt holds {len(ids)}")
        max_new_tokens = room
    stream = _Stream(tokenizer, ids, reply_only, on_text) if on_text is not None else None
    generator = torch.Generator().manual_seed(seed)
    out = sample(model, torch.tensor([ids]), max_new_tokens, spec.model.max_seq_len, temperature, top_k, top_p,
                 generator, stop_token=tokenizer.token_to_id(stop), on_token=stream)
    tokens = out[0].tolist()[len(ids) if reply_only else 0:]
    text = tokenizer.decode(tokens).strip() if reply_only else tokenizer.decode(tokens)
    if stream is not None:
        stream.finish(text)
    return text


class _Stream:
    """Text handed on as the tokens come. The tokens so far are decoded whole each time (a character of byte-level
    BPE can span tokens, and some decoders join pieces with spaces), and only what is settled is passed on: no half
    character, and (for a reply, which is stripped) no trailing space yet."""

    def __init__(self, tokenizer, prompt_ids: list[int], reply_only: bool, on_text: Callable[[str], None]):
        self.tokenizer, self.reply_only, self.on_text = tokenizer, reply_only, on_text
        self.ids = [] if reply_only else list(prompt_ids)
        self.sent, self.diverged = "", False
        if not reply_only:  # the prompt first, as it will be printed
            self._send(tokenizer.decode(self.ids))

    def __call__(self, token: torch.Tensor) -> None:
        self.ids.append(int(token[0]))
        text = self.tokenizer.decode(self.ids)
        text = text.strip() if self.reply_only else text
        self._send(text.rstrip("\ufffd"))

    def _send(self, settled: str) -> None:
        if self.diverged or len(settled) <= len(self.sent):
            return
        if not settled.startswith(self.sent):  # a decoder that rewrote earlier text: wait for the end
            self.diverged = True
            return
        self.on_text(settled[len(self.sent):])
        self.sent = settled

    def finish(self, text: str) -> None:
        """The rest of the final text (all of it again, on a line of its own, if the decoder rewrote what was sent)."""
        if text.startswith(self.sent):
            if len(text) > len(self.sent):
                self.on_text(text[len(self.sent):])
        else:
            self.on_text("\n" + text)


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
