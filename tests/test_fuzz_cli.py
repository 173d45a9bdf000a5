"""Random mutations of every shipped spec through validate, plan and run --dry-run, and of the files import-hf,
export-hf and generate read: each answer is exit 0, 2 or 3 (does not fit), every problem one `error:` line, never a
traceback, and no file changed that the command did not create."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import TINY_HF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from llmspec.cli.app import app
from llmspec.spec.loading import load_spec, named_specs

SPECS = {name: yaml.safe_load(path.read_text()) for name, path in sorted(named_specs().items())}

SELF = []
SELF.append(SELF)  # dumped as `&id001 [*id001]`: an alias inside its own anchor
DEEP = [[]]
for _ in range(60):
    DEEP = [DEEP]

VALUES = st.one_of(
    st.integers(-10, 10), st.integers(min_value=-2**70, max_value=2**70), st.floats(allow_nan=True),
    st.sampled_from([math.inf, -math.inf, 0.0, 1e30, -1e-9, True, False, None, "", "2T", "abc", "1e400", "cpu",
                     "builtin", "bf16", "fp16", "lion", "selective", "nvme", [], {}, [1, 2], {"x": 1}, "yes",
                     SELF, DEEP]),
    st.text(max_size=8),
)


def leaf_paths(data, prefix=()):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from leaf_paths(value, (*prefix, key))
    yield prefix


@st.composite
def mutated(draw):
    name = draw(st.sampled_from(sorted(SPECS)))
    data = yaml.safe_load(yaml.safe_dump(SPECS[name]))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from([p for p in leaf_paths(data) if p]))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "delete", "unknown"]))
        if action == "replace":
            parent[path[-1]] = copy.deepcopy(draw(VALUES))  # sampled constants must stay unmutated
        elif action == "delete":
            del parent[path[-1]]
        else:
            parent[f"{path[-1]}_typo"] = copy.deepcopy(draw(VALUES))
    return yaml.safe_dump(data, sort_keys=False)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(text=mutated(), command=st.sampled_from([["validate"], ["plan", "--json"], ["plan"], ["run", "--dry-run"]]))
def test_random_specs_get_one_line_answers(tmp_path_factory, text, command):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "s.yaml").write_text(text)
    before = snapshot(folder)
    args = [*command, str(folder / "s.yaml")]
    if command[0] == "run":
        args += ["--out", str(folder / "run")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 2, 3), (text, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), (text, repr(result.exception))
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    assert not (folder / "run").exists()  # a dry run writes nothing
    assert snapshot(folder) == before


# ---- files: a transformers checkpoint through import-hf, a run directory through export-hf and generate ----------
# Each example damages one file of a copy (a field of a JSON or YAML file replaced, removed or added, or the file cut
# short, overwritten or deleted) and runs the command on it: the answer is exit 0, 2 or 3, a refusal is `error:`
# lines (a `note:` may precede them), there is no traceback, and no file the command did not create has changed.

DAMAGE = ["replace", "replace", "delete_key", "add_key", "truncate", "garbage", "remove", "empty"]


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def damage(draw, path: Path) -> str:
    """One damage to ``path``, described (for the failure message)."""
    how = draw(st.sampled_from(DAMAGE))
    text = path.read_bytes()
    if how in ("replace", "delete_key", "add_key") and path.suffix in (".json", ".yaml"):
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and data:
            paths = [p for p in leaf_paths(data) if p]
            where = draw(st.sampled_from(paths))
            parent = data
            for key in where[:-1]:
                parent = parent[key]
            if how == "replace":
                parent[where[-1]] = copy.deepcopy(draw(VALUES))
            elif how == "delete_key":
                del parent[where[-1]]
            else:
                parent[f"{where[-1]}_typo"] = copy.deepcopy(draw(VALUES))
            dumped = json.dumps(data) if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
            path.write_text(dumped)
            return f"{path.name}: {how} {'.'.join(map(str, where))}"
        how = "garbage"
    if how == "truncate":
        path.write_bytes(text[: draw(st.integers(0, max(len(text) - 1, 0)))])
    elif how == "garbage":
        path.write_bytes(draw(st.binary(min_size=1, max_size=64)))
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    return f"{path.name}: {how}"


def check_answer(result, before: dict[Path, bytes], folder: Path, created: Path | None, what: str) -> None:
    assert result.exit_code in (0, 2, 3), (what, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), (what, repr(result.exception))
    assert "Traceback" not in result.output, (what, result.output)
    if result.exit_code == 2:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines and all(line.startswith(("error: ", "note: ")) for line in lines), (what, result.stderr)
        assert lines[-1].startswith("error: "), (what, result.stderr)
    after = snapshot(folder)
    changed = [path for path, data in before.items() if after.get(path, data) != data]
    assert not changed, (what, changed)  # what was there is as it was (a damaged file the command removed: kept)
    new = [path for path in after if path not in before and (created is None or created not in path.parents)]
    assert not new, (what, new)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One step of `tiny` from the tiny transformers checkpoint, imported: a run directory in seconds."""
    from llmspec.interop.hf import import_hf
    from llmspec.runner import run

    folder = tmp_path_factory.mktemp("trained")
    import_hf(TINY_HF, folder / "base")
    run(load_spec("tiny", [f"training.init_from={folder / 'base'}", "training.max_steps=1",
                           "training.eval_interval=1", "training.checkpoint_interval=1",
                           "training.micro_batch_size=2", "training.global_batch_size=2",
                           "training.schedule.warmup_steps=1"]), folder / "run", announce=lambda *a: None)
    return folder / "run"


