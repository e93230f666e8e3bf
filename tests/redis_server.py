"""Real redis-server processes for tests of the Redis store, on free ports in temporary folders.

Never touches the Redis on 127.0.0.1:6379: every port comes from `free_port`, every command names its port.
Readiness is checked over a raw socket, so these helpers do not depend on the client the tests exercise.
Import the fixtures in a conftest (`from tests.redis_server import redis_cluster, redis_server  # noqa: F401`):
imported into a test module, each test parameter naming one trips ruff F811.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import pytest

START_TIMEOUT_S = 10.0  # loading a test-sized AOF takes milliseconds; 10 s means something is wrong
STOP_TIMEOUT_S = 10.0
CLUSTER_TIMEOUT_S = 30.0  # redis-cli --cluster create sleeps 1 s per check while the nodes meet
POLL_S = 0.02
CLUSTER_SLOTS = 16384  # fixed by the Redis Cluster spec
MASTERS = 3  # the fewest redis-cli --cluster create accepts
AOF_DIR = "appendonlydir"  # Redis 7 default `appenddirname`
RDB_FILE = "dump.rdb"  # Redis default `dbfilename`

_handed_out: set[int] = set()


def free_port() -> int:
    """A port free right now; never one already handed out by this process, since back-to-back binds to port 0
    may return the same port once its socket is closed."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def require_redis() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not found; install it: apt-get install -y redis-server")


class RedisReplyError(Exception):
    """An error reply (`-ERR ...`, `-LOADING ...`) to one of `_ask`'s commands."""


def _ask(port: int, *args: str) -> str:
    """Send one command on a fresh connection and return the reply as text (RESP2 simple, integer or bulk)."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock, sock.makefile("rb") as reply:
        sock.sendall(request.encode())
        line = reply.readline().decode().rstrip("\r\n")
        kind, rest = line[:1], line[1:]
        if kind in ("+", ":"):
            return rest
        if kind == "$":
            return reply.read(int(rest) + 2)[:-2].decode()
        if kind == "-":
            raise RedisReplyError(rest)
        raise ConnectionError(f"unexpected reply from port {port}: {line!r}")


def _wait_until(ready: Callable[[], bool], timeout: float, what: str, log: Callable[[], str]) -> None:
    """Poll `ready` until it holds: the process is external, so a bounded poll is the only way to know."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout} s:\n{log()}")
        time.sleep(POLL_S)


