"""Safe by default: the private Ray instance listens on loopback only; secrets never reach what a run writes."""
import os
import signal
import socket
import time

from support import helpers_env
from support.configs import mlp_config, write_config
from support.launch import kt_swarm, start_kt_swarm
from support.run_log import wait_for


def process_tree(root: int) -> dict[int, str]:
    """{pid: command name} of `root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            parent = int(stat[stat.rindex(")") + 2:].split()[1])  # the field after the state
            children.setdefault(parent, []).append(int(entry))
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        try:
            tree[pid] = open(f"/proc/{pid}/comm").read().strip()
        except OSError:
            continue
        todo += children.get(pid, [])
    return tree


def listening(pids: dict[int, str]) -> list[tuple[str, int, str]]:
    """(address, port, command) of every listening TCP socket and bound UDP socket these processes hold."""
    inodes = {}
    for pid, name in pids.items():
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = name
        except OSError:
            continue
    found = []
    for table, state in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        for line in open(f"/proc/net/{table}").read().splitlines()[1:]:
            fields = line.split()
            if fields[3] != state or fields[9] not in inodes:
                continue
            address, port = fields[1].split(":")
            raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, len(address), 8))
            family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
            found.append((socket.inet_ntop(family, raw), int(port, 16), inodes[fields[9]]))
    return sorted(found)


def loopback(address: str) -> bool:
    return address.removeprefix("::ffff:").startswith("127.") or address == "::1"


def test_the_private_ray_instance_listens_on_loopback_only(tmp_path):
    config = write_config(tmp_path / "c.yaml", mlp_config(transfer={"epochs": 50, "batch_size": 32}))
    out = tmp_path / "out"
    proc = start_kt_swarm("run", config, "--out", out, "-q", env=helpers_env())
    try:
        wait_for(proc, out, lambda r: "losses" in r, timeout=180, poll=0.2)  # training has started
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(3)  # Ray's agents come up a few seconds after its core
        sockets = listening(process_tree(proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    names = {name for _, _, name in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # the instance was really there to look at
    assert [s for s in sockets if not loopback(s[0])] == []


SECRETS = {"WANDB_API_KEY": "wk" + "0123456789abcdef" * 2 + "cafe", "HF_TOKEN": "hf_SeCrEtToKeN4242",
           "AWS_SECRET_ACCESS_KEY": "awsSeCrEt/Kx9+zz", "MY_SERVICE_PASSWORD": "pw-SeCrEt-77"}


def test_environment_secrets_never_reach_the_run_directory_or_the_output(tmp_path):
    config = write_config(tmp_path / "c.yaml", mlp_config(transfer={"epochs": 1, "batch_size": 32},
                                                          tracking={"wandb": {"mode": "offline", "project": "kt-test"}}))
    out = tmp_path / "out"
    env = helpers_env(**SECRETS, WANDB_MODE="offline", WANDB_DIR=str(tmp_path))
    proc = kt_swarm("run", config, "--out", out, "--engine", "local", "-v", env=env)
    assert proc.returncode == 0, proc.stderr
    assert list(out.glob("wandb/offline-run-*")), "W&B did not log, so there was nothing to check"
    everything = proc.stdout.encode() + proc.stderr.encode()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            everything += path.read_bytes()
    for name, value in SECRETS.items():
        assert value.encode() not in everything, name


def test_a_secret_in_the_config_is_refused_before_anything_is_written(tmp_path):
    config = write_config(tmp_path / "c.yaml", mlp_config())
    out = tmp_path / "out"
    proc = kt_swarm("run", config, "--out", out, "--set", f"tracking.wandb.name=run-{SECRETS['HF_TOKEN']}",
                    env={**os.environ, **SECRETS})
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("kt-swarm: error: config key 'tracking.wandb.name' holds the value of $HF_TOKEN: keep "
                                   "secrets in the environment, not in the config (it is saved with the run and sent to W&B)")
    assert not out.exists()


def test_log_lines_and_errors_are_redacted(tmp_path):
    """Whatever a message quotes (a URL with a token in it, say), the secret is masked in the output."""
    env = {**os.environ, **SECRETS}
    proc = kt_swarm("run", tmp_path / f"{SECRETS['MY_SERVICE_PASSWORD']}.yaml", env=env)
    assert proc.returncode == 2 and SECRETS["MY_SERVICE_PASSWORD"] not in proc.stderr
    assert "<$MY_SERVICE_PASSWORD>.yaml' does not exist" in proc.stderr  # the message did quote it
