"""README.md and docs/*.md: every command block run and compared with the page, and every link followed.

A page's fenced blocks, by language:
- ```text: `$ command` lines, each followed by its output. Each `llmspec` command runs (80 columns, in a scratch
  directory of that page, in page order) and its stdout and stderr must equal the text line by line (trailing
  spaces aside). An output line `...` stands for any number of lines: an excerpt.
- ```bash: one command per line and no output; each `llmspec` command must exit 0.
- ```python: run as a script; it must exit 0.
Commands that train or print this machine's timings are not run here (SKIPPED says why and which test covers
them); a dry run (`--dry-run`) always runs. Commands whose output depends on how long a run trained run without
their output compared (UNCOMPARED). A command that names `runs/tiny` finds a 2-step training of `tiny` there, made
once per session; every scratch directory holds `docs/` (for `--plot docs/…`) and the files of FILES.
`python tests/test_readme.py` rewrites the outputs from the program (excerpts are kept) and the figures that the
commands draw into docs/.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FRONT_DOOR_LINES = 300
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
ELLIPSIS = "..."
# command prefix → why it is not run here (and the test that covers it)
SKIPPED = {
    "make run": "trains for minutes: tests/test_run.py::test_default_run_on_a_shortened_budget",
    "make test": "the whole suite",
    "make post-train": "trains the chain for minutes: tests/test_learning.py",
    "make ": "a build target of the Makefile",
    "pip install": "installs packages",
    "python benchmarks/": "prints this machine's timings",
    ".venv/bin/python benchmarks/": "prints this machine's timings",
    "llmspec run": "trains: tests/test_run.py, tests/test_deepspeed.py (a --dry-run is run)",
    "llmspec generate runs/tiny-": "needs the post-training chain: tests/test_chat.py",
}
# command prefix → why its output is not compared (it still runs and must exit 0)
UNCOMPARED = {
    "llmspec generate runs/tiny ": "the text depends on how long runs/tiny trained (the page shows make run's)",
}
FILES = {"hosts.txt": "gpu-a slots=2\ngpu-b slots=2\n"}  # the hostfile docs/training.md builds with
RUN = "runs/tiny"
TINY_RUN = ["run", "tiny", "--set", "training.max_steps=2", "--set", "training.log_interval=1",
            "--set", "training.eval_interval=2", "--set", "training.checkpoint_interval=2"]
ENV = {"COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb", "HF_HUB_OFFLINE": "1"}


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block of a page, in order."""
    return [(match.group(1), match.group(2)) for match in BLOCK.finditer(text)]


def examples(text: str) -> list[tuple[str, str, str | None]]:
    """(language, command, expected output or None) of every command of a page, in page order."""
    found = []
    for language, body in blocks(text):
        if language == "python":
            found.append(("python", body, None))
        elif language == "bash":
            found += [("bash", line.split("  #")[0].strip(), None) for line in body.splitlines()
                      if line.strip() and not line.lstrip().startswith("#")]
        elif language == "text":
            command, output = None, []
            for line in body.splitlines():
                if line.startswith("$ "):
                    if command:
                        found.append(("text", command, "\n".join(output)))
                    command, output = line[2:], []
                elif command is not None:
                    output.append(line)
            if command:
                found.append(("text", command, "\n".join(output)))
    return found


def _reason(table: dict[str, str], command: str) -> str | None:
    return next((why for prefix, why in table.items() if command.startswith(prefix)), None)


def skipped(command: str) -> str | None:
    if command.startswith("llmspec ") and "--dry-run" in shlex.split(command, comments=True):
        return None
    return _reason(SKIPPED, command)


def uncompared(command: str) -> str | None:
    return _reason(UNCOMPARED, command)


