"""A build you can launch, on one node or several: launch.sh prepares its run directory, NVMe offload swaps to the
spec's own folder (checked before anything starts), and the many-node path (pdsh over ssh, one rank per host)
trains on two "nodes" of this machine, 127.0.0.1 and 127.0.0.2, each reached through an sshd of the test's own.

The sshd: its own host key, config, port and authorized key (a key generated here), listening on both loopback
addresses; the clients reach it through an ``ssh`` on PATH that adds the test's ssh config (DeepSpeed's launcher
runs ``ssh`` for its check and pdsh runs it for the ranks). What the ranks need of the launching environment
travels as an operator's would: in a ``.deepspeed_env`` file (DS_ENV_FILE), which the launcher exports on every
node. The rendezvous address is pinned to 127.0.0.1 with MASTER_ADDR (DeepSpeed's launcher otherwise asks the
first host for its interface address).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmspec.backends import launch_run_dir, nvme_check
from llmspec.cli import app
from llmspec.compile.build import build, build_files
from llmspec.spec.loading import load_spec
from llmspec.train.metrics import read_metrics

VENV_BIN = Path(sys.executable).parent
# a small model, 2 ranks: the two-node runs take seconds once DeepSpeed has started
SMALL = ["model.n_layers=2", "model.d_model=64", "model.n_heads=4", "model.n_kv_heads=2", "model.d_ff=128",
         "model.vocab_size=512", "data.tokenizer.vocab_size=512", "training.micro_batch_size=4",
         "training.global_batch_size=16", "training.max_steps=4", "training.log_interval=1",
         "training.eval_interval=4", "training.checkpoint_interval=4"]
TWO_NODES = [*SMALL, "cluster.nodes=2", "cluster.gpus_per_node=1"]
NVME = ["cluster.gpus_per_node=2", "training.global_batch_size=32", "parallelism.zero_stage=2",
        "parallelism.offload_optimizer=nvme"]


def _sets(*sets: str) -> list[str]:
    return [arg for value in sets for arg in ("--set", value)]


# ---- parallelism.nvme_path ------------------------------------------------------------------------------------
def test_ds_config_swaps_to_the_specs_nvme_path_and_never_to_an_invented_one(tmp_path):
    given = json.loads(build_files(load_spec("tiny", [*NVME, f"parallelism.nvme_path={tmp_path}"]))["ds_config.json"])
    assert given["zero_optimization"]["offload_optimizer"] == {"device": "nvme", "nvme_path": str(tmp_path),
                                                               "pin_memory": True}
    missing = build_files(load_spec("tiny", NVME))["ds_config.json"]
    assert "nvme_path" not in missing and "/local_nvme" not in missing


@pytest.mark.parametrize("folder, needle", [
    (None, "parallelism.offload_optimizer nvme without parallelism.nvme_path: not run"),
    ("missing", "does not exist on this node"),
    ("a-file", "is not a folder on this node"),
    ("/proc", "no file can be created there on this node"),
])
def test_run_refuses_nvme_offload_without_a_usable_folder_in_one_line(tmp_path, folder, needle):
    (tmp_path / "a-file").write_text("")
    sets = NVME + ([] if folder is None else [f"parallelism.nvme_path={tmp_path / folder}"])
    result = CliRunner().invoke(app, ["run", "tiny", *_sets(*sets), "--out", str(tmp_path / "r"), "--dry-run"])
    assert result.exit_code == 2 and needle in result.stderr and "parallelism.nvme_path" in result.stderr, \
        result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_run_refuses_an_nvme_folder_smaller_than_the_plans_nvme_bytes(tmp_path, monkeypatch):
    spec = load_spec("tiny", [*NVME, f"parallelism.nvme_path={tmp_path}"])
    assert nvme_check.nvme_refusals(spec) == []  # this disk holds the plan's 11 MiB
    full = shutil.disk_usage(tmp_path)._replace(free=1 << 20)
    monkeypatch.setattr(nvme_check.shutil, "disk_usage", lambda path: full)
    (refusal,) = nvme_check.nvme_refusals(spec)
    assert str(refusal).startswith(f"parallelism.nvme_path {tmp_path}: not run (1.00 MiB free there on this node, "
                                   "but the plan puts 11.45 MiB per node on NVMe)")
    # the torch engine holds the whole step in one process: no NVMe, nothing to check
    assert nvme_check.nvme_refusals(load_spec("tiny")) == []


def test_a_usable_nvme_folder_passes_the_dry_run(tmp_path):
    result = CliRunner().invoke(app, ["run", "tiny", *_sets(*NVME, f"parallelism.nvme_path={tmp_path}"), "--out",
                                      str(tmp_path / "r"), "--dry-run"])
    assert result.exit_code == 0 and "dry run: tiny would train" in result.output, result.output


# ---- launch.sh's run directory ----------------------------------------------------------------------------------
def test_the_worker_without_a_prepared_run_directory_says_so_in_one_line(tmp_path, capsys):
    from llmspec.backends.deepspeed_worker import run_dir_argument

    build(load_spec("tiny"), tmp_path / "b")
    with pytest.raises(SystemExit) as exit_:
        run_dir_argument(["--build-dir", str(tmp_path / "b")])
    assert exit_.value.code == 2
    assert "not a prepared run directory (no job.json); start the build's launch.sh" in capsys.readouterr().err
    (tmp_path / "job.json").write_text("{}")  # RUN_DIR/build of a prepared run: the run around it
    assert run_dir_argument(["--build-dir", str(tmp_path / "b"), "--local_rank=1"]) == (tmp_path, 1)


def test_launch_sh_takes_the_run_llmspec_run_prepared_as_it_is_and_refuses_to_train_over_checkpoints(tmp_path):
    run_dir = tmp_path / "r"
    build(load_spec("tiny"), run_dir / "build")
    (run_dir / "job.json").write_text(json.dumps({"resume": False}))
    assert launch_run_dir.run_dir_for(run_dir / "build", str(run_dir)) == run_dir.resolve()  # what `run` starts
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "step-00000004.pt").write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "llmspec.backends.launch_run_dir", str(run_dir / "build")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"error: {run_dir.resolve()}: holds checkpoints (latest step-00000004.pt); `bash "
                             f"{(run_dir / 'build').resolve()}/launch.sh --resume` continues the run (nothing was "
                             "trained)\n")


def test_launch_sh_says_where_to_run_it():
    text = build_files(load_spec("tiny", TWO_NODES + ["cluster.hosts=[a, b]"]))["launch.sh"]
    assert "#     bash launch.sh [--run-dir RUN_DIR] [--resume]" in text
    assert "the first host of the hostfile" in text and "MASTER_ADDR" in text and "passwordless ssh" in text
    assert '${MASTER_ADDR:+--master_addr "$MASTER_ADDR"}' in text and text.rstrip().endswith('--run-dir "$RUN_DIR"')


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": os.pathsep.join([str(VENV_BIN), os.environ["PATH"]]), "OMP_NUM_THREADS": "1",
            **extra}


def _trained(run_dir: Path, steps: int = 4) -> None:
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r][-1] == steps
    assert (run_dir / "checkpoints" / f"step-{steps:08d}.pt").is_file()


@pytest.mark.integration
def test_a_build_launches_on_its_own(tmp_path):
    """`llmspec build` then `bash build/launch.sh`, as its header says: the run directory is prepared from the build
    (and the build as launched, an edit included, is what trains); launched again it continues only with --resume."""
    build(load_spec("tiny", [*SMALL, "cluster.gpus_per_node=2"]), tmp_path / "b")
    model = tmp_path / "b" / "model.py"
    model.write_text(model.read_text() + "\n# edited by hand\n")
    result = subprocess.run(["bash", "b/launch.sh"], cwd=tmp_path, capture_output=True, text=True, env=_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny"
    _trained(run_dir)
    assert (run_dir / "build" / "model.py").read_text().endswith("# edited by hand\n")
    again = subprocess.run(["bash", "b/launch.sh"], cwd=tmp_path, capture_output=True, text=True, env=_env())
    assert again.returncode == 2 and "holds checkpoints (latest step-00000004.pt); add --resume" in again.stderr


# ---- two nodes on one machine ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _missing_tools() -> str | None:
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if os.access("/usr/sbin/sshd", os.X_OK) else None)
    missing = [name for name, path in (("sshd", sshd), ("ssh", shutil.which("ssh")),
                                       ("ssh-keygen", shutil.which("ssh-keygen")), ("pdsh", shutil.which("pdsh")))
               if path is None]
    return ", ".join(missing) or None


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """An sshd on 127.0.0.1 and 127.0.0.2 (one port), and the environment that reaches it: an ``ssh`` first on
    PATH that adds the test's config, MASTER_ADDR pinned, the ranks' variables in a DeepSpeed env file."""
    missing = _missing_tools()
    if missing:
        pytest.skip(f"no {missing} here (`make test` installs openssh-server and pdsh where apt-get can)")
    home = tmp_path_factory.mktemp("ssh")
    for key in ("host_key", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / key)], check=True)
    port = _free_port()
    (home / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
ListenAddress 127.0.0.2
HostKey {home}/host_key
AuthorizedKeysFile {home}/id.pub
PidFile {home}/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
StrictModes no
UsePAM no
LogLevel ERROR
""")
    (home / "ssh_config").write_text(f"""\
Host 127.0.0.1 127.0.0.2
  Port {port}
  IdentityFile {home}/id
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  BatchMode yes
  LogLevel ERROR
""")
    bin_dir = home / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {home}/ssh_config "$@"\n')
    (bin_dir / "ssh").chmod(0o755)
    if os.geteuid() == 0:  # sshd run by root wants its privilege-separation folder (a service start makes it)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    sshd_path = shutil.which("sshd") or "/usr/sbin/sshd"
    sshd = subprocess.Popen([sshd_path, "-D", "-e", "-f", str(home / "sshd_config")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    env = _env(PATH=os.pathsep.join([str(bin_dir), str(VENV_BIN), os.environ["PATH"]]), MASTER_ADDR="127.0.0.1",
               DS_ENV_FILE=str(home / "deepspeed_env"))
    # what the ranks on the other "node" need of this environment, forwarded as an operator forwards NCCL settings
    forwarded = {name: env[name] for name in ("PATH", "LLMSPEC_CACHE", "TORCH_EXTENSIONS_DIR", "HF_HUB_OFFLINE",
                                              "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM") if name in env}
    (home / "deepspeed_env").write_text("".join(f"{name}={value}\n" for name, value in
                                                {**forwarded, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}.items()))
    try:
        deadline = time.time() + 20
        while True:
            reached = [subprocess.run(["ssh", host, "true"], env=env, capture_output=True).returncode == 0
                       for host in ("127.0.0.1", "127.0.0.2")]
            if all(reached):
                break
            if sshd.poll() is not None or time.time() > deadline:
                said = (sshd.stderr.read() if sshd.poll() is not None else "") or "no answer on both addresses"
                pytest.skip(f"sshd did not start here: {said.strip().splitlines()[0]}")
            time.sleep(0.2)
        (home / "hosts").write_text("127.0.0.1 slots=1\n127.0.0.2 slots=1\n")
        yield home / "hosts", env
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)


def _on_both_nodes(output: str) -> None:
    """pdsh prefixes each line with the host that printed it: both hosts ran a rank."""
    for host in ("127.0.0.1", "127.0.0.2"):
        assert f"{host}: " in output, output[-3000:]


@pytest.mark.integration
def test_run_with_a_hostfile_trains_on_two_nodes(two_nodes, tmp_path):
    hosts, env = two_nodes
    result = subprocess.run([sys.executable, "-m", "llmspec", "run", "tiny", *_sets(*TWO_NODES), "--hostfile",
                             str(hosts), "--out", str(tmp_path / "r")], cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _on_both_nodes(result.stdout + result.stderr)
    _trained(tmp_path / "r")


@pytest.mark.integration
def test_the_builds_launch_sh_trains_on_two_nodes(two_nodes, tmp_path):
    hosts, env = two_nodes
    built = subprocess.run([sys.executable, "-m", "llmspec", "build", "tiny", *_sets(*TWO_NODES), "--hostfile",
                            str(hosts), "-o", "b"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert built.returncode == 0, built.stderr
    result = subprocess.run(["bash", "b/launch.sh", "--run-dir", "r"], cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _on_both_nodes(result.stdout + result.stderr)
    _trained(tmp_path / "r")