FILE_SETTINGS = settings(max_examples=60, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FILE_SETTINGS
@given(data=st.data())
def test_import_hf_of_a_damaged_checkpoint_is_answered_in_a_line(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("hf")
    shutil.copytree(TINY_HF, folder / "hf")
    what = []
    for _ in range(data.draw(st.integers(1, 2))):
        files = sorted(p.name for p in (folder / "hf").iterdir())
        what.append(damage(data.draw, folder / "hf" / data.draw(st.sampled_from(files))))
    before = snapshot(folder)
    result = CliRunner().invoke(app, ["import-hf", str(folder / "hf"), "-o", str(folder / "out")])
    check_answer(result, before, folder, folder / "out", what)


RUN_FILES = ["spec.yaml", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "build/model.py",
             "checkpoints", "metrics.jsonl"]


@pytest.mark.integration  # a minute: 60 damaged copies of a run, each exported or sampled
@FILE_SETTINGS
@given(data=st.data(), command=st.sampled_from(["export-hf", "generate"]))
def test_export_and_generate_of_a_damaged_run_are_answered_in_a_line(trained_run, tmp_path_factory, data, command):
    folder = tmp_path_factory.mktemp("damaged")
    run_dir = folder / "run"
    shutil.copytree(trained_run, run_dir)
    name = data.draw(st.sampled_from([*RUN_FILES, "nothing"]))  # nothing: the run whole, the flags fuzzed
    target = run_dir / name
    if name == "nothing":
        pass
    elif name == "checkpoints":
        target = sorted(target.iterdir())[-1]
    elif name == "tokenizer_config.json":  # a base's (with a chat template and end token) beside the tokenizer
        target.write_text(json.dumps({"eos_token": "<|endoftext|>", "chat_template": "{{ messages[0]['content'] }}"}))
    elif name == "chat_template.jinja":
        target.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    what = [damage(data.draw, target)] if target.is_file() else [f"{name}: absent"]
    if command == "export-hf":
        args = ["export-hf", str(run_dir), "-o", str(folder / "out")]
    else:
        flags = {"--max-new-tokens": data.draw(st.integers(1, 400)),
                 "--temperature": data.draw(st.sampled_from([0.0, 0.8, 1e-9, 1e9])),
                 "--top-p": data.draw(st.sampled_from([0.5, 1.0])),
                 "--seed": data.draw(st.sampled_from([0, 2**63 - 1]))}
        if data.draw(st.integers(0, 3)) == 0:  # now and then one flag out of its range
            flag, value = data.draw(st.sampled_from([("--temperature", -1.0), ("--temperature", math.inf),
                                                     ("--temperature", math.nan), ("--top-p", 0.0), ("--top-p", 2.0),
                                                     ("--seed", 2**64), ("--seed", -1)]))
            flags[flag] = value
        prompt = data.draw(st.sampled_from(["Return the", "Return the", "", "x " * 300, "é\x00\u2028"]))
        args = ["generate", str(run_dir), prompt, *(str(item) for pair in flags.items() for item in pair)]
        args += ["--chat"] if data.draw(st.booleans()) else []
    before = snapshot(folder)
    result = CliRunner().invoke(app, args)
    check_answer(result, before, folder, folder / "out", [*what, *args[2:]])