def matches(expected: str, actual: str) -> bool:
    """Line by line (trailing spaces aside); an expected line `...` matches any number of actual lines."""
    want = [line.rstrip() for line in expected.splitlines()]
    got = [line.rstrip() for line in actual.splitlines()]
    parts, part = [], []
    for line in want:
        if line == ELLIPSIS:
            parts.append(part)
            part = []
        else:
            part.append(line)
    parts.append(part)
    if len(parts) == 1:
        return want == got
    head, *middle, tail = parts
    if got[:len(head)] != head or len(got) < len(head) + len(tail) or (tail and got[-len(tail):] != tail):
        return False
    at, end = len(head), len(got) - len(tail)
    for part in middle:  # each excerpt in order, at its first place: the earliest leaves the most room for the rest
        at = next((i + len(part) for i in range(at, end - len(part) + 1) if got[i:i + len(part)] == part), None)
        if at is None:
            return False
    return True


def scratch_directory(folder: Path) -> Path:
    (folder / "docs").mkdir(parents=True, exist_ok=True)
    for name, text in FILES.items():
        (folder / name).write_text(text)
    return folder


def train_tiny(folder: Path) -> Path:
    """The `runs/tiny` that commands of the pages read: tiny, trained 2 steps (what `make run` makes, shortened)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = _llmspec([*TINY_RUN, "--out", str(folder / RUN)], folder)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder / RUN


def _llmspec(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmspec", *argv], cwd=cwd, env={**os.environ, **ENV},
                          capture_output=True, text=True, timeout=300)


def run_example(language: str, command: str, scratch: Path, tiny_run) -> tuple[int, str]:
    """Run one command of a page in its scratch directory: (exit status, stdout + stderr)."""
    if RUN in command and not (scratch / RUN).exists():
        shutil.copytree(tiny_run(), scratch / RUN)
    if language == "python":
        done = subprocess.run([sys.executable, "-c", command], cwd=scratch, env={**os.environ, **ENV},
                              capture_output=True, text=True, timeout=300)
    else:
        argv = shlex.split(command, comments=True)
        assert argv[0] == "llmspec", f"{command}: not an llmspec command, and SKIPPED gives no reason"
        done = _llmspec(argv[1:], scratch)
    return done.returncode, (done.stdout + done.stderr).rstrip("\n")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    made = []

    def get() -> Path:
        if not made:
            made.append(train_tiny(tmp_path_factory.mktemp("shared-run")))
        return made[0]

    return get


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.integration  # spawns an llmspec process per command (about 50) and trains tiny for 2 steps
@pytest.mark.parametrize("page", [page for page in PAGES if examples(page.read_text(encoding="utf-8"))], ids=_page_id)
def test_every_command_of_a_page_prints_what_the_page_shows(page, tmp_path, tiny_run):
    scratch, wrong = scratch_directory(tmp_path), []
    for language, command, expected in examples(page.read_text(encoding="utf-8")):
        if skipped(command):
            continue
        code, actual = run_example(language, command, scratch, tiny_run)
        if expected is None or uncompared(command):
            if code != 0:
                wrong.append(f"$ {command}\nexited {code}:\n{actual}")
        elif not matches(expected, actual):
            diff = difflib.unified_diff([line.rstrip() for line in expected.splitlines()],
                                        [line.rstrip() for line in actual.splitlines()], "page", "program", lineterm="")
            wrong.append(f"$ {command}\n" + "\n".join(diff))
    assert not wrong, f"{_page_id(page)}: (python tests/test_readme.py rewrites outputs)\n" + "\n\n".join(wrong)


def test_every_command_is_run_or_skipped_for_a_reason():
    commands = [(page, language, command) for page in PAGES
                for language, command, _ in examples(page.read_text(encoding="utf-8"))]
    assert len([c for c in commands if c[1] == "text" and not skipped(c[2])]) >= 20
    unaccounted = [f"{_page_id(page)}: {command}" for page, language, command in commands
                   if language != "python" and not command.startswith("llmspec ") and not skipped(command)]
    assert unaccounted == []


def test_an_excerpt_matches_only_its_lines_in_order():
    actual = "a\nb\nc\nd"
    assert matches("a\n...\nc\n...", actual) and matches("...\nd", actual) and matches("a\nb\nc\nd  ", actual)
    assert not matches("a\n...\nc", actual)  # the last line is d
    assert not matches("...\nc\n...\nb\n...", actual)  # out of order
    assert not matches("a\n...\nb\nc\nd\n...\nd", actual)  # d once only


def test_readme_is_a_front_door_to_every_docs_page():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= FRONT_DOOR_LINES
    linked = {(ROOT / target).resolve() for target in _link_targets(text)}
    unlinked = [_page_id(page) for page in PAGES[1:] if page.resolve() not in linked]
    assert unlinked == []


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#+ (.+)$", re.M)


def _links(text: str) -> list[tuple[str, str]]:
    """(path, anchor) of every relative link of a page's prose (not of its code blocks); path "" is the page."""
    links = [target.partition("#")[::2] for target in LINK.findall(BLOCK.sub("", text))]
    return [(path, anchor) for path, anchor in links if not re.match(r"[a-z]+:", path)]


