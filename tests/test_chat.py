"""The chat template (llmspec/data/chat.py) against transformers' apply_chat_template, the default template's Jinja
twin, the refusals, and a fine-tune from a base with a template of its own: trained on it, served by
`generate --chat`, exported with it."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import TINY_HF
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from llmspec.data.chat import DEFAULT_JINJA, TEMPLATE_FILES, ChatTemplate, copy_template_files
from llmspec.data.corpus import DataError
from llmspec.data.tokenizer import END_OF_TEXT
from llmspec.runner import run
from llmspec.spec.loading import load_spec
from llmspec.train.export_hf import export_run
from llmspec.train.generate import generate
from llmspec.train.job import with_end_token

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Larger: 3 or 9"}]


def _oracle(template: str, eos: str) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_file=str(TINY_HF / "tokenizer.json"), chat_template=template,
                                   eos_token=eos)


def _config(folder, **config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder / "tokenizer.json"


def test_a_bases_template_renders_as_transformers_apply_chat_template(tmp_path):
    template = ChatTemplate.beside(_config(tmp_path, chat_template=CHATML, eos_token="<|im_end|>"))
    oracle = _oracle(CHATML, "<|im_end|>")
    record = {"messages": CONVERSATION, "prompt": "ignored when messages are there"}
    prompt = template.prompt(record)
    assert prompt == oracle.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    full = oracle.apply_chat_template([*CONVERSATION, {"role": "assistant", "content": "9"}], tokenize=False)
    assert prompt + template.response(record, "9") == full and template.end == "<|im_end|>"
    # a plain prompt is one user message
    assert template.prompt({"prompt": "Hi"}) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_the_default_template_is_plain_text_and_its_jinja_twin_renders_the_same():
    template = ChatTemplate.beside(TINY_HF / "tokenizer.json")  # its config has no chat template
    assert template.is_default and template.end == END_OF_TEXT
    record = {"messages": CONVERSATION}
    assert template.prompt(record) == "Question: Be brief.\nLarger: 3 or 9\nAnswer:"
    assert template.response(record, "9") == f" 9{END_OF_TEXT}"
    oracle = _oracle(DEFAULT_JINJA, END_OF_TEXT)  # what export-hf hands transformers
    assert oracle.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True) == \
        template.prompt(record)
    assert oracle.apply_chat_template([*CONVERSATION, {"role": "assistant", "content": "9"}], tokenize=False) == \
        template.prompt(record) + template.response(record, "9")


def test_a_jinja_file_wins_and_bad_templates_are_one_line_errors(tmp_path):
    tokenizer = _config(tmp_path, chat_template="ignored", eos_token={"content": "<|im_end|>"})
    (tmp_path / "chat_template.jinja").write_text(CHATML)
    assert ChatTemplate.beside(tokenizer).jinja == CHATML and ChatTemplate.beside(tokenizer).end == "<|im_end|>"
    with pytest.raises(DataError, match="needs the eos_token"):
        ChatTemplate.beside(_config(tmp_path / "no-eos", chat_template=CHATML))
    raising = ChatTemplate.beside(_config(tmp_path / "raises", eos_token="</s>",
                                          chat_template="{{ raise_exception('system messages are not supported') }}"))
    with pytest.raises(DataError, match="cannot render this conversation.*system messages are not supported"):
        raising.prompt({"messages": CONVERSATION})
    (tmp_path / "bad" / "tokenizer_config.json").parent.mkdir()
    (tmp_path / "bad" / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        ChatTemplate.beside(tmp_path / "bad" / "tokenizer.json")
    (tmp_path / "bad" / "tokenizer_config.json").write_text('["a list"]')
    with pytest.raises(DataError, match="tokenizer_config.json: expected a JSON object"):
        ChatTemplate.beside(tmp_path / "bad" / "tokenizer.json")


def test_the_default_templates_end_token_is_added_to_a_base_that_lacks_it(tmp_path):
    from tokenizers import models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    tokenizer.train_from_iterator(["a plain corpus with no special tokens"] * 4, trainers.BpeTrainer(vocab_size=300))
    assert tokenizer.token_to_id(END_OF_TEXT) is None
    size = tokenizer.get_vocab_size()
    with pytest.raises(DataError, match="leaves no room to add it"):
        with_end_token(tokenizer, ChatTemplate(), tmp_path / "tokenizer.json", model_vocab=size)
    assert with_end_token(tokenizer, ChatTemplate(), tmp_path / "tokenizer.json", model_vocab=size + 1)
    assert tokenizer.token_to_id(END_OF_TEXT) == size  # a new special token, the one new id
    assert not with_end_token(tokenizer, ChatTemplate(), tmp_path / "tokenizer.json", model_vocab=size + 1)
    with pytest.raises(DataError, match="has no <\\|im_end\\|> token"):
        with_end_token(tokenizer, ChatTemplate(CHATML, "<|im_end|>"), tmp_path / "tokenizer.json", size + 1)


def test_a_fine_tune_trains_on_its_bases_template_and_serves_and_exports_it(base, tmp_path):
    chatty = tmp_path / "base"
    shutil.copytree(base, chatty)
    own = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
          "{% if add_generation_prompt %}### assistant:{% endif %}"
    _config(chatty, chat_template=own, eos_token=END_OF_TEXT)  # its end token is in the tokenizer
    run_dir = tmp_path / "sft"
    run(load_spec("tiny-sft", [f"training.init_from={chatty}", "training.max_steps=2", "training.eval_interval=2",
                               "training.checkpoint_interval=2"]), run_dir, announce=lambda *a: None)
    template = ChatTemplate.beside(run_dir / "tokenizer.json")
    assert template.jinja == own  # the template travels with the tokenizer
    tokenizer = Tokenizer.from_file(str(run_dir / "tokenizer.json"))
    prompt_ids, response_ids = json.loads((run_dir / "data" / "train.json").read_text())[0]
    assert tokenizer.decode(prompt_ids).startswith("### user: ")
    assert tokenizer.decode(prompt_ids).endswith("### assistant:")
    assert response_ids[-1] == tokenizer.token_to_id(END_OF_TEXT)
    reply = generate(run_dir, "Larger: 3 or 9", max_new_tokens=6, temperature=0, chat=True)
    assert "###" not in reply.split("\n")[0] and END_OF_TEXT not in reply  # the reply, not the prompt again
    export_run(run_dir, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["chat_template"] == own


def test_what_travels_with_a_tokenizer_reaches_the_run_whole(tmp_path):
    """transformers 5 saves a template as chat_template.jinja and named ones in additional_chat_templates/; with the
    tokenizer config and generation_config.json (the stop tokens) they are copied into a run, the folder file by
    file; nothing else is."""
    base = tmp_path / "base"
    (base / "additional_chat_templates").mkdir(parents=True)
    files = {"tokenizer_config.json": '{"eos_token": "<|im_end|>"}', "chat_template.jinja": CHATML,
             "additional_chat_templates/tool_use.jinja": CHATML + "{# tools #}",
             "generation_config.json": '{"eos_token_id": 2}'}
    for name, text in {**files, "config.json": "{}", "model.safetensors": "weights"}.items():
        (base / name).write_text(text)
    assert {"chat_template.jinja", "additional_chat_templates", "generation_config.json"} <= set(TEMPLATE_FILES)
    written = copy_template_files(base, tmp_path / "run")
    assert {str(p.relative_to(tmp_path / "run")): p.read_text() for p in written} == files
    assert copy_template_files(tmp_path / "run", tmp_path / "run") == []  # its own folder: nothing to copy
    assert ChatTemplate.beside(tmp_path / "run" / "tokenizer.json").end == "<|im_end|>"
