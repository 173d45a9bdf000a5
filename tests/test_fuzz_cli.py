"""Random mutations of every shipped spec through validate, plan and run --dry-run: each answer is exit 0, 2 or 3
(does not fit), every problem one `error:` line, never a traceback."""

from __future__ import annotations

import copy
import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from llmspec.cli.app import app
from llmspec.spec.loading import named_specs

SPECS = {name: yaml.safe_load(path.read_text()) for name, path in sorted(named_specs().items())}

VALUES = st.one_of(
    st.integers(-10, 10), st.integers(min_value=-2**70, max_value=2**70), st.floats(allow_nan=True),
    st.sampled_from([math.inf, -math.inf, 0.0, 1e30, -1e-9, True, False, None, "", "2T", "abc", "1e400", "cpu",
                     "builtin", "bf16", "fp16", "lion", "selective", "nvme", [], {}, [1, 2], {"x": 1}]),
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