def _link_targets(text: str) -> list[str]:
    return [path for path, _ in _links(text) if path]


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = HEADING.findall(BLOCK.sub("", page.read_text(encoding="utf-8")))
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_relative_link_of_a_page_resolves(page):
    missing = []
    for path, anchor in _links(page.read_text(encoding="utf-8")):
        target = page.parent / path if path else page
        if not target.exists() or (anchor and target.suffix == ".md" and anchor not in _anchors(target)):
            missing.append(f"{path}#{anchor}" if anchor else path)
    assert missing == []


# No page names a path outside the repository: tests/test_packaging.py checks every tracked file.


def rewrite(page: Path, scratch: Path, tiny_run) -> None:
    """Rewrite a page's compared outputs from the program, running its commands in order in `scratch`."""

    def fill(match: re.Match) -> str:
        language, body = match.group(1), match.group(2)
        if language != "text":
            for _, command, _ in examples(match.group(0)):
                if not skipped(command):
                    run_example(language, command, scratch, tiny_run)  # later commands may read its files
            return match.group(0)
        lines, out, i = body.splitlines(), [], 0
        while i < len(lines):
            line = lines[i]
            out.append(line.rstrip())
            i += 1
            if not line.startswith("$ ") or skipped(line[2:]):
                continue
            start = i
            while i < len(lines) and not lines[i].startswith("$ "):
                i += 1
            expected = "\n".join(lines[start:i])
            _, actual = run_example("text", line[2:], scratch, tiny_run)
            if uncompared(line[2:]) or ELLIPSIS in expected.splitlines():
                out += lines[start:i]  # an excerpt, or an output that varies: kept as written
                if not uncompared(line[2:]) and not matches(expected, actual):
                    print(f"{_page_id(page)}: the excerpt of `{line[2:]}` no longer matches: edit it")
            else:
                out += [output.rstrip() for output in actual.splitlines()]
        return f"```{language}\n" + "\n".join(out) + "\n```"

    page.write_text(BLOCK.sub(fill, page.read_text(encoding="utf-8")), encoding="utf-8")


def update(scratch_root: Path) -> None:
    """Rewrite every page's compared outputs, and copy into docs/ the figures that its commands drew."""
    shared = []

    def tiny_run() -> Path:
        if not shared:
            shared.append(train_tiny(scratch_root / "shared-run"))
        return shared[0]

    for page in PAGES:
        if not examples(page.read_text(encoding="utf-8")):
            continue
        scratch = scratch_directory(scratch_root / _page_id(page).replace("/", "-"))
        rewrite(page, scratch, tiny_run)
        for figure in (scratch / "docs").glob("*.png"):
            if (ROOT / "docs" / figure.name).exists():
                shutil.copy2(figure, ROOT / "docs" / figure.name)
        print(f"rewrote the command blocks of {_page_id(page)}")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        update(Path(folder))
