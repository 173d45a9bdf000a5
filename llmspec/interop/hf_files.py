"""What travels with a tokenizer from a Hugging Face checkpoint, through runs, to an export: the chat template
(transformers 5 saves it as chat_template.jinja, and named ones in additional_chat_templates/; older ones inside
tokenizer_config.json), the special tokens, and generation_config.json — and the ids of the special tokens that
config.json and generation_config.json carry, so that transformers' ``generate`` stops where the run's template
ends a reply. No torch here: the chat template (``llmspec.data.chat``) reads these names too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from llmspec.errors import LLMSpecError

# The files beside a tokenizer.json that a fine-tune and its export keep with it (a folder is copied whole).
TEMPLATE_FILES = ("tokenizer_config.json", "chat_template.jinja", "additional_chat_templates", "generation_config.json")
# What import-hf copies from a checkpoint: the tokenizer, and what travels with it.
TOKENIZER_FILES = ("tokenizer.json", "special_tokens_map.json", *TEMPLATE_FILES)
# import-hf's note of the checkpoint it read: the PEFT adapter of a run started from the import names that base.
IMPORT_RECORD = "imported_from.json"
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def files_in(folder: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """name relative to ``folder`` → path, for each of ``names`` there (a folder's files one by one)."""
    found: dict[str, Path] = {}
    for name in names:
        path = folder / name
        if path.is_file():
            found[name] = path
        elif path.is_dir():
            found.update({str(p.relative_to(folder)): p for p in sorted(path.rglob("*")) if p.is_file()})
    return found


def read_json(path: Path, error: type[LLMSpecError] = LLMSpecError) -> dict[str, Any]:
    """A JSON object from a file, or {} when there is none; one line naming the file (as ``error``) when it is not
    one."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as problem:
        raise error(f"{path}: not readable JSON ({problem})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data


def token_text(token: Any) -> str | None:
    """A tokenizer config's special token: a string, or transformers' AddedToken as a dict with ``content``."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) and token else None


def generation_config_of(config: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """The checkpoint's generation_config.json, or, where it has none, the one transformers derives from its
    config.json (``GenerationConfig.from_model_config``: the special token ids), or None when there are none."""
    saved = read_json(folder / "generation_config.json")
    if saved:
        return saved
    ids = {key: config[key] for key in TOKEN_ID_KEYS if config.get(key) is not None}
    return {"_from_model_config": True, **ids} if ids else None


def import_record(hf_dir: Path) -> dict[str, str]:
    """Where import-hf read a checkpoint: its absolute path, and its Hub repository where the path is inside the
    Hugging Face cache (``models--org--name/snapshots/...``), which is how a PEFT adapter names its base."""
    path = hf_dir.resolve()
    record = {"path": str(path)}
    match = re.search(r"(?:^|/)models--([^/]+?)--([^/]+)/snapshots/[^/]+$", str(path))
    if match:
        record["repo_id"] = f"{match.group(1)}/{match.group(2)}"
    return record


def base_model_name(folder: Path) -> str | None:
    """The Hugging Face base an import folder was read from (its repository id, else its path), or None."""
    record = read_json(folder / IMPORT_RECORD) if folder.is_dir() else {}
    name = record.get("repo_id") or record.get("path")
    return name if isinstance(name, str) and name else None


def special_token_ids(tokenizer: Any, tokenizer_config: dict[str, Any], generation_config: dict[str, Any],
                      end: str | None, pad: bool = True) -> dict[str, int]:
    """bos/eos/pad token ids for config.json and generation_config.json, all ids of ``tokenizer``: eos is the
    token that ends a reply (``end``, the chat template's), else the tokenizer config's eos_token; bos and pad are
    the tokenizer config's, else the base's generation config's; pad falls back to eos (``pad=False``: no pad,
    for a sequence classifier, which reads the score before the first pad)."""

    def id_of(token: str | None) -> int | None:
        return tokenizer.token_to_id(token) if token else None

    def given(key: str) -> int | None:
        value = generation_config.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        return value if isinstance(value, int) and 0 <= value < tokenizer.get_vocab_size() else None

    def first(*candidates: int | None) -> int | None:
        return next((i for i in candidates if i is not None), None)

    configured = {name: id_of(token_text(tokenizer_config.get(name))) for name in ("bos_token", "eos_token",
                                                                                   "pad_token")}
    eos = first(id_of(end), configured["eos_token"], given("eos_token_id"))
    ids = {"bos_token_id": first(configured["bos_token"], given("bos_token_id")), "eos_token_id": eos,
           "pad_token_id": first(configured["pad_token"], given("pad_token_id"), eos) if pad else None}
    return {key: value for key, value in ids.items() if value is not None}


def exported_generation_config(base: dict[str, Any], ids: dict[str, int]) -> dict[str, Any]:
    """The base's generation config (its sampling settings kept) with the export's token ids: a list of end ids
    that holds the export's is kept (the base stops at each), anything else is replaced by the export's one."""
    config = {key: value for key, value in base.items() if key not in TOKEN_ID_KEYS}
    config.update(ids)
    listed = base.get("eos_token_id")
    if isinstance(listed, list) and ids.get("eos_token_id") in listed:
        config["eos_token_id"] = [ids["eos_token_id"], *(i for i in listed if i != ids["eos_token_id"])]
    return config
