"""Ray that a test or benchmark starts itself and ends itself, touching no other Ray on the machine.

A private instance in this process (start_private_ray_with_helpers; conftest.py's module fixture
`ray_instance` holds one per test module that asks for it): on loopback, its workers able to import the
test models (PYTHONPATH=tests/helpers), ended by ray.shutdown().

Nodes on loopback (start_node): `ray stop` (with or without --force) ends every Ray process of the user,
whoever started it. Here each node is a `ray start --block` in a session of its own, on ports of its own
(Ray's fixed defaults, such as the dashboard agent's 52365, collide with any other instance); it is stopped
through its own process tree: SIGTERM to the `ray start` process (which ends what it started), then SIGKILL
by pid to any of its descendants still there.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from . import HELPERS

RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def free_ports(n: int) -> list[int]:
    """n ports nobody listens on now (held open together, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def start_private_ray_with_helpers(**kwargs) -> None:
    """kt_swarm's private Ray instance (loopback, no dashboard; kwargs: ray.init's, num_cpus say) whose workers
    can import the test models."""
    from kt_swarm.swarm import start_private_ray

    start_private_ray(runtime_env={"env_vars": {"PYTHONPATH": str(HELPERS)}}, **kwargs)


@dataclass
class RayNode:
    proc: subprocess.Popen
    gcs: str  # host:port of the cluster's GCS
    log: Path
    dashboard: str | None  # a head's job submission address
    seen: dict[int, float] = field(default_factory=dict)  # pid -> create_time of every process it started

    def processes(self) -> list[psutil.Process]:
        """The `ray start` process and its descendants now (remembered, so that orphans are found later)."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                self.seen.setdefault(p.pid, p.create_time())
            except psutil.NoSuchProcess:
                pass
        return procs

    def alive(self) -> list[int]:
        """Pids this node started that still run (the same processes: pid and start time)."""
        self.processes()
        out = []
        for pid, created in self.seen.items():
            try:
                if psutil.Process(pid).create_time() == created:
                    out.append(pid)
            except psutil.NoSuchProcess:
                pass
        return out

    def kill(self) -> None:
        """The machine lost at once: SIGKILL to every process of the node, nothing shut down in order."""
        procs = self.processes()
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        self.proc.wait()

    def stop(self, timeout: float = 30) -> None:
        self.processes()
        if self.proc.poll() is None:
            self.proc.terminate()  # `ray start --block` ends its Ray processes on SIGTERM
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in self.alive():  # ours by pid and start time, never by name
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def start_node(temp_dir: Path, resources: str, head: RayNode | None = None, num_cpus: int = 2,
               timeout: float = 120, env: dict | None = None) -> RayNode:
    """A head node (head None), or a worker joining `head`, every port its own; returns once it is up."""
    (gcs_port, dashboard, node_manager, object_manager, client, agent_http, agent_grpc, runtime_env, metrics,
     workers) = free_ports(10)
    cmd = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus),
           "--disable-usage-stats", "--resources", resources,
           "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
           "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics),
           "--min-worker-port", str(workers), "--max-worker-port", str(workers + 40)]
    if head is None:
        cmd += ["--head", "--port", str(gcs_port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                "--ray-client-server-port", str(client), "--temp-dir", str(temp_dir)]
        gcs = f"127.0.0.1:{gcs_port}"
    else:
        cmd += ["--address", head.gcs]
        gcs = head.gcs
    log = temp_dir / f"ray-start-{'head' if head is None else 'worker'}-{os.getpid()}-{time.monotonic_ns()}.log"
    temp_dir.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env={**ENV, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    node = RayNode(proc, gcs, log, f"http://127.0.0.1:{dashboard}" if head is None else None)
    deadline = time.monotonic() + timeout
    while "Ray runtime started" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            node.stop()
            raise RuntimeError(f"ray start failed: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    node.processes()  # (a `ray start` returns at this point too: the node has registered)
    return node