class RedisServer:
    """One redis-server in `dir` on a port fixed at construction, so it can be stopped, killed, wiped and
    restarted as the same server. Entering the context starts it; leaving it kills it."""

    def __init__(self, dir: Path, *, appendonly: bool = True, cluster: bool = False) -> None:
        self.dir = dir.resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self._port = free_port()
        # The bus port defaults to port + 10000, which is past 65535 for most ephemeral ports: pick one instead.
        self._bus_port = free_port() if cluster else None
        self._log_path = self.dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self._port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        return self._log_path.read_text(errors="replace") if self._log_path.exists() else ""

    def _log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def _argv(self) -> list[str]:
        options = {
            "port": str(self._port),
            "bind": "127.0.0.1",
            "protected-mode": "no",
            "daemonize": "no",
            "dir": str(self.dir),
            "logfile": str(self._log_path),
            "save": "",
            # fsync before every reply: a write that was acknowledged survives a kill -9.
            "appendonly": "yes" if self.appendonly else "no",
            "appendfsync": "always",
        }
        if self._bus_port is not None:
            options |= {
                "cluster-enabled": "yes",
                "cluster-config-file": "nodes.conf",
                "cluster-node-timeout": "2000",
                "cluster-port": str(self._bus_port),
            }
        return ["redis-server", *(arg for name, value in options.items() for arg in (f"--{name}", value))]

    def start(self) -> None:
        """Launch and return once it answers PING (not -LOADING): the AOF is loaded and writes are accepted."""
        if self.running:
            raise RuntimeError(f"redis-server on port {self._port} is already running")
        # stdout and stderr go to the log too: errors before Redis opens its logfile are printed there.
        with self._log_path.open("ab") as out:
            proc = self._proc = subprocess.Popen(
                self._argv(), cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

        def answers_ping() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server on port {self._port} exited with {proc.returncode}:\n{self._log_tail()}"
                )
            try:
                return _ask(self._port, "PING") == "PONG"
            except (OSError, RedisReplyError):  # not listening yet, or still loading its data
                return False

        try:
            _wait_until(answers_ping, START_TIMEOUT_S, f"redis-server on port {self._port}", self._log_tail)
        except BaseException:
            self.kill()
            raise

    def stop(self) -> None:
        """SIGTERM: Redis flushes its AOF and exits 0. Raises if that does not happen in time."""
        if self._proc is None or not self.running:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            code = self._proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"redis-server on port {self._port} ignored SIGTERM:\n{self._log_tail()}") from None
        if code != 0:
            raise RuntimeError(f"redis-server on port {self._port} stopped with {code}:\n{self._log_tail()}")

    def kill(self) -> None:
        """SIGKILL: a crash; only what Redis fsynced survives."""
        if self._proc is None or not self.running:
            return
        self._proc.kill()
        self._proc.wait(STOP_TIMEOUT_S)

    def wipe(self) -> None:
        """Delete the data files so the next start() is an empty Redis: a restart that lost its data.
        A cluster node keeps nodes.conf, so it comes back as the same node owning the same slots."""
        if self.running:
            raise RuntimeError(f"stop or kill redis-server on port {self._port} before wiping it")
        shutil.rmtree(self.dir / AOF_DIR, ignore_errors=True)
        (self.dir / RDB_FILE).unlink(missing_ok=True)

    def close(self) -> None:
        self.kill()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RedisCluster:
    """Three masters without replicas, each a RedisServer in its own subfolder of `dir`, joined by
    `redis-cli --cluster create`. Entering the context starts it; leaving it kills every node."""

    def __init__(self, dir: Path) -> None:
        self.nodes = [RedisServer(dir / f"node{i}", cluster=True) for i in range(MASTERS)]

    @property
    def url(self) -> str:
        """A seed node: a cluster client discovers the others from it."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        """Start the nodes, assign the slots, and return once every node sees the whole cluster as ok."""
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            created = subprocess.run(
                ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=CLUSTER_TIMEOUT_S,
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}")
            self.wait_ok()
        except BaseException:
            self.close()
            raise

    def wait_ok(self, timeout: float = CLUSTER_TIMEOUT_S) -> None:
        """Wait until every node reports cluster_state:ok, all slots covered and every node known. Call it after
        restarting a node: a restarted master answers PING at once but refuses commands (CLUSTERDOWN) for its
        first 2 s, Redis's rejoin delay, so the cluster can reconfigure it first."""

        def info(node: RedisServer) -> dict[str, str]:
            try:
                text = _ask(node.port, "CLUSTER", "INFO")
            except (OSError, RedisReplyError):
                return {}
            return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

        def node_ok(node: RedisServer) -> bool:
            fields = info(node)
            return (
                fields.get("cluster_state") == "ok"
                and fields.get("cluster_slots_ok") == str(CLUSTER_SLOTS)
                and fields.get("cluster_known_nodes") == str(len(self.nodes))
            )

        def state() -> str:
            return "\n".join(f"port {node.port}: {info(node)}" for node in self.nodes)

        _wait_until(lambda: all(node_ok(node) for node in self.nodes), timeout, "redis cluster", state)

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A started single Redis with AOF (appendfsync always) in tmp_path/redis."""
    require_redis()
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A started three-master Redis Cluster in tmp_path/redis-cluster."""
    require_redis()
    with RedisCluster(tmp_path / "redis-cluster") as cluster:
        yield cluster
