"""The run directory a build's ``launch.sh`` trains in: ``python -m llmspec.backends.launch_run_dir BUILD_DIR
[--run-dir DIR] [--resume]`` prepares it and prints its absolute path (the one line on stdout; refusals: one line
on stderr, exit 2).

Two ways a build is launched:

- ``llmspec run`` lays out RUN_DIR (tokenizer, token shards, RUN_DIR/build, job.json) and starts
  ``RUN_DIR/build/launch.sh --run-dir RUN_DIR``: that run is trained as it was prepared.
- An operator runs ``bash BUILD_DIR/launch.sh`` on a build of their own (``llmspec build SPEC -o BUILD_DIR``): the
  run directory (``--run-dir``, default ``runs/<name>`` under the current directory) is prepared here from the
  build's spec.yaml, with the pre-flight ``run`` makes (fit, the engine's refusals, this node's GPUs), and the
  build as launched (edits included) becomes the run's build. Launched again, it refuses a run directory that holds
  checkpoints unless ``--resume`` is given (nothing a finished run wrote is trained over).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from pathlib import Path

from llmspec.errors import LLMSpecError
from llmspec.files import read_manifest

JOB = "job.json"  # what `prepare` writes last: the run directory is laid out


def run_dir_for(build_dir: Path, run_dir: str | None = None, resume: bool = False,
                hostfile: str | None = None) -> Path:
    """The absolute run directory that ``build_dir``'s launch trains in, prepared when it is not the one ``llmspec
    run`` laid out around this build (``hostfile``: launch.sh's $HOSTFILE, the hosts of a build that names none)."""
    build_dir = build_dir.resolve()
    own = build_dir.parent if build_dir.name == "build" and (build_dir.parent / JOB).is_file() else None
    target = Path(run_dir).expanduser().resolve() if run_dir else own
    if target is None:
        target = (Path("runs") / _read_spec(build_dir).name).resolve()
    if target == own and not resume:
        if _checkpoints(own) and not json.loads((own / JOB).read_text()).get("resume"):
            raise LLMSpecError(f"{own}: holds checkpoints (latest {_checkpoints(own)}); `bash {build_dir}/launch.sh "
                               "--resume` continues the run (nothing was trained)")
        return own  # as `llmspec run` prepared it (it starts this script with --run-dir)
    return _prepare(build_dir, target, resume, hostfile, own == target)


def _prepare(build_dir: Path, target: Path, resume: bool, hostfile: str | None, own: bool) -> Path:
    from llmspec.backends import deepspeed_limits
    from llmspec.compile.build import MANIFEST
    from llmspec.train.job import prepare

    spec = _read_spec(build_dir)
    if hostfile and spec.cluster.nodes > 1 and not spec.cluster.hosts:  # launch.sh's $HOSTFILE names the nodes
        from llmspec.spec.hostfile import hosts_override

        spec = _read_spec(build_dir, [hosts_override(hostfile, spec.cluster.nodes, spec.cluster.gpus_per_node)])
    if not resume and _checkpoints(target):
        raise LLMSpecError(f"{target}: holds checkpoints (latest {_checkpoints(target)}); add --resume to continue "
                           "it, or --run-dir DIR to train elsewhere (nothing was trained)")
    copies = [] if own else _built_files(build_dir, MANIFEST)
    if not resume:  # a launch that stopped before its first checkpoint left our copies: written afresh below
        for name in copies:
            held = target / "build" / name
            if held.is_file() and held.read_bytes() == (build_dir / name).read_bytes():
                held.unlink()
    prepare(spec, target, resume, deepspeed_limits.refusals)
    for name in copies:  # the build as launched is what trains, edits included
        shutil.copy2(build_dir / name, target / "build" / name)
    return target


def _read_spec(build_dir: Path, sets: list[str] | None = None):
    """The build's spec.yaml (as ``llmspec build`` dumped it: every default, paths as given) with ``sets``."""
    from llmspec.spec.loading import parse_spec

    path = build_dir / "spec.yaml"
    try:
        text = path.read_text()
    except OSError as error:
        raise LLMSpecError(f"{path}: cannot read the build's spec ({error.strerror or error}); launch.sh trains "
                           "the build it sits in (`llmspec build SPEC -o DIR` writes one)") from None
    return parse_spec(text, source=str(path), sets=sets or ())


def _built_files(build_dir: Path, manifest: str) -> list[str]:
    """The files ``llmspec build`` wrote into ``build_dir`` (its manifest) and the manifest itself."""
    return [name for name in [*read_manifest(build_dir / manifest), manifest] if (build_dir / name).is_file()]


def _checkpoints(run_dir: Path) -> str | None:
    from llmspec.train.checkpoint import latest_checkpoint

    latest = latest_checkpoint(run_dir / "checkpoints")
    return latest.name if latest else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="prepare the run directory a build's launch.sh trains in")
    parser.add_argument("build_dir", type=Path)
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--hostfile", default=None, help="launch.sh's $HOSTFILE, for a build that names no hosts")
    args, _ = parser.parse_known_args(argv)  # the rest of launch.sh's arguments are the worker's
    try:
        with contextlib.redirect_stdout(sys.stderr):  # what preparing says is for the operator; stdout is the path
            path = run_dir_for(args.build_dir, args.run_dir, args.resume, args.hostfile)
    except LLMSpecError as error:
        for line in str(error).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return error.exit_code
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
