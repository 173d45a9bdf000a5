"""DeepSpeed's hostfile format (``HOST slots=N`` per line, ``#`` comments), read into ``cluster.hosts``.

``--hostfile PATH`` on ``build`` and ``run`` is the same as ``--set cluster.hosts=[...]``, with the slots checked
against ``cluster.gpus_per_node``: the hosts then live in the spec (and in RUN_DIR/spec.yaml, so ``--resume`` keeps
them), and ``build`` writes the hostfile from them. No placeholder host is ever written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from llmspec.errors import LLMSpecError

# What DeepSpeed's launcher and ssh accept as a host: a DNS name or an address, nothing a shell would expand.
HOST_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"
_LINE = re.compile(r"^(?P<host>\S+)\s+slots=(?P<slots>\d+)$")


def read_hostfile(path: str | Path) -> list[tuple[str, int, int]]:
    """(host, slots, line number) for every host line of a DeepSpeed hostfile."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise LLMSpecError(f"--hostfile {path}: cannot read it ({getattr(error, 'strerror', None) or error})") \
            from None
    hosts: list[tuple[str, int, int]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if not match:
            raise LLMSpecError(f"{path}:{number}: expected 'HOST slots=N' (DeepSpeed's hostfile), got {line!r}")
        host, slots = match["host"], int(match["slots"])
        if not re.match(HOST_PATTERN, host):
            raise LLMSpecError(f"{path}:{number}: {host!r} is not a host name (letters, digits, . _ -)")
        if any(host == seen for seen, _, _ in hosts):
            raise LLMSpecError(f"{path}:{number}: host {host} is listed twice")
        hosts.append((host, slots, number))
    if not hosts:
        raise LLMSpecError(f"{path}: names no host ('HOST slots=N' per line)")
    return hosts


def hosts_override(path: str | Path, nodes: int, gpus_per_node: int) -> str:
    """The ``--set`` that puts a hostfile's hosts into the spec, once it names one host per node, each with
    gpus_per_node slots."""
    hosts = read_hostfile(path)
    if len(hosts) != nodes:
        raise LLMSpecError(f"--hostfile {Path(path).expanduser()}: names {len(hosts)} host(s), but cluster.nodes "
                           f"is {nodes}")
    for host, slots, number in hosts:
        if slots != gpus_per_node:
            raise LLMSpecError(f"{Path(path).expanduser()}:{number}: {host} has slots={slots}, but "
                               f"cluster.gpus_per_node is {gpus_per_node}")
    return "cluster.hosts=" + json.dumps([host for host, _, _ in hosts])
