"""A real Ray cluster of several nodes on this machine, on loopback: `ray start` processes, each in its
own process group, ended by that group's id (never a machine-wide `ray stop`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from athanor.ioc import free_port

# Node death is noticed in ~2 s instead of the default ~30 s, so a lost node is seen within a test.
FAST_HEALTH = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
               "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "1000"}
OBJECT_STORE_BYTES = 200 * 1024**2  # per node: what these campaigns pass around is small


class Cluster:
    def __init__(self, log_dir: Path, head_cpus: int = 2, resources: dict[str, float] | None = None):
        self.log_dir = log_dir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen] = []
        # Every process that talks to this cluster runs with `env`. Ray's token authentication is set
        # explicitly: left unset, `ray start` turns it on when ~/.ray/auth_token exists (a local
        # `ray.init()` writes one) while a client joining by address does not.
        self.env = {**os.environ, **FAST_HEALTH, "RAY_AUTH_MODE": "disabled"}
        self.env.pop("RAY_ADDRESS", None)
        self._start("head", ["--head", f"--port={self.port}", f"--num-cpus={head_cpus}", "--include-dashboard=false",
                             f"--resources={json.dumps(resources or {})}"])

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"ray-{name}-{len(self.nodes)}.log", "w")
        process = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--node-ip-address=127.0.0.1", "--block",
             "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}",
             f"--object-store-memory={OBJECT_STORE_BYTES}",
             *args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.nodes.append(process)
        return process

    def add_node(self, resources: dict[str, float], cpus: int = 1) -> subprocess.Popen:
        before = len(self.alive_nodes())
        process = self._start("node", [f"--address={self.address}", f"--num-cpus={cpus}",
                                       f"--resources={json.dumps(resources)}"])
        self.wait_nodes(before + 1)
        return process

    def alive_nodes(self) -> list[dict]:
        """The cluster's live nodes, asked from a separate process (this one never joins the cluster)."""
        if self.nodes[0].poll() is not None:
            raise AssertionError(f"the head node exited: see {self.log_dir}")
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
                "print(json.dumps([{'id': n['NodeID'], 'resources': n['Resources']} for n in ray.nodes() "
                "if n['Alive']]))") % self.address
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env, timeout=120)
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        return json.loads(out.stdout.strip().splitlines()[-1])

    def wait_nodes(self, n: int, timeout: float = 120.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                nodes = self.alive_nodes()
                if len(nodes) == n:
                    return nodes
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise AssertionError(f"the cluster has not {n} live nodes")
            time.sleep(1.0)

    def kill(self, process: subprocess.Popen) -> None:
        """A node lost, as when its computer goes: its raylet and every worker on it SIGKILLed at once
        (workers may run in process groups of their own, so its descendants are found first)."""
        import psutil

        try:
            descendants = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for child in descendants:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        process.wait(timeout=30)

    def stop(self) -> None:
        for process in reversed(self.nodes):
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for process in reversed(self.nodes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill(process)
