"""Instruction data for supervised fine-tuning: records read and checked, rendered with the chat template
(``llmspec.data.chat``: the base's own, or the default "Question: … Answer: …<|endoftext|>"), tokenised, and
packed into (input, target) windows with the prompt's targets masked. The token that ends each response teaches
the model to stop.

Records are JSON Lines (read here: errors name file:line), or Parquet, Arrow or a JSON array (read with Hugging
Face ``datasets``: errors name the row). Instruction data: ``prompt`` and ``response``, or ``messages`` (a list of
{role, content}: the last assistant message is the response, the messages before it the conversation the
template renders as the prompt). Preference data
(reward models, DPO): ``prompt``, ``chosen`` and ``rejected``. A bad record is reported with its file and line (or
row); a file with too few good records is refused. Pairs run as one batch of 2b sequences: the b chosen, then the
b rejected.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from llmspec.data.chat import DEFAULT_TEMPLATE, ChatTemplate
from llmspec.data.corpus import DataError, head_text, json_record, read_head, whole_lines

IGNORE = -100  # the target value cross-entropy leaves out (the compiled model's convention)
MIN_RECORDS = 8
# local table formats read with Hugging Face datasets (JSON Lines are read here: errors name the line)
TABLE_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}


@dataclass(frozen=True)
class Example:
    prompt: list[int]
    response: list[int]


def read_records(path: Path, pairs: bool = False, prompts: bool = False, answers: bool = False
                 ) -> list[dict[str, str]]:
    """Instruction records as {prompt, response}, (``pairs``) preference records as {prompt, chosen, rejected}, or
    (``prompts``) RL prompt records as {prompt[, answer][, messages]} (``answers``: every one needs its answer),
    from JSON Lines (errors name file:line), or Parquet, Arrow or a JSON array read with Hugging Face ``datasets``
    (errors name the row); one line naming the first bad record."""
    if not path.is_file():
        raise DataError(f"data.corpus: {path} does not exist")
    rows = _table_rows(path) if path.suffix in TABLE_SUFFIXES or _json_array(path) else _json_lines(path)
    check = _prompt if prompts else _preference if pairs else _instruction
    records = [check(record, where) for where, record in rows]
    if answers:
        _every_answered(records, path)
    if len(records) < MIN_RECORDS:
        raise DataError(f"data.corpus: {path} holds {len(records)} records; fine-tuning needs at least {MIN_RECORDS}")
    return records


def check_records(path: Path, head_bytes: int = 1 << 16, head_records: int = 100) -> None:
    """The cheap checks of a fine-tuning data file, reading at most its first ``head_bytes`` (``run --dry-run``
    makes them, and a run before it reads the whole file): it exists and is readable; a Parquet file starts as one;
    JSON Lines are UTF-8 and their first ``head_records`` records are JSON objects. What the method needs of each
    record is checked when the whole file is read."""
    if not path.is_file():
        raise DataError(f"data.corpus: {path} does not exist")
    head, whole = read_head(path, head_bytes, label="data.corpus: ")
    if path.suffix == ".parquet" and not head.startswith(b"PAR1"):
        raise DataError(f"data.corpus: {path}: not a Parquet file (no PAR1 header)")
    if path.suffix in TABLE_SUFFIXES or _json_array(path):
        return  # read whole by Hugging Face datasets, which names the bad row
    lines = whole_lines(head_text(path, head, whole), whole)
    for number, line in enumerate(lines[:head_records], start=1):
        if line.strip() and not isinstance(json_record(path, number, line), dict):
            raise DataError(f"{path}:{number}: expected an object (one record a line)")


def _json_lines(path: Path) -> Iterator[tuple[str, object]]:
    number = 0
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield f"{path}:{number}", json_record(path, number, line)
    except UnicodeDecodeError:
        raise DataError(f"{path}:{number + 1}: not UTF-8 text") from None


def _json_array(path: Path) -> bool:
    """A .json file holding one array of records (not JSON Lines)."""
    if path.suffix != ".json":
        return False
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read(4096).lstrip().startswith("[")


def _table_rows(path: Path) -> Iterator[tuple[str, object]]:
    """Rows of a local Parquet, Arrow or JSON-array file, through Hugging Face ``datasets`` (nothing is
    downloaded; its cache lies under HF_DATASETS_CACHE as usual)."""
    import datasets

    kind = TABLE_SUFFIXES.get(path.suffix, "json")
    try:
        if kind == "arrow":
            table = datasets.Dataset.from_file(str(path))
        else:
            table = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as error:  # noqa: BLE001 - a damaged or foreign file is the user's input error
        raise DataError(f"data.corpus: {path}: cannot read it as {kind} ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''})") from None
    for number, row in enumerate(table, start=1):
        yield f"{path} row {number}", row


def _instruction(record: object, where: str) -> dict[str, str]:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with prompt and response (or messages)")
    if "messages" in record:
        messages = _messages(record, where)
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise DataError(f"{where}: the last message must be the assistant's (the response to learn), after "
                            "at least one other")
        conversation = messages[:-1]
        record = {"prompt": "\n".join(m["content"] for m in conversation), "response": messages[-1]["content"],
                  "messages": conversation}
    for field in ("prompt", "response"):
        if not isinstance(record.get(field), str):
            raise DataError(f"{where}: missing {field} (a string)")
    if not record["response"].strip():
        raise DataError(f"{where}: empty response")
    kept = {"prompt": record["prompt"], "response": record["response"]}
    return {**kept, "messages": record["messages"]} if "messages" in record else kept


def _messages(record: dict, where: str) -> list[dict[str, str]]:
    """A record's ``messages``, checked: a non-empty list of {role, content} strings (other keys dropped)."""
    messages = record["messages"]
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise DataError(f"{where}: messages must be a list of {{role, content}} objects")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _prompt(record: object, where: str) -> dict[str, str]:
    """An RL prompt: ``prompt`` (or ``messages``, the conversation before the reply) and an optional ``answer`` for
    the verifier and task_accuracy."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with a prompt (and an answer for the verifier)")
    if "messages" in record:
        messages = _messages(record, where)
        record = {**record, "prompt": "\n".join(m["content"] for m in messages), "messages": messages}
    if not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
        raise DataError(f"{where}: missing prompt (a non-empty string)")
    if "answer" in record and not isinstance(record["answer"], str):
        raise DataError(f"{where}: answer must be a string")
    return {key: record[key] for key in ("prompt", "answer", "messages") if key in record}


def _every_answered(records: list[dict[str, str]], path: Path) -> None:
    for number, record in enumerate(records, start=1):
        if "answer" not in record:
            raise DataError(f"{path}: record {number} has no answer, which the verifier needs; give every prompt "
                            "an answer or set post_training.reward_model")


def _preference(record: object, where: str) -> dict[str, str]:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with prompt, chosen and rejected")
    for field in ("prompt", "chosen", "rejected"):
        if not isinstance(record.get(field), str):
            raise DataError(f"{where}: missing {field} (a string)")
        if field != "prompt" and not record[field].strip():
            raise DataError(f"{where}: empty {field}")
    return {"prompt": record["prompt"], "chosen": record["chosen"], "rejected": record["rejected"]}


def tokenise_pairs(records: list[dict[str, str]], tokenizer: Tokenizer, seq_len: int, source: str,
                   template: ChatTemplate = DEFAULT_TEMPLATE) -> list[tuple[Example, Example]]:
    """(chosen, rejected) examples of each preference record."""
    chosen, rejected = (tokenise([{"prompt": r["prompt"], "response": r[side]} for r in records], tokenizer,
                                 seq_len, source, template) for side in ("chosen", "rejected"))
    return list(zip(chosen, rejected, strict=True))


def tokenise(records: list[dict], tokenizer: Tokenizer, seq_len: int, source: str,
             template: ChatTemplate = DEFAULT_TEMPLATE) -> list[Example]:
    """Each record's prompt and response ids under the chat template; a prompt that leaves no room for a response
    in ``seq_len`` tokens is refused (naming the record), a long response is cut at ``seq_len``."""
    prompts = tokenizer.encode_batch([template.prompt(r) for r in records], add_special_tokens=False)
    responses = tokenizer.encode_batch([template.response(r, r["response"]) for r in records],
                                       add_special_tokens=False)
    examples = []
    for index, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        if len(prompt.ids) >= seq_len:
            raise DataError(f"{source}: record {index + 1}: its prompt is {len(prompt.ids)} tokens, training.seq_len "
                            f"{seq_len} leaves no room for the response")
        examples.append(Example(prompt.ids, response.ids[: seq_len + 1 - len(prompt.ids)]))
    return examples


def save_examples(examples: list[Example] | list[tuple[Example, Example]], path: Path) -> None:
    """Instruction examples, or (chosen, rejected) pairs, as JSON."""
    def plain(item):
        return [plain(e) for e in item] if isinstance(item, tuple) else [item.prompt, item.response]

    path.write_text(json.dumps([plain(item) for item in examples]))


def load_examples(path: Path) -> list[Example] | list[tuple[Example, Example]]:
    def typed(item):
        return tuple(typed(e) for e in item) if isinstance(item[0][0], list) else Example(*item)

    return [typed(item) for item in json.loads(path.read_text())]


class ExampleBatches:
    """Windows of ``seq_len + 1`` tokens packed with whole examples (TRL's packing): inputs are the first
    ``seq_len``, targets the last, with every target inside a prompt set to -100 (``loss_on: response``). The
    examples of a window are a pure function of (seed, split, step, micro-batch, rank), as pretraining's are."""

    def __init__(self, examples: list[Example], seq_len: int, micro_batch_size: int, seed: int, split: str,
                 loss_on: str = "response", pad: int = 0):
        self.examples, self.seq_len, self.batch, self.seed = examples, seq_len, micro_batch_size, seed
        self.split_code, self.loss_on, self.pad = 0 if split == "train" else 1, loss_on, pad

    def get(self, step: int, micro: int, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.split_code, step, micro, rank])
        rows = [self._window(rng) for _ in range(self.batch)]
        tokens = torch.tensor([r[0] for r in rows], dtype=torch.int64)
        learn = torch.tensor([r[1] for r in rows], dtype=torch.bool)
        targets = tokens[:, 1:].masked_fill(~learn[:, 1:], IGNORE)
        return tokens[:, :-1], targets

    def _window(self, rng: np.random.Generator) -> tuple[list[int], list[bool]]:
        tokens: list[int] = []
        learn: list[bool] = []
        length = self.seq_len + 1
        while len(tokens) < length:
            example = self.examples[int(rng.integers(len(self.examples)))]
            if tokens and len(tokens) + len(example.prompt) + len(example.response) > length:
                break  # no partial example after the first: pad the rest
            tokens += example.prompt + example.response
            learn += [self.loss_on == "all"] * len(example.prompt) + [True] * len(example.response)
        tokens, learn = tokens[:length], learn[:length]
        pad = length - len(tokens)
        return tokens + [self.pad] * pad, learn + [False] * pad


