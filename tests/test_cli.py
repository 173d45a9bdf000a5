"""The command line: JSON contract, exit codes, one-line errors, and a plan path that never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmspec.cli.app import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_plan_json_has_the_design_keys():
    result = run("plan", "llama2-7b", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"total", "embedding", "non_embedding", "active"} <= set(data["params"])
    assert {"per_token_forward", "per_token_train", "per_step", "total"} <= set(data["flops"])
    assert {"weights", "gradients", "optimizer", "model_states", "activations", "buffers", "peak"} <= set(
        data["memory"])
    assert {"step_seconds", "tokens_per_second", "total_seconds", "gpu_hours", "cost"} <= set(data["time"])
    assert isinstance(data["host_memory"], int) and data["fits"] is True
    assert data["params"]["total"] == 6_738_415_616
    chosen = [a for a in data["alternatives"] if a["chosen"]]
    assert len(chosen) == 1 and chosen[0]["memory"]["peak"] == data["memory"]["peak"]


def test_alternative_sets_reproduce_its_plan():
    data = json.loads(run("plan", "llama2-7b", "--json").stdout)
    alt = next(a for a in data["alternatives"] if a["strategy"].startswith("ZeRO-2 · ckpt full"))
    again = json.loads(run("plan", "llama2-7b", "--json", *[x for s in alt["sets"] for x in ("--set", s)]).stdout)
    assert again["memory"]["peak"] == alt["memory"]["peak"]


def test_plan_table_shows_units_and_fit():
    result = run("plan", "gpt2-124m")
    assert result.exit_code == 0
    for text in ("124,439,808", "GiB", "MFLOP", "EFLOP", "days", "$", "✓", "Strategies"):
        assert text in result.stdout


def test_set_override_changes_plan():
    base = json.loads(run("plan", "tiny", "--json").stdout)
    bigger = json.loads(run("plan", "tiny", "--json", "--set", "model.n_layers=8").stdout)
    assert bigger["params"]["total"] > base["params"]["total"]


def test_bad_spec_is_one_line_per_problem_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {vocab_size: 10, d_model: 64, n_layers: 2, n_head: 4, max_seq_len: 8}\n"
                   "training: {seq_len: 8, global_batch_size: 8, max_steps: 1}\n")
    result = run("plan", str(bad))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert any("bad.yaml:2: model.n_head: unknown field 'n_head'; did you mean 'n_heads'?" in line for line in lines)
    assert all(line.startswith("error: ") for line in lines)
    assert "Traceback" not in result.output


def test_missing_file_and_unknown_name():
    result = run("validate", "no-such-spec")
    assert result.exit_code == 2 and "no spec file or named spec" in result.stderr


def test_validate_ok():
    result = run("validate", "mixtral-8x7b")
    assert result.exit_code == 0 and result.stdout.startswith("ok: mixtral-8x7b")


def test_explain_one_quantity_shows_formula_and_value():
    result = run("explain", "llama2-7b", "params_total")
    assert result.exit_code == 0
    assert "params_total" in result.stdout and "6,738,415,616" in result.stdout and "expanded" in result.stdout


def test_explain_all_json_values_match_plan():
    items = json.loads(run("explain", "tiny", "--json").stdout)
    plan = json.loads(run("plan", "tiny", "--json").stdout)
    by_name = {item["name"]: item["value"] for item in items}
    assert by_name["params_total"] == plan["params"]["total"]
    assert by_name["memory_model_states"] == plan["memory"]["model_states"]


def test_explain_points_inference_formulas_to_their_command():
    result = run("explain", "tiny", "kv_cache_per_token")
    assert result.exit_code == 2 and "llmspec plan SPEC --inference" in result.stderr


def test_explain_unknown_quantity():
    result = run("explain", "tiny", "memroy_peak")
    assert result.exit_code == 2 and "did you mean" in result.stderr


def test_schema_and_specs():
    assert json.loads(run("schema").stdout)["title"] == "Spec"
    rows = json.loads(run("specs", "--json").stdout)
    assert {"llama3-405b", "tiny"} <= {r["name"] for r in rows}


def test_plot_writes_png(tmp_path):
    out = tmp_path / "memory.png"
    result = run("plan", "llama2-7b", "--plot", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_bad_path():
    result = run("plan", "tiny", "--plot", "/no/such/dir/x.png")
    assert result.exit_code == 2 and "does not exist" in result.stderr


@pytest.mark.parametrize("code", [
    "import llmspec",
    "from llmspec.cli.app import app; from typer.testing import CliRunner; "
    "r = CliRunner().invoke(app, ['plan', 'llama3-405b', '--json']); assert r.exit_code == 0, r.output",
])
def test_plan_path_never_imports_torch_deepspeed_or_sympy(code):
    check = (code + "; import sys; bad = [m for m in ('torch', 'deepspeed', 'sympy', 'numpy', 'matplotlib') "
             "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", check], check=True)


# ---- bad input: one line, exit 2, nothing written; a spec that does not fit: exit 3 --------------------------


def _one_line_exit_2(result, *needles):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("args, value", [  # the line names the value that is wrong
    (["size", "llama2-7b", "--write", "nodir/best.yaml"], "nodir/best.yaml"),
    (["size", "--compute", "1e21", "--write", "nodir/c.yaml"], "nodir/c.yaml"),
    (["size", "tiny", "--write", "/proc/x.yaml"], "/proc/x.yaml"),
    (["plan", "tiny", "--plot", "/proc/x.png"], "/proc/x.png"),
    (["size", "tiny", "--budget", "-5"], "--budget -5"),
    (["run", "tiny", "--out", "/proc/llmspec-run", "--dry-run"], "/proc/llmspec-run"),
    (["build", "tiny", "-o", "/proc/llmspec-build"], "/proc/llmspec-build"),
])
def test_output_paths_and_flags_are_checked_before_the_work(args, value):
    _one_line_exit_2(CliRunner().invoke(app, args), value)


@pytest.mark.parametrize("text, field", [
    ("lr: .inf", "training.optimizer.lr"),
    ("n_layers: true", "model.n_layers"),
    ("tokens: 1e30", "training.tokens"),
    ("memory_reserve_gib: 100", "cluster.memory_reserve_gib"),
    ("duplicate", "model.d_model"),
    ("warmup_steps: 5000", "training.schedule.warmup_steps"),
])
def test_validation_holes_are_closed(tmp_path, text, field):
    spec = (Path(__file__).parents[1] / "specs" / "tiny.yaml").read_text()
    edits = {
        "lr: .inf": ("lr: 3.0e-3", "lr: .inf"), "n_layers: true": ("n_layers: 4", "n_layers: true"),
        "tokens: 1e30": ("  max_steps: 600", "  tokens: 1e30"),
        "memory_reserve_gib: 100": ("  gpu: cpu", "  gpu: cpu\n  memory_reserve_gib: 100"),
        "duplicate": ("  d_model: 128", "  d_model: 128\n  d_model: 256"),
        "warmup_steps: 5000": ("warmup_steps: 50", "warmup_steps: 5000"),
    }
    old, new = edits[text]
    assert old in spec
    (tmp_path / "s.yaml").write_text(spec.replace(old, new, 1))
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "s.yaml")])
    _one_line_exit_2(result, field)
    assert "s.yaml:" in result.stderr  # the line, not just the field


def test_plan_and_validate_exit_3_when_the_spec_does_not_fit():
    too_big = ["--set", "cluster.gpu=L4", "--set", "model.n_layers=400", "--set", "model.d_model=4096",
               "--set", "model.n_heads=32", "--set", "model.d_ff=11008"]
    for command in (["plan", "tiny"], ["plan", "tiny", "--json"], ["validate", "tiny"]):
        result = CliRunner().invoke(app, [*command, *too_big])
        assert result.exit_code == 3, result.output
        assert "Traceback" not in result.output and result.stdout.strip()  # the output is kept
    assert CliRunner().invoke(app, ["plan", "tiny", "--json"]).exit_code == 0


def test_version_completion_and_whole_sentences_in_specs():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip().startswith("llmspec ")
    assert "--install-completion" in CliRunner().invoke(app, ["--help"]).output
    rows = json.loads(CliRunner().invoke(app, ["specs", "--json"]).output)
    assert rows and all(row["about"].endswith(".") for row in rows)


def _rendered_at_80(render, *args) -> str:
    import io

    from rich.console import Console

    console = Console(width=80, file=io.StringIO(), color_system=None)
    render(*args, console)
    return console.file.getvalue()


@pytest.mark.parametrize("name", ["llama3-405b", "llama3-8b", "gpt2-124m", "mixtral-8x7b", "tiny"])
def test_plan_tables_fit_80_columns_uncut(name):
    from llmspec.cli.report import render_plan
    from llmspec.planner.training import plan
    from llmspec.spec.loading import load_spec

    text = _rendered_at_80(render_plan, plan(load_spec(name)))
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert "◀" in text  # the chosen strategy stays marked


def test_size_table_fits_80_columns_and_its_command_pastes_whole():
    from llmspec.cli.report import render_size
    from llmspec.planner.layout_search import search
    from llmspec.spec.loading import load_spec

    spec = load_spec("llama2-7b")
    result = search(spec)
    text = _rendered_at_80(render_size, result, spec)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80 and "◀" in text
    command = text.split("reproduce the best:\n", 1)[1].strip().splitlines()
    assert all(line.endswith(" \\") for line in command[:-1]) and not command[-1].endswith("\\")
    words = " ".join(line.rstrip("\\") for line in command).split()
    assert words[:3] == ["llmspec", "plan", "llama2-7b"]
    assert [words[i + 1] for i, word in enumerate(words) if word == "--set"] == result.best.sets()


def test_explain_prints_input_names_as_written():
    result = CliRunner().invoke(app, ["explain", "tiny", "memory_activations"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    assert "layernorm" in result.output and "ck_none" in result.output and "L_here" in result.output
    assert not set("‖ₐₑₕᵢⱼₖₗₘₙₒₚᵣₛₜᵤᵥₓ₀₁₂") & set(result.output)


def test_a_shortened_run_from_the_command_line_keeps_the_files_warmup():
    assert CliRunner().invoke(app, ["validate", "tiny", "--set", "training.max_steps=8"]).exit_code == 0
    both = CliRunner().invoke(app, ["validate", "tiny", "--set", "training.max_steps=8",
                                    "--set", "training.schedule.warmup_steps=20"])
    assert both.exit_code == 2 and "training.schedule.warmup_steps" in both.stderr


# ---- issue 30: what validate adds, what the commands say they chose, explain's long formulas, generate -------------


def test_validate_refuses_an_init_from_that_is_not_there(tmp_path):
    result = run("validate", "tiny", "--set", f"training.init_from={tmp_path / 'nope'}")
    _one_line_exit_2(result, "training.init_from", "nope: no such file or directory")
    assert run("plan", "tiny", "--set", f"training.init_from={tmp_path / 'nope'}").exit_code == 0  # a plan needs none


def test_a_shared_gpu_name_is_taken_with_a_notice_on_stderr():
    for command in (["validate", "tiny"], ["plan", "tiny", "--json"], ["explain", "tiny", "mfu"]):
        result = run(*command, "--set", "cluster.gpu=H100")
        assert result.exit_code == 0, result.output
        assert result.stderr.splitlines() == ["note: cluster.gpu 'H100' is taken as H100-SXM (it could also mean "
                                              "H100-PCIe: name the one you have)"]
    assert json.loads(run("plan", "tiny", "--json", "--set", "cluster.gpu=H100").stdout)["name"] == "tiny"
    assert run("validate", "tiny", "--set", "cluster.gpu=H100-SXM").stderr == ""


def test_explain_writes_a_composite_quantity_linearly():
    result = run("explain", "tiny", "memory_activations")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) < 250, len(lines)  # was 1,129 lines of pretty-print fragments
    expansion = "".join(lines[lines.index("expanded to inputs:"):])
    assert "↪" not in expansion and "Min(m, " in expansion  # sympy's one-line form
    mfu = run("explain", "tiny", "mfu")  # its linear form is 55,403 characters: its parts are named instead
    assert "too long to read here (--json holds it); explain its parts: flops_per_token_train, tokens_per_second" in \
        " ".join(mfu.stdout.split()) and len(mfu.stdout.splitlines()) < 20
    [item] = json.loads(run("explain", "tiny", "mfu", "--json").stdout)
    assert len(item["expanded"]) > 50_000 and "\n" not in item["expanded"]
    assert run("explain", "tiny", "memory_optimizer").stdout.count("o_bpp⋅psi") == 2  # short ones stay pretty


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory) -> Path:
    """One step of `tiny` from the tiny base: a run directory with a checkpoint (seconds)."""
    from llmspec.runner import run as run_spec
    from llmspec.spec.loading import load_spec

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    run_spec(load_spec("tiny", [f"training.init_from={base}", "training.max_steps=1", "training.eval_interval=1",
                                "training.checkpoint_interval=1", "training.micro_batch_size=2",
                                "training.global_batch_size=2", "training.schedule.warmup_steps=1"]),
             run_dir, announce=lambda *a: None)
    return run_dir


def test_generate_cuts_max_new_tokens_to_the_trained_context(trained):
    from tokenizers import Tokenizer

    result = run("generate", str(trained), "Return the", "--max-new-tokens", "300", "--temperature", "0")
    assert result.exit_code == 0, result.output
    assert result.stderr == ("note: --max-new-tokens 300 cut to 254: the model was trained on sequences of 256 tokens "
                             "and the prompt holds 2\n")
    assert len(Tokenizer.from_file(str(trained / "tokenizer.json")).encode(result.stdout).ids) <= 256 + 1
    _one_line_exit_2(run("generate", str(trained), "word " * 300), "the prompt is 301 tokens", "shorten it")


def test_generate_streams_the_text_as_it_comes(trained):
    from llmspec.train.generate import generate

    for chat in (False, True):
        pieces: list[str] = []
        text = generate(trained, "Return the", max_new_tokens=12, temperature=0, chat=chat, on_text=pieces.append)
        assert len(pieces) > 3 and "".join(pieces) == text, (pieces, text)
        printed = run("generate", str(trained), "Return the", "--max-new-tokens", "12", "--temperature", "0",
                      *(["--chat"] if chat else []))
        assert printed.stdout == text + "\n"
    assert not generate(trained, "Return the", max_new_tokens=12, temperature=0).startswith("\n")


@pytest.mark.parametrize("damage, args, said", [
    ("tokenizer.json", [], "tokenizer.json: not a readable tokenizer ("),
    ("build/model.py", [], "no build/model.py"),
    ("emptied build/model.py", [], "model.py: cannot build the model from it (AttributeError: "),
    (None, ["--temperature", "nan"], "--temperature nan: must be ≥ 0"),
    (None, ["--seed", str(2**64)], "--seed 18446744073709551616: must be in [0, 2^63)"),
])
def test_generate_on_a_damaged_run_or_bad_flags_is_one_line(trained, tmp_path, damage, args, said):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    if damage == "tokenizer.json":
        (copy / damage).write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    elif damage and damage.startswith("emptied "):
        (copy / damage.removeprefix("emptied ")).write_text("")
    elif damage:
        (copy / damage).unlink()
    _one_line_exit_2(run("generate", str(copy), "hi", *args), said)


@pytest.mark.parametrize("args", [["plan", "tiny", "--bogus"], ["generate", "runs/none", "hi", "--top-k", "0"],
                                  ["nonsense"], ["plan"]])
def test_a_usage_mistake_is_one_line_and_exit_2(args):
    """What typer refuses itself (an unknown option or command, a value out of range, a missing argument) is one
    `error:` line naming the command, as every other bad input is, not a box of usage text."""
    result = subprocess.run([sys.executable, "-m", "llmspec", *args], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: llmspec") and "Usage" not in line
