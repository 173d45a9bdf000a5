"""The built-in verifiable task set: post-training's embedded default (``data.corpus: builtin`` under
``post_training``). No download: records are drawn from a seeded generator, so every run sees the same ones.

Four short tasks whose answers can be checked exactly and that a ~1M-parameter model can learn in minutes on two
CPU cores — each needs only copying and comparing, which small transformers pick up fast (induction heads):

    Repeat: list node key           → list node key
    First word: list node key       → list
    Last word: list node key        → key
    Larger: 37 or 52                → 52

Words are ones the tiny run's tokenizer (trained on the standard library's docstrings) holds as single tokens.
Each record comes in the three forms post-training reads: instruction (``prompt``, ``response``), preference
(``prompt``, ``chosen``, ``rejected`` — rejected is a plausible wrong answer: the smaller number, or a word the
prompt does not hold in place of the last one) and prompt set (``prompt``, ``answer``, for a verifier). Train and
held-out records never share a prompt.
"""

from __future__ import annotations

import random

WORDS = ("list file name value string number object class module type data error key path time line text item "
         "word node user field index range order").split()
TRAIN_RECORDS, HELD_OUT_RECORDS = 4000, 256
SEED = 1234


def _record(rng: random.Random) -> dict[str, str]:
    kind = rng.randrange(4)
    if kind == 3:
        a, b = rng.sample(range(10, 100), 2)
        return {"prompt": f"Larger: {a} or {b}", "answer": str(max(a, b)), "wrong": str(min(a, b))}
    words = rng.sample(WORDS, rng.randint(2, 4))
    text = " ".join(words)
    stranger = rng.choice([w for w in WORDS if w not in words])  # a word the prompt does not hold
    if kind == 0:
        wrong = " ".join([*words[:-1], stranger])  # right until its last word
        return {"prompt": f"Repeat: {text}", "answer": text, "wrong": wrong}
    if kind == 1:
        return {"prompt": f"First word: {text}", "answer": words[0], "wrong": stranger}
    return {"prompt": f"Last word: {text}", "answer": words[-1], "wrong": stranger}


def task_records(split: str) -> list[dict[str, str]]:
    """The ``train`` or ``held_out`` records, each with every form's fields: prompt, response and answer (the
    correct answer), chosen (= answer) and rejected (a plausible wrong one)."""
    rng = random.Random(SEED)
    seen: set[str] = set()
    records = {"train": [], "held_out": []}
    for name, count in (("held_out", HELD_OUT_RECORDS), ("train", TRAIN_RECORDS)):
        while len(records[name]) < count:
            record = _record(rng)
            if record["prompt"] in seen:
                continue
            seen.add(record["prompt"])
            records[name].append({"prompt": record["prompt"], "response": record["answer"],
                                  "answer": record["answer"], "chosen": record["answer"],
                                  "rejected": record["wrong"]})
    return records[split]