class PairBatches:
    """Preference pairs, one per row (no packing: a sequence's log-probability or score is its own): ``get``
    returns 2b rows, the b chosen then the b rejected, each padded to ``seq_len`` with its prompt's targets
    masked. Deterministic in (seed, split, step, micro-batch, rank)."""

    def __init__(self, pairs: list[tuple[Example, Example]], seq_len: int, micro_batch_size: int, seed: int,
                 split: str, pad: int = 0):
        self.pairs, self.seq_len, self.batch, self.seed = pairs, seq_len, micro_batch_size, seed
        self.split_code, self.pad = 0 if split == "train" else 1, pad
        # DPO's precomputed reference: each pair's (chosen, rejected) log-probabilities, (pairs, 2); the batches
        # then carry them as a third tensor beside the rows
        self.reference: torch.Tensor | None = None

    def get(self, step: int, micro: int, rank: int = 0) -> tuple[torch.Tensor, ...]:
        rng = np.random.default_rng([self.seed, self.split_code, step, micro, rank])
        picked = [int(i) for i in rng.integers(len(self.pairs), size=self.batch)]
        rows = self.rows([self.pairs[i][0] for i in picked] + [self.pairs[i][1] for i in picked])
        return rows if self.reference is None else (*rows, self.reference_rows(picked))

    def reference_rows(self, picked: list[int] | slice) -> torch.Tensor:
        """The precomputed reference log-probabilities of the pairs ``picked``, laid out as ``rows`` lays out
        their sequences: the chosen, then the rejected."""
        return self.reference[picked].T.flatten()

    def rows(self, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        length = self.seq_len + 1
        tokens, learn = [], []
        for example in examples:
            ids = (example.prompt + example.response)[:length]
            keep = ([False] * len(example.prompt) + [True] * len(example.response))[:length]
            tokens.append(ids + [self.pad] * (length - len(ids)))
            learn.append(keep + [False] * (length - len(ids)))
        tokens_t, learn_t = torch.tensor(tokens, dtype=torch.int64), torch.tensor(learn, dtype=torch.bool)
        return tokens_t[:, :-1], tokens_t[:, 1:].masked_fill(~learn_t[:, 1:], IGNORE)
