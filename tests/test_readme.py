"""The README's command blocks, run and compared with the README's text, so that the README cannot drift.

Each ```text block holds `$ command` lines, each followed by its output. The test runs every `llmspec` command of
those blocks (80 columns, in a scratch directory) and compares stdout and stderr with the text. Commands that
need a trained run or print timings are run by their own tests instead (SKIPPED says which and where).
`python tests/test_readme.py` rewrites the blocks from the program's output.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"(```text\n)(.*?)(```)", re.S)
# command prefix → why it is not run here (and the test that covers it)
SKIPPED = {
    "make run": "trains for minutes: tests/test_run.py::test_default_run_on_a_shortened_budget",
    "llmspec generate": "needs the trained runs/tiny: tests/test_run.py::test_generate_and_export_a_trained_run",
    "llmspec export-hf runs/": "needs the trained runs/tiny: tests/test_run.py::test_generate_and_export_a_trained_run",
    "llmspec run": "trains: tests/test_deepspeed.py",
    "llmspec build tiny -o build/tiny-2n":
        "needs hosts.txt: tests/test_compile.py::test_hostfile_is_validated_against_the_cluster",
    ".venv/bin/python benchmarks/": "prints timings of this machine",
    "llmspec validate my.yaml": "an illustration of a spec being written: tests/test_loader.py",
    "llmspec plan llama2-7b --set parallelism.zero_stage=2 --set training.micro_batch_size=1 --json":
        "shows the invocation; the JSON contract is tests/test_cli.py's",
}


def examples(text: str) -> list[tuple[str, str]]:
    """(command, output) pairs of every ```text block, in order."""
    pairs = []
    for match in BLOCK.finditer(text):
        command, output = None, []
        for line in match.group(2).splitlines():
            if line.startswith("$ "):
                if command:
                    pairs.append((command, "\n".join(output)))
                command, output = line[2:], []
            elif command is not None:
                output.append(line)
        if command:
            pairs.append((command, "\n".join(output)))
    return pairs


def skipped(command: str) -> str | None:
    return next((why for prefix, why in SKIPPED.items() if command.startswith(prefix)), None)


def run_example(command: str, scratch: Path) -> str:
    argv = shlex.split(command, comments=True)
    assert argv[0] == "llmspec", command
    (scratch / "docs").mkdir(exist_ok=True)
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "llmspec", *argv[1:]], cwd=scratch, env=env,
                          capture_output=True, text=True, timeout=300)
    return (done.stdout + done.stderr).rstrip("\n")


CASES = [(command, output) for command, output in examples(README.read_text()) if not skipped(command)]


@pytest.mark.parametrize("command, expected", CASES, ids=[c.split("#")[0].strip()[:60] for c, _ in CASES])
def test_readme_example_prints_what_the_readme_shows(command, expected, tmp_path):
    assert run_example(command, tmp_path) == expected


def test_every_readme_command_is_run_or_skipped_for_a_reason():
    commands = [command for command, _ in examples(README.read_text())]
    assert len(commands) >= 10
    assert all(command.startswith("llmspec ") or skipped(command) for command in commands)


def update(scratch: Path) -> None:
    def fill(match: re.Match) -> str:
        lines, out = match.group(2).splitlines(), []
        i = 0
        while i < len(lines):
            line = lines[i]
            out.append(line)
            i += 1
            if line.startswith("$ ") and not skipped(line[2:]):
                while i < len(lines) and not lines[i].startswith("$ "):
                    i += 1  # drop the old output
                actual = run_example(line[2:], scratch)
                if actual:
                    out.extend(actual.splitlines())
        return match.group(1) + "\n".join(out) + "\n" + match.group(3)

    README.write_text(BLOCK.sub(fill, README.read_text()))


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        update(Path(folder))
    print(f"rewrote the command blocks of {README}")
