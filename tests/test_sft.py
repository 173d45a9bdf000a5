"""Supervised fine-tuning: the built-in task set, instruction records and their checks, packed batches with the
prompt masked, a base's weights under LoRA, the loss against its formula, and `llmspec run` on sft end to end.

The base is tests/fixtures/tiny-hf: the `tiny` run (600 steps on the built-in corpus) exported with `export-hf`,
imported here as a user would (`import-hf`), so the end-to-end tests need no 4-minute pretraining run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import LORA, TINY_HF, killed_and_resumed
from tokenizers import Tokenizer

from llmspec.compile.loading import model_module
from llmspec.data.corpus import DataError
from llmspec.data.instructions import IGNORE, Example, ExampleBatches, read_records, tokenise
from llmspec.data.tasks import task_records
from llmspec.errors import LLMSpecError
from llmspec.runner import run
from llmspec.spec.loading import load_spec
from llmspec.train.init_from import load_initial_weights
from llmspec.train.metrics import read_metrics


def _sft(base: Path, *sets: str):
    return load_spec("tiny-sft", [f"training.init_from={base}", *sets])


# ---- the built-in task set ------------------------------------------------------------------------------------

def test_task_set_is_seeded_checkable_and_held_out_prompts_are_unseen():
    train, held_out = task_records("train"), task_records("held_out")
    assert train == task_records("train") and len(train) > 10 * len(held_out)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
    for record in train[:200]:
        kind, _, rest = record["prompt"].partition(": ")
        words = rest.split()
        if kind == "Larger":
            expected = str(max(int(words[0]), int(words[-1])))
        else:
            expected = {"Repeat": rest, "First word": words[0], "Last word": words[-1]}[kind]
        assert record["answer"] == record["response"] == record["chosen"] == expected
        assert record["rejected"] != expected


# ---- records, template, batches -------------------------------------------------------------------------------

@pytest.mark.parametrize("line, needle", [
    ("not json", "not valid JSON"),
    ('{"prompt": "a"}', "missing response"),
    ('{"prompt": "a", "response": "  "}', "empty response"),
    ('{"messages": [{"role": "user", "content": "a"}]}', "the last message must be the assistant's"),
    ('[1, 2]', "expected an object"),
])
def test_a_bad_record_is_named_by_file_and_line(tmp_path, line, needle):
    path = tmp_path / "sft.jsonl"
    good = json.dumps({"prompt": "p", "response": "r"})
    path.write_text("\n".join([good] * 9 + [line]) + "\n")
    with pytest.raises(DataError, match=f"{path}:10: {needle}"):
        read_records(path)


def test_messages_become_prompt_and_response_and_too_few_records_are_refused(tmp_path):
    path = tmp_path / "chat.jsonl"
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello"}]}
    path.write_text("\n".join(json.dumps(chat) for _ in range(8)))
    assert read_records(path)[0] == {"prompt": "Be brief.\nHi", "response": "Hello",
                                     "messages": chat["messages"][:2]}  # the conversation the template renders
    path.write_text(json.dumps(chat))
    with pytest.raises(DataError, match="holds 1 records; fine-tuning needs at least 8"):
        read_records(path)


@pytest.mark.parametrize("kind", ["parquet", "arrow", "json"])
def test_parquet_arrow_and_json_arrays_are_read_with_datasets_and_bad_rows_named(tmp_path, kind):
    import datasets

    rows = [{"prompt": f"p{i}", "chosen": "yes", "rejected": "no"} for i in range(9)]
    table = datasets.Dataset.from_list(rows)
    if kind == "parquet":
        path = tmp_path / "pairs.parquet"
        table.to_parquet(str(path))
    elif kind == "arrow":
        table.save_to_disk(str(tmp_path / "saved"))
        path = next((tmp_path / "saved").glob("*.arrow"))
    else:
        path = tmp_path / "pairs.json"
        path.write_text(json.dumps(rows))
    assert read_records(path, pairs=True) == rows
    bad = tmp_path / "bad.parquet"
    datasets.Dataset.from_list([*rows, {"prompt": "p", "chosen": None, "rejected": "no"}]).to_parquet(str(bad))
    with pytest.raises(DataError, match=f"{bad} row 10: missing chosen"):
        read_records(bad, pairs=True)
    (tmp_path / "junk.parquet").write_text("not a table")
    with pytest.raises(DataError, match="cannot read it as parquet"):
        read_records(tmp_path / "junk.parquet", pairs=True)


def _tokenizer(run_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(run_dir / "tokenizer.json"))


def test_packed_batches_mask_exactly_the_prompt_and_pad(base):
    tokenizer = _tokenizer(base)
    examples = tokenise(task_records("train")[:50], tokenizer, 64, "test")
    x, y = ExampleBatches(examples, 64, 4, seed=0, split="train").get(step=3, micro=1)
    assert x.shape == y.shape == (4, 64)
    assert torch.equal(x, ExampleBatches(examples, 64, 4, seed=0, split="train").get(step=3, micro=1)[0])
    by_tokens = {tuple(e.prompt + e.response): e for e in examples}
    row, targets = [int(t) for t in x[0]], [int(t) for t in y[0]]
    window = row + [None]
    position = 0
    while position < 64:  # walk the packed examples: prompt targets masked, response targets kept
        example = next((e for key, e in by_tokens.items() if list(key) == window[position:position + len(key)]),
                       None)
        if example is None:
            assert all(t == IGNORE for t in targets[position:])  # the padded tail learns nothing
            break
        for offset in range(len(example.prompt) + len(example.response)):
            at = position + offset - 1  # the target at `at` predicts this token
            if at >= 0:
                assert (targets[at] == IGNORE) == (offset < len(example.prompt))
        position += len(example.prompt) + len(example.response)


def test_a_prompt_longer_than_the_sequence_is_refused(base):
    records = [{"prompt": "word " * 200, "response": "x"}]
    with pytest.raises(DataError, match="record 1: its prompt is .* tokens, training.seq_len 64"):
        tokenise(records, _tokenizer(base), 64, "data.corpus")


def test_sft_loss_is_the_mean_nll_of_the_response_tokens():
    torch.manual_seed(0)
    spec = load_spec("tiny", ["post_training.method=sft", "model.n_layers=1"])
    model = model_module(spec).Model()
    example = Example(prompt=[5, 6, 7], response=[8, 9, 0])
    x, y = ExampleBatches([example], 8, 1, seed=0, split="train").get(0, 0)
    logits, loss = model(x, y)
    logp = F.log_softmax(logits[0].double(), dim=-1)
    # the window is [5 6 7 8 9 0 | 5 6 7 ...]: the targets 8, 9, 0 of the first example (and of no prompt) count
    by_hand = -(logp[2, 8] + logp[3, 9] + logp[4, 0]) / 3
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


# ---- a base under LoRA ----------------------------------------------------------------------------------------

def test_a_base_loads_under_lora_and_the_adapted_model_starts_as_the_base(base):
    plain, adapted = load_spec("tiny"), _sft(base, *LORA)
    base_model, lora_model = model_module(plain).Model(), model_module(adapted).Model()
    load_initial_weights(base_model, base / "model.safetensors")
    load_initial_weights(lora_model, base / "model.safetensors")
    idx = torch.randint(0, 2048, (2, 16))
    assert torch.equal(base_model.eval()(idx)[0], lora_model.eval()(idx)[0])  # B = 0: the update starts at zero
    trained = {n for n, p in lora_model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)


# ---- end to end -----------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_sft_raises_held_out_task_accuracy_and_lora_gets_most_of_the_gain(base, tmp_path):
    gains = {}
    for name in ("tiny-sft", "tiny-lora"):  # each at its own learning rate (LoRA's is 3x, as is usual)
        spec = load_spec(name, [f"training.init_from={base}", "training.max_steps=200", "training.eval_interval=50"])
        summary = run(spec, tmp_path / name, announce=lambda *a: None)
        evals = [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if "task_accuracy" in r]
        assert [r["step"] for r in evals] == [0, 50, 100, 150, 200]  # the first eval line precedes any update
        assert summary.task_accuracy == (evals[0]["task_accuracy"], evals[-1]["task_accuracy"])
        gains[name] = evals[-1]["task_accuracy"] - evals[0]["task_accuracy"]
        assert (tmp_path / name / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
        assert "Answer:" in (tmp_path / name / "samples.txt").read_text()
    assert gains["tiny-sft"] >= 0.5  # a wide margin over the base, which answers none
    assert gains["tiny-lora"] >= 0.8 * gains["tiny-sft"]


def test_a_missing_base_names_the_command_that_trains_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/tiny here
    with pytest.raises(LLMSpecError, match=r"training.init_from runs/tiny: .*`llmspec run tiny`"):
        run(load_spec("tiny-sft"), tmp_path / "out", announce=lambda *a: None)
    assert not (tmp_path / "out").exists()


def test_layouts_planned_but_not_run_are_refused_up_front(tmp_path):
    with pytest.raises(LLMSpecError, match="parallelism.byte_regime pure16: planned, not run"):
        run(load_spec("tiny-dpo", ["parallelism.byte_regime=pure16", "training.precision=bf16"]), tmp_path / "out",
            announce=lambda *a: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_a_killed_sft_run_resumes_bit_for_bit(base, tmp_path):
    spec = _sft(base, *LORA, "post_training.adapter.dropout=0.1", "training.max_steps=40",
                "training.checkpoint_interval=10", "training.log_interval=1", "training.eval_interval=20")
    records = killed_and_resumed(spec, tmp_path)  # losses, task accuracy: every float
    assert [r["step"] for r in records if "task_accuracy" in r] == [0, 20, 40]


@pytest.mark.integration
def test_a_lora_run_exports_merged_and_as_a_peft_adapter_with_equal_logits(base, tmp_path):
    import transformers
    from peft import PeftModel

    from llmspec.train.export_hf import export_run

    spec = load_spec("tiny-lora", [f"training.init_from={base}", "training.max_steps=4", "training.eval_interval=4",
                                   "training.micro_batch_size=4", "training.global_batch_size=4"])
    run(spec, tmp_path / "lora", announce=lambda *a: None)
    export_run(tmp_path / "lora", tmp_path / "hf")
    idx = torch.randint(0, 2048, (2, 24))
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    plain = transformers.AutoModelForCausalLM.from_pretrained(TINY_HF).eval()
    adapted = PeftModel.from_pretrained(plain, tmp_path / "hf" / "adapter").eval()
    with torch.no_grad():
        ours, theirs = merged(idx).logits, adapted(idx).logits
        assert torch.allclose(ours, theirs, atol=1e-5)
        with adapted.disable_adapter():
            assert not torch.allclose(adapted(idx).logits, theirs, atol=1e-4)  # the adapter did learn something
    config = json.loads((tmp_path / "hf" / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["target_modules"][0] == "q_proj"


@pytest.mark.integration
@pytest.mark.parametrize("storage", [["post_training.base_precision=nf4", "post_training.double_quant=true"],
                                     ["post_training.base_precision=int8"]], ids=["qlora-nf4", "int8"])
def test_a_quantised_base_lora_run_exports_dequantised_and_merged_with_equal_logits(base, storage, tmp_path):
    import transformers

    from llmspec.train.export_hf import export_run
    from llmspec.train.generate import load_run

    spec = load_spec("tiny-lora", [f"training.init_from={base}", "training.max_steps=2", "training.eval_interval=2",
                                   "training.micro_batch_size=4", "training.global_batch_size=4", *storage])
    run(spec, tmp_path / "qlora", announce=lambda *a: None)
    export_run(tmp_path / "qlora", tmp_path / "hf")
    idx = torch.randint(0, 2048, (2, 24))
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    _, ours, _ = load_run(tmp_path / "qlora")  # the run's model: its base dequantised in each product
    with torch.no_grad():
        torch.testing.assert_close(merged(idx).logits, ours(idx)[0], atol=1e-4, rtol=1e-4)
        plain = transformers.AutoModelForCausalLM.from_pretrained(TINY_HF).eval()
        assert not torch.allclose(plain(idx).logits, merged(idx).logits, atol=1e-3)  # quantised, and adapted


@pytest.mark.integration
@pytest.mark.parametrize("storage", [[], ["post_training.base_precision=nf4"]], ids=["lora", "qlora-nf4"])
def test_a_lora_reward_model_exports_merged_as_a_sequence_classifier_with_its_scores(base, storage, tmp_path):
    import transformers

    from llmspec.train.export_hf import export_run
    from llmspec.train.generate import load_run

    spec = load_spec("tiny-reward", [f"training.init_from={base}", "training.max_steps=2", "training.eval_interval=2",
                                     "training.micro_batch_size=4", "training.global_batch_size=4", *LORA, *storage])
    run(spec, tmp_path / "reward", announce=lambda *a: None)
    export_run(tmp_path / "reward", tmp_path / "hf")
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    _, ours, _ = load_run(tmp_path / "reward")  # the run's model: adapters beside a (dequantised) base
    idx = torch.randint(0, 2048, (1, 24))
    with torch.no_grad():
        assert theirs(idx).logits[0, 0].item() == pytest.approx(ours(idx)[0][0, -1].item(), abs=1e-4)
    assert not any("lora" in name for name in theirs.state_dict())
