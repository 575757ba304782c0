"""Fixtures: a real berth-agent per test module (or test), as the Rust harness
in tests/src/lib.rs starts it: a temp dir with its own node root, state dir,
socket and config, a containerd namespace of its own, the test environment's
containerd and registries from the BERTH_TEST_* variables (scripts/testenv up).

The binaries come from $BERTH_BIN_DIR (default /work/main/target/debug).
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

import berth_client

BIN_DIR = Path(os.environ.get("BERTH_BIN_DIR", "/work/main/target/debug"))


def env(name: str) -> str:
    """A variable of the test environment; fails the test (never skips) when it
    is missing, so a run outside the environment cannot pass vacuously."""
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: bring the test environment up first (. \"$(scripts/testenv up)\")")
    return value


def image(kind: str = "busybox") -> str:
    return env(f"BERTH_TEST_IMAGE_{kind.upper()}")


def binary(name: str) -> Path:
    path = BIN_DIR / name
    if not path.exists():
        pytest.fail(f"{path} not found: build it first, or point BERTH_BIN_DIR at the binaries")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_NETWORKS = itertools.count()


class Agent:
    """A berth-agent process with its own temp dir; restartable on the same state."""

    def __init__(
        self,
        listen: Optional[str] = None,
        api_extra: str = "",
        task_slots: int = 4,
        log_filter: str = "debug,h2=info,tower=info,hyper=info",
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="berth-py-"))
        # Unique per agent: containerd namespace and node id.
        self.node_id = f"test-py-{secrets.token_hex(4)}"
        self.network_index = next(_NETWORKS) % 250
        self.listen = listen
        self.api_extra = api_extra
        self.task_slots = task_slots
        self.log_filter = log_filter
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._clients: List[berth_client.Client] = []
        self._write_config()

    @property
    def namespace(self) -> str:
        return self.node_id

    @property
    def socket(self) -> Path:
        return self.dir / "agent.sock"

    @property
    def addr(self) -> str:
        return f"unix://{self.socket}"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def log_path(self) -> Path:
        return self.dir / "agent.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _write_config(self) -> None:
        listen = self.listen or self.addr
        cfg = f"""[node]
root_dir = "{self.dir / 'node'}"
state_dir = "{self.state_dir}"
id = "{self.node_id}"
pool_id = "test-pool"
task_slots = {self.task_slots}
min_free_mb = 0

[api]
listen = "{listen}"
{self.api_extra}

[containerd]
socket = "{env('BERTH_TEST_CONTAINERD_SOCKET')}"
namespace = "{self.namespace}"

[registries]
insecure = ["{env('BERTH_TEST_REGISTRY')}"]
ca_files = ["{env('BERTH_TEST_TLS_CA')}"]

[tasks]
terminate_grace_seconds = 2

# A bridge and a /24 per agent, its namespaces under the test environment's
# shared mount (which the test containerd sees).
[network]
run_dir = "{env('BERTH_TEST_NETNS_DIR')}/{self.node_id}"
bridge = "bp{self.network_index}"
subnet = "10.204.{self.network_index}.0/24"
"""
        path = self.dir / "agent.toml"
        path.write_text(cfg)
        path.chmod(0o600)

    def start(self, timeout: float = 20.0) -> "Agent":
        """Starts the process (again, on the same state dir) and waits until it answers."""
        assert self.proc is None, "agent already running"
        log = open(self.log_path, "ab")
        run_env = dict(os.environ, BERTH_LOG=self.log_filter)
        self.proc = subprocess.Popen(
            [str(binary("berth-agent")), "--config", str(self.dir / "agent.toml")],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=run_env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._answers():
                return self
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                pytest.fail(f"berth-agent exited with {code} at start:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"berth-agent did not answer within {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        if self.listen:
            host, port = self.listen.rsplit(":", 1)
            try:
                socket.create_connection((host, int(port)), timeout=0.5).close()
                return True
            except OSError:
                return False
        if not self.socket.exists():
            return False
        c = berth_client.connect(self.addr)
        try:
            c.node(timeout=2)
            return True
        except berth_client.BerthError:
            return False
        finally:
            c.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "agent not running"
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: the agent dies at once (tasks keep running in their shims)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> Optional[int]:
        """SIGTERM, then SIGKILL after 10 s; the exit code."""
        return self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> Optional[int]:
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def client(self) -> berth_client.Client:
        """A client on the agent's unix socket (closed at teardown)."""
        c = berth_client.connect(self.addr)
        self._clients.append(c)
        return c

    def close(self, failed: bool = False) -> None:
        for c in self._clients:
            c.close()
        code = self.stop()
        if failed or (code not in (0, None)):
            print(f"---- agent log ({self.log_path}, exit {code}) ----\n{self.log()[-20000:]}")
        elif not failed:
            shutil.rmtree(self.dir, ignore_errors=True)


AgentFactory = Callable[..., Agent]


@pytest.fixture
def make_agent(request: pytest.FixtureRequest) -> Iterator[AgentFactory]:
    """A factory of agents, each stopped (and its dir removed) at teardown."""
    agents: List[Agent] = []

    def factory(**kwargs: object) -> Agent:
        a = Agent(**kwargs)  # type: ignore[arg-type]
        agents.append(a)
        return a

    yield factory
    failed = bool(getattr(request.node, "rep_call", None) and request.node.rep_call.failed)
    for a in agents:
        a.close(failed)


@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[Agent]:
    """One agent on a unix socket, shared by a module's tests."""
    a = Agent().start()
    yield a
    a.close(failed=request.session.testsfailed > 0)


@pytest.fixture
def client(agent: Agent) -> berth_client.Client:
    return agent.client()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{rep.when}", rep)


def unique(prefix: str) -> str:
    """A task id no other test uses."""
    return f"{prefix}-{secrets.token_hex(3)}"
