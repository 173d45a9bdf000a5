"""The chat template: how a conversation becomes the text a model is fine-tuned on and prompted with.

- The base's own, when it came from Hugging Face with one (``chat_template`` in the tokenizer_config.json beside
  its tokenizer.json, or a chat_template.jinja there): rendered as transformers' ``apply_chat_template`` renders
  it (``render_jinja_template``, a sandboxed Jinja environment), the prompt with the generation prompt, the
  response as what the whole conversation renders after it. A response ends with the tokenizer config's
  ``eos_token``, which generation stops at.
- Otherwise the default: plain text any tokenizer holds, whose one special token, <|endoftext|>, ends each
  response (it is added to a base tokenizer that lacks it). The messages before the reply are joined by newlines:

      Question: {prompt}
      Answer: {response}<|endoftext|>

A run keeps its base's template files beside its tokenizer.json (``TEMPLATE_FILES``: the tokenizer config,
chat_template.jinja — how transformers 5 saves a template —, additional_chat_templates/ and generation_config.json),
so every step of a chain, ``generate --chat`` and ``export-hf`` read the same template; ``export-hf`` writes the
default as Jinja (``DEFAULT_JINJA``), which transformers renders to the same text, and gives config.json and
generation_config.json the id of the template's end token as eos_token_id.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmspec.data.corpus import DataError
from llmspec.data.tokenizer import END_OF_TEXT
from llmspec.interop.hf_files import TEMPLATE_FILES, files_in, read_json, token_text

__all__ = ["DEFAULT_JINJA", "DEFAULT_TEMPLATE", "TEMPLATE_FILES", "ChatTemplate", "copy_template_files"]

# the default template, for transformers' apply_chat_template (export-hf); chat.py renders it without Jinja
DEFAULT_JINJA = (
    "{%- if add_generation_prompt -%}{%- set turns = messages -%}{%- else -%}{%- set turns = messages[:-1] -%}"
    "{%- endif -%}Question: {{ turns | map(attribute='content') | join('\\n') }}\nAnswer:"
    "{%- if not add_generation_prompt %} {{ messages[-1]['content'] }}" + END_OF_TEXT + "{%- endif -%}")


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template (the default when built without arguments)."""

    jinja: str | None = None  # None: the default template
    end: str = END_OF_TEXT  # the token that ends a response
    tokens: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token: what templates may refer to
    source: str = "the default chat template"  # where it was read (errors name it)

    @classmethod
    def beside(cls, tokenizer_file: Path) -> ChatTemplate:
        """The template kept beside a tokenizer.json (a Hugging Face base's, a run's), else the default."""
        folder = Path(tokenizer_file).parent
        config_file = folder / "tokenizer_config.json"
        config = read_json(config_file, DataError)
        jinja_file = folder / "chat_template.jinja"
        try:
            jinja = jinja_file.read_text(encoding="utf-8") if jinja_file.is_file() else config.get("chat_template")
        except (OSError, UnicodeDecodeError) as error:  # damaged, or not text
            raise DataError(f"{jinja_file}: not readable ({str(error).splitlines()[0]})") from None
        if isinstance(jinja, list):  # named templates: transformers' default is the one named "default"
            jinja = next((t.get("template") for t in jinja if isinstance(t, dict) and t.get("name") == "default"),
                         None)
        if not jinja:
            return cls()
        tokens = {name: token_text(config.get(name)) for name in ("bos_token", "eos_token")}
        if not tokens["eos_token"]:
            raise DataError(f"{config_file}: a chat template needs the eos_token that ends a response")
        where = jinja_file if jinja_file.is_file() else config_file
        return cls(str(jinja), tokens["eos_token"], {k: v for k, v in tokens.items() if v}, f"{where}")

    @property
    def is_default(self) -> bool:
        return self.jinja is None

    def prompt(self, record: dict[str, Any]) -> str:
        """The text before the reply: the conversation (``messages``, or ``prompt`` as one user message) and the
        template's generation prompt."""
        conversation = _conversation(record)
        if self.jinja is None:
            return "Question: " + "\n".join(m["content"] for m in conversation) + "\nAnswer:"
        return self._render(conversation, generation_prompt=True)

    def response(self, record: dict[str, Any], reply: str) -> str:
        """The reply's text after ``prompt(record)``, ending with the end token."""
        if self.jinja is None:
            return f" {reply}{END_OF_TEXT}"
        conversation = _conversation(record)
        prompt = self._render(conversation, generation_prompt=True)
        full = self._render([*conversation, {"role": "assistant", "content": reply}], generation_prompt=False)
        if not full.startswith(prompt):
            raise DataError(f"{self.source}: the chat template renders a conversation's prompt differently once a "
                            "reply follows it: the reply's tokens cannot be told apart")
        rest = full[len(prompt):]
        return rest if self.end in rest else rest + self.end

    def _render(self, conversation: list[dict[str, str]], generation_prompt: bool) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            rendered = render_jinja_template([conversation], chat_template=self.jinja,
                                             add_generation_prompt=generation_prompt, **self.tokens)
        except Exception as error:  # noqa: BLE001 - Jinja raises its own types (a template's raise_exception too)
            raise DataError(f"{self.source}: the chat template cannot render this conversation "
                            f"({type(error).__name__}: {error})") from None
        return rendered[0][0] if isinstance(rendered, tuple) else rendered[0]


DEFAULT_TEMPLATE = ChatTemplate()


def _conversation(record: dict[str, Any]) -> list[dict[str, str]]:
    return record.get("messages") or [{"role": "user", "content": record["prompt"]}]


def copy_template_files(source: Path, run_dir: Path) -> list[Path]:
    """Copy what travels with the tokenizer in ``source`` (``TEMPLATE_FILES``, additional_chat_templates/ file by
    file) into ``run_dir``; nothing when they are the same folder. Returns the paths written."""
    if Path(source).resolve() == Path(run_dir).resolve():
        return []
    written = []
    for name, path in files_in(Path(source), TEMPLATE_FILES).items():
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        written.append(Path(shutil.copyfile(path, run_dir / name)))
    return written
