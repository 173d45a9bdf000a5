"""Load a spec from a path or a named spec, apply ``--set`` overrides, and report problems with YAML lines."""

from __future__ import annotations

import difflib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from llmspec.errors import ConsistencyError, Problem, SpecError
from llmspec.spec.post_training import METHOD_CLASSES, Reward
from llmspec.spec.schema import ModelSpec, Spec

SET_SOURCE = "--set"


PUBLISHED = "published"


def named_specs() -> dict[str, Path]:
    """Named example specs shipped in ``specs/`` (installed as the ``llmspec.specs`` package), and the published
    runs' layouts in ``specs/published/`` as ``published/NAME``."""
    folder = resources.files("llmspec.specs")
    found = {Path(f.name).stem: Path(str(f)) for f in folder.iterdir() if f.name.endswith(".yaml")}
    found |= {f"{PUBLISHED}/{Path(f.name).stem}": Path(str(f))
              for f in folder.joinpath(PUBLISHED).iterdir() if f.name.endswith(".yaml")}
    return found


def resolve(source: str | Path) -> Path:
    """A path to an existing file, or the name of a spec in specs/."""
    path = Path(source)
    if path.is_file():
        return path
    specs = named_specs()
    name = str(source).removesuffix(".yaml")
    if name in specs:
        return specs[name]
    close = difflib.get_close_matches(name, specs, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f" ({len(specs)} named specs: `llmspec specs` lists them)"
    raise SpecError([Problem("", f"no spec file or named spec '{source}'{hint}")])


def load_spec(source: str | Path, sets: list[str] | tuple[str, ...] = ()) -> Spec:
    """Load and validate a spec; raise SpecError listing every problem (with field path and YAML line)."""
    path = resolve(source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError([Problem("", f"cannot read spec: {err}", source=str(path))]) from None
    # a named spec's paths (the post-training chain's runs/tiny) are relative to where the command runs
    named = path.resolve() in {p.resolve() for p in named_specs().values()}
    return parse_spec(text, source=str(path), sets=sets, base_dir=None if named else path.parent, check_warmup=True)


# Paths a spec file names, resolved against the file's folder (a --set value, and a named spec's paths, are
# relative to the current one).
# fields that name files, resolved against the spec file's folder ("*": every item of a list); a calibration is a
# kernel profile's name or a file, resolved only when it reads as a file
FILE_PATHS = (("data", "corpus"), ("data", "tokenizer", "path"), ("training", "init_from"),
              ("data", "sources", "*", "path"), ("cluster", "calibration"))
_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def parse_spec(text: str, source: str = "<string>", sets: list[str] | tuple[str, ...] = (),
               base_dir: Path | None = None, check_warmup: bool = False) -> Spec:
    """A spec from YAML text. ``check_warmup``: also refuse a warmup longer than the run (specs a user wrote; a
    spec.yaml that llmspec dumped holds every default, and is read back as it was run)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark else None
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError([Problem("", f"invalid YAML: {reason}", line, source)]) from None
    except RecursionError:  # PyYAML composes recursively: thousands of nested brackets exhaust the stack
        raise SpecError([Problem("", f"nested more than {MAX_DEPTH} levels deep", None, source)]) from None
    if not isinstance(data, dict):
        raise SpecError([Problem("", "a spec must be a YAML mapping with name, model, training, ...", 1, source)])
    _check_shape(data, source)  # before anything walks it: the duplicate-key check and pydantic recurse
    duplicates = list(_duplicate_keys(node, source))
    if duplicates:
        raise SpecError(duplicates)
    if base_dir is not None:
        _resolve_file_paths(data, base_dir)
    overridden = apply_sets(data, sets)
    if sets:
        _check_shape(data, SET_SOURCE)
    try:
        spec = Spec.model_validate(data)
        problems = _warmup_problems(spec, overridden) if check_warmup else []
        if not problems:
            return spec
    except ValidationError as err:
        problems = _merge_union_members([_from_pydantic(e) for e in err.errors()])
    except ConsistencyError as err:
        problems = list(err.problems)
    raise SpecError([_locate(p, node, source, overridden) for p in problems]) from None


def _warmup_problems(spec: Spec, overridden: set[str]) -> list[Problem]:
    """A warmup the run never finishes (it never reaches optimizer.lr). Checked where the spec states both: not
    for the default warmup, and not when only the run's length comes from --set (a quick check of a long spec,
    `--set training.max_steps=8`, keeps its file's warmup)."""
    tr = spec.training
    length_from_command_line = bool({"training.max_steps", "training.tokens"} & overridden)
    if "warmup_steps" not in tr.schedule.model_fields_set or (
            length_from_command_line and "training.schedule.warmup_steps" not in overridden):
        return []
    if tr.schedule.warmup_steps <= tr.steps:
        return []
    return [Problem("training.schedule.warmup_steps",
                    f"warmup_steps {tr.schedule.warmup_steps} exceeds the run's {tr.steps} steps")]


# A spec is a few sections of scalars and short lists: deeper nesting or more values than these is not a spec, and
# walking it (recursively, as the checks and pydantic do) would exhaust the stack or the clock. YAML aliases make
# both possible in a few bytes: `a: &x [*x]` is infinitely deep, nine aliases of nine give 9^9 values.
MAX_DEPTH = 32
MAX_VALUES = 100_000


def _check_shape(data: object, source: str) -> None:
    """Refuse data nested deeper than MAX_DEPTH, holding more than MAX_VALUES values, or containing itself (an
    alias inside its own anchor), without recursion."""
    stack: list[tuple[object, int, tuple[int, ...]]] = [(data, 0, ())]
    count = 0
    while stack:
        value, depth, ancestors = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise SpecError([Problem("", f"more than {MAX_VALUES:,} values (YAML aliases repeating aliases?)",
                                     None, source)])
        if not isinstance(value, (dict, list)):
            continue
        if id(value) in ancestors:
            raise SpecError([Problem("", "a YAML alias refers to the collection it is in (like `a: &x [*x]`)",
                                     None, source)])
        if depth >= MAX_DEPTH:
            raise SpecError([Problem("", f"nested more than {MAX_DEPTH} levels deep", None, source)])
        children = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        stack.extend((child, depth + 1, (*ancestors, id(value))) for child in children)


def _duplicate_keys(node: yaml.Node | None, source: str, path: str = ""):
    """A key given twice in one mapping (YAML would keep the last silently)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value)
            where = f"{path}.{name}" if path else name
            if name in seen:
                yield Problem(where, f"given twice (lines {seen[name]} and {key.start_mark.line + 1}); keep one",
                              key.start_mark.line + 1, source)
            seen.setdefault(name, key.start_mark.line + 1)
            yield from _duplicate_keys(value, source, where)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _duplicate_keys(item, source, path)


def _resolve_file_paths(data: dict, base_dir: Path) -> None:
    for keys in FILE_PATHS:
        for parent in _parents(data, keys[:-1]):
            if keys[-1] not in parent:
                continue
            value = parent[keys[-1]]
            if keys == ("cluster", "calibration") and not (isinstance(value, str) and (
                    "/" in value or value.endswith(_FILE_SUFFIXES))):
                continue  # a kernel profile's name
            parent[keys[-1]] = ([_against(base_dir, v) for v in value] if isinstance(value, list)
                                else _against(base_dir, value))


def _parents(data: object, keys: tuple[str, ...]) -> list[dict]:
    """The mappings at ``keys`` below ``data`` ("*": each item of a list); none where the spec has no such place."""
    found = [data]
    for key in keys:
        if key == "*":
            found = [item for value in found if isinstance(value, list) for item in value]
        else:
            found = [value.get(key) for value in found if isinstance(value, dict)]
    return [value for value in found if isinstance(value, dict)]


def _against(base_dir: Path, value: object) -> object:
    """A relative path in a spec file is relative to the file, not to where the command runs."""
    if not isinstance(value, str) or value == "builtin" or value.startswith("~") or Path(value).is_absolute():
        return value
    return str(base_dir / value)


def apply_sets(data: dict, sets: list[str] | tuple[str, ...]) -> set[str]:
    """Apply ``section.field=value`` overrides in place (values parsed as YAML); return the paths set."""
    done = set()
    for item in sets:
        key, sep, raw = item.partition("=")
        keys = key.strip().split(".")
        if not sep or not all(keys):
            raise SpecError([Problem(key, f"expected --set section.field=value, got '{item}'", source=SET_SOURCE)])
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except (yaml.YAMLError, RecursionError):
            value = raw
        target = data
        for i, part in enumerate(keys[:-1]):
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(keys[: i + 1])
                raise SpecError([Problem(where, f"is not a section, cannot set '{key}'", source=SET_SOURCE)])
            target = child
        target[keys[-1]] = value
        done.add(".".join(keys))
    return done


def _from_pydantic(error: dict[str, Any]) -> Problem:
    *parents, leaf = [str(part) for part in error["loc"]] or [""]
    loc = [part for part in parents if not _is_union_tag(part)] + ([leaf] if not _is_union_tag(leaf) or
                                                                   error["type"] == "extra_forbidden" else [])
    path = ".".join(loc)
    method = next((part for part in parents if part in METHOD_CLASSES), None)
    if error["type"] == "extra_forbidden" and method is not None and loc[-1] in _KNOBS:
        readers = ", ".join(name for name, cls in METHOD_CLASSES.items() if loc[-1] in cls.model_fields)
        return Problem(path, f"{method} does not read {loc[-1]} (read by {readers}); remove it, or set "
                             "post_training.method")
    if error["type"] == "union_tag_invalid":
        return Problem(f"{path}.method", f"unknown method {error['input'].get('method')!r}; the methods: "
                                         f"{', '.join(METHOD_CLASSES)}")
    if error["type"] == "extra_forbidden":
        choices = _fields_at(loc[:-1], method)
        close = difflib.get_close_matches(loc[-1], choices, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else f" (allowed: {', '.join(choices)})"
        return Problem(path, f"unknown field '{loc[-1]}'{hint}")
    if error["type"] == "missing":
        return Problem(path, "required field is missing")
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] not in ("value_error",) and "input" in error and not isinstance(error["input"], dict):
        message += f" (got {_shortened(repr(error['input']))})"
    return Problem(path, message)


def _shortened(text: str, limit: int = 80) -> str:
    """A value as the error line quotes it: a pasted blob is cut, so the line stays one readable line."""
    return text if len(text) <= limit else f"{text[:limit - 1]}…"


def _merge_union_members(problems: list[Problem]) -> list[Problem]:
    """One line per field: a value no member of a union accepts gets one problem per member from pydantic ("Input
    should be a valid integer", "Input should be 'auto'"); say them together."""
    merged: dict[str, Problem] = {}
    for problem in problems:
        first = merged.get(problem.path)
        if first is None:
            merged[problem.path] = problem
            continue
        got = problem.message.rfind(" (got ")
        said, suffix = (problem.message[:got], problem.message[got:]) if got >= 0 else (problem.message, "")
        head = first.message.removesuffix(suffix)
        merged[problem.path] = Problem(problem.path, f"{head} or {said.removeprefix('Input should be ')}{suffix}")
    return list(merged.values())


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "CustomGPU", "RopeScaling", "MoE",
               "constrained-int", *METHOD_CLASSES}
# the knobs some post-training method reads (on another method's section: "ppo does not read beta")
_KNOBS = {name for cls in METHOD_CLASSES.values() for name in cls.model_fields}


def _is_union_tag(part: str) -> bool:
    # pydantic names the union member it tried ("str", "CustomGPU", "function-before[...]", a post-training method's
    # tag): not a field.
    return part in _UNION_TAGS or "[" in part


def _fields_at(loc: list[str], method: str | None = None) -> list[str]:
    """Field names of the section at ``loc`` (for did-you-mean); ``method``: the post_training class pydantic tried."""
    model: type[BaseModel] | None = Spec
    for part in loc:
        if model is None or part not in model.model_fields:
            return []
        model = METHOD_CLASSES[method] if (model, part) == (Spec, "post_training") and method else \
            _model_in(model.model_fields[part].annotation)
    return list(model.model_fields) if model else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is typing.Annotated:
        return _model_in(typing.get_args(annotation)[0])
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found:
                return found
    return None


def _locate(problem: Problem, root: yaml.Node | None, source: str, overridden: set[str]) -> Problem:
    """Attach the YAML line of the deepest node on the problem's path (or mark it as a --set override)."""
    parts = problem.path.split(".") if problem.path else []
    for depth in range(len(parts), 0, -1):
        if ".".join(parts[:depth]) in overridden:
            return Problem(problem.path, problem.message, None, SET_SOURCE)
    node, line = root, 1
    for part in parts:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    line, node = key.start_mark.line + 1, value
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
    return Problem(problem.path, problem.message, line if root is not None else None, source)


def missing_files(spec: Spec) -> list[Problem]:
    """The files a spec names that are not there (what `validate` adds to the rules: a plan needs none of them, a
    run needs them all). The weights ``training.init_from`` names: a run directory, an import-hf output or a
    weights file."""
    source = spec.training.init_from
    if source is None or Path(source).expanduser().exists():
        return []
    name = Path(source).name
    hint = f" (train the base first: `llmspec run {name}`)" if name in named_specs() else ""
    return [Problem("training.init_from", f"{source}: no such file or directory{hint}")]


def dump_spec(spec: Spec, editable: bool = False) -> str:
    """The resolved spec as YAML (derived fields filled in); loading it gives the same spec. ``editable`` leaves
    out what the layout derives (data_parallel, gradient_accumulation_steps), so that a --set of the GPU count or
    the batch applies without first clearing them (a spec written for the user to edit: import-hf)."""
    data = spec.model_dump(mode="json", exclude_none=True)
    if editable:
        data["parallelism"].pop("data_parallel", None)
        data["training"].pop("gradient_accumulation_steps", None)
    return yaml.safe_dump(data, sort_keys=False)


def auxiliary_model(source: str, where: str) -> ModelSpec:
    """The architecture a spec field names (``post_training.reward_model`` or ``critic_model``): a run directory
    (its spec.yaml), a spec path or a named spec. A problem is reported against ``where``."""
    run_spec = Path(source) / "spec.yaml"
    if not run_spec.is_file() and not Path(source).is_file() and source.removesuffix(".yaml") not in named_specs():
        raise SpecError([Problem(where, f"{source}: not a run directory (with spec.yaml), a spec file or a named "
                                        "spec (llmspec specs lists them)")])
    try:
        if run_spec.is_file():
            return parse_spec(run_spec.read_text(encoding="utf-8"), source=str(run_spec)).model
        return load_spec(source).model
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError([Problem(where, f"cannot read {run_spec}: {err}")]) from None
    except SpecError as err:
        first = err.problems[0]
        raise SpecError([Problem(where, f"{source}: {first.message}")]) from None


def role_model(spec: Spec, role: str) -> ModelSpec:
    """The architecture of a PPO/GRPO step's ``role`` model (critic or reward): what
    ``post_training.<role>_model`` names, else the policy's."""
    source = getattr(spec.post_training, f"{role}_model")
    return spec.model if source is None else auxiliary_model(source, f"post_training.{role}_model")


def value_model_spec(spec: Spec, role: str = "critic") -> Spec:
    """PPO's critic (or, for measurement, a step's reward model) as a spec of its own, what model.py compiles for
    it: the role's architecture under a value head, adapted and stored as the policy is (as the planner counts
    it), with no reference of its own."""
    post = spec.post_training
    as_value = Reward(method="reward", adapter=post.adapter, base_precision=post.base_precision,
                      double_quant=post.double_quant)
    return spec.model_copy(update={"model": role_model(spec, role), "post_training": as_value})
