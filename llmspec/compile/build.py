"""``llmspec build``: write a spec's model.py (with, beside it, objectives.py for a method with a loss of its own and
pipeline.py for a pipeline), ds_config.json, launch.sh, plan.json and resolved spec.yaml."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from llmspec.compile.ds_config import ds_config_dict
from llmspec.compile.launch import hostfile, launch_script
from llmspec.compile.model_source import TEMPLATES, generated_sources
from llmspec.errors import LLMSpecError
from llmspec.files import cannot_create_in, read_manifest, write_atomic
from llmspec.planner.result import Plan
from llmspec.planner.training import plan
from llmspec.spec.loading import dump_spec
from llmspec.spec.schema import Spec


def build_files(spec: Spec, planned: Plan | None = None) -> dict[str, str]:
    """File name → text, everything ``build`` writes (``planned``: the spec's plan with its alternatives, where the
    caller holds it: `run` plans once and hands the plan down)."""
    if planned is None or not planned.is_for(spec) or not planned.alternatives:
        planned = plan(spec)
    files = {
        **generated_sources(spec, planned.params["total"]),
        "ds_config.json": json.dumps(ds_config_dict(spec), indent=2) + "\n",
        "launch.sh": launch_script(spec),
        "plan.json": json.dumps(planned.to_json(), indent=2) + "\n",
        "spec.yaml": dump_spec(spec),
    }
    hosts = hostfile(spec)
    if hosts:
        files["hostfile"] = hosts
    return files


def check_output_dir(path: Path, inputs: tuple[Path, ...] = ()) -> Path:
    """Refuse an output path that is a file (it would be lost or half-replaced), or a directory that is, contains or
    lies inside one of ``inputs`` (writing there would replace what is being read); returns the path."""
    if path.exists() and not path.is_dir():
        raise LLMSpecError(f"{path}: exists and is not a directory")
    out = path.resolve()
    check_can_create_in(next(folder for folder in (out, *out.parents) if folder.exists()), str(path))
    for source in inputs:
        if source.is_file():  # a weights file: only its own folder could be written over
            if out == source.resolve().parent:
                raise LLMSpecError(f"-o {path}: holds the input {source}; choose an output directory apart from it "
                                   "(nothing was written)")
            continue
        folder = source.resolve()
        if out == folder or folder in out.parents or out in folder.parents:
            relation = "is" if out == folder else "is inside" if folder in out.parents else "contains"
            raise LLMSpecError(f"-o {path}: {relation} the input {source}; choose an output directory apart from "
                               "it (nothing was written)")
    return path


def check_can_create_in(folder: Path, label: str) -> None:
    """Refuse, before any work, a folder where no file can be created."""
    error = cannot_create_in(folder)
    if error is not None:
        raise LLMSpecError(f"{label}: cannot write there ({error.strerror or error}; nothing was written)")


# What build wrote, by file: sha256 of the text. A file whose hash differs was edited by hand ("edit it freely"),
# and is not overwritten without force.
MANIFEST = ".llmspec-build.json"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _manifest(out: Path) -> dict[str, str]:
    return read_manifest(out / MANIFEST)


def edited_files(out: Path, files: dict[str, str]) -> list[str]:
    """The files in ``out`` that this build would change and that are not as build last wrote them: edited since,
    or never written by build (a spec.yaml of the user's in the output directory)."""
    written = _manifest(out)
    edited = []
    for name, text in files.items():
        path = out / name
        if path.is_file():
            current = path.read_text(errors="replace")
            if current != text and _digest(current) != written.get(name):
                edited.append(name)
    return edited


def stale_files(out: Path, files: dict[str, str]) -> list[str]:
    """The generated Python files an earlier build wrote in ``out`` that this one does not (objectives.py, when the
    method no longer has a loss of its own; pipeline.py, when the spec no longer has a pipeline), unedited since:
    they would be imported beside the new model.py. An edited one is the user's and stays."""
    return [name for name, digest in _manifest(out).items() if name in TEMPLATES and name not in files
            and (out / name).is_file() and _digest((out / name).read_text(errors="replace")) == digest]


def build(spec: Spec, out_dir: str | Path, force: bool = False, keep_edited: bool = False,
          planned: Plan | None = None) -> list[Path]:
    """Write the build into ``out_dir`` (created if needed); each file is replaced atomically. Returns the paths.
    A file edited since the last build is kept: an error names it, unless ``force`` (overwrite it) or
    ``keep_edited`` (leave it as edited and write the rest: ``run --resume`` over a user's launch.sh)."""
    out = check_output_dir(Path(out_dir))
    files = build_files(spec, planned)  # everything is rendered before anything is written
    edited = [] if force else edited_files(out, files)
    if edited and not keep_edited:
        how = "edited since llmspec wrote it" if edited[0] in _manifest(out) else "not written by llmspec build"
        raise LLMSpecError(f"{out / edited[0]}: {how}; --force overwrites it, or build into another directory "
                           "(nothing was written)")
    # an edited file that is kept keeps its old record, so the next build still knows it as edited
    record = {name: digest for name, digest in _manifest(out).items() if name in edited}
    stale = stale_files(out, files)
    files = {name: text for name, text in files.items() if name not in edited}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in stale:
            (out / name).unlink()
        paths = [write_atomic(out / name, text, executable=name == "launch.sh") for name, text in files.items()]
        record.update({name: _digest(text) for name, text in files.items()})
        write_atomic(out / MANIFEST, json.dumps(record, indent=1))
        return paths
    except OSError as error:
        raise LLMSpecError(f"{out}: cannot write the build ({error.strerror or error})") from None
