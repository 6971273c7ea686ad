"""The three services as child processes: start, wait until they answer, stop.

The one launcher of the project: `lucid-sessions up`, the end-to-end tests
(`tests/e2e/conftest.py`), the container tests and the benchmarks (`bench/harness.py`)
all run the services through a `Node`.  Each service runs as
`python -m sessions.<name>`, exactly as the images run it, spawned in one place
(`Node.spawn`).  Service settings are found through `SETTINGS`, a plain mapping from
a service's name to its settings loader.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, TypedDict

import httpx

from sessions.api.config import Settings as ApiSettings
from sessions.api.config import load_settings as load_api_settings
from sessions.common.serve import MAX_SOCKET_PATH
from sessions.processor.config import Settings as ProcessorSettings
from sessions.processor.config import load_settings as load_processor_settings
from sessions.storage.config import Settings as StorageSettings
from sessions.storage.config import load_settings as load_storage_settings

ServiceName = Literal["storage", "processor", "api"]

SERVICES: Final[tuple[ServiceName, ...]] = ("storage", "processor", "api")
"""In start order: each one's upstream answers before it starts."""

UPSTREAM: Final[Mapping[ServiceName, ServiceName]] = {"api": "processor", "processor": "storage"}
"""The internal hops, by client: the service each one calls (and may reach on a Unix socket)."""

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
STOP_GRACE = 10.0


AnySettings = StorageSettings | ProcessorSettings | ApiSettings


class SettingsLoaders(TypedDict):
    """Each service's settings loader (reads the LUCID_* environment), by service name."""

    storage: Callable[[], StorageSettings]
    processor: Callable[[], ProcessorSettings]
    api: Callable[[], ApiSettings]


SETTINGS: Final[SettingsLoaders] = {"storage": load_storage_settings,
                                    "processor": load_processor_settings,
                                    "api": load_api_settings}


class ServiceFailed(RuntimeError):
    """A service exited or did not answer in time; the message ends with its log's tail."""


class StartAborted(RuntimeError):
    """Starting was given up because the caller asked to stop (a signal during `up`)."""


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports() -> dict[ServiceName, int]:
    """Return a free loopback port for each service."""
    return {name: free_port() for name in SERVICES}


def url(port: int, host: str = "127.0.0.1", scheme: str = "http") -> str:
    """Return the base URL of a service listening on `port`."""
    return f"{scheme}://{host}:{port}"


def connect_host(bind: str) -> str:
    """Return the address to connect to for a service bound to `bind` (any address: loopback)."""
    return "127.0.0.1" if bind in ("", "0.0.0.0", "::") else bind  # noqa: S104 - we connect


def log_tail(path: Path, lines: int = 30) -> str:
    """Return the last `lines` lines of a log file ("" if there is none)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the child if its parent dies without stopping it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Node:
    """The three services of one data dir as child processes: ports, urls, env, procs, logs.

    `base_env` (LUCID_* settings for every service), then `extra_env["*"]`, then
    `extra_env[name]` are laid over the wiring; a change takes effect at the next
    `start(name)` (bar where the Unix sockets are: fixed at the first, see `sockets`).
    With `log_dir` each service appends stdout and stderr to `<log_dir>/<name>.log`;
    without, it inherits ours.  `inherit_lucid` keeps this
    process's LUCID_* variables (`up`: the user's configuration); otherwise they are
    dropped, so a test or benchmark sees only what it set.  `tls` names the services
    that serve HTTPS, with the context that trusts them.

    A node runs the services in `runs`; the others are `peer`'s, reached at its ports
    and Unix sockets (`beside` makes such a node).  The Unix sockets are `sockets`.
    """

    data_dir: Path
    ports: dict[ServiceName, int]
    log_dir: Path | None = None
    base_env: dict[str, str] = field(default_factory=dict)
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    host: str = "127.0.0.1"
    tls: dict[ServiceName, ssl.SSLContext] = field(default_factory=dict)
    inherit_lucid: bool = False
    own_session: bool = False  # `up`: a Ctrl-C reaches only the parent, which stops the rest
    die_with_parent: bool = False  # a benchmark killed hard takes its services with it
    say: Callable[[str], None] | None = None  # where notices go (a service killed at stop)
    procs: dict[ServiceName, subprocess.Popen[bytes]] = field(default_factory=dict)
    runs: frozenset[ServiceName] = frozenset(SERVICES)
    peer: Node | None = field(default=None, repr=False)
    _sockets: dict[ServiceName, Path] | None = field(default=None, init=False, repr=False)

    @classmethod
    def in_dir(cls, root: Path, *, base_env: Mapping[str, str] | None = None,
               die_with_parent: bool = False) -> Node:
        """Return a node on free loopback ports with `root/data` and logs in `root/logs`."""
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / "logs").mkdir(parents=True, exist_ok=True)
        return cls(root / "data", free_ports(), root / "logs", base_env=dict(base_env or {}),
                   die_with_parent=die_with_parent)

    def beside(self, runs: Iterable[ServiceName], *, data_dir: Path | None = None,
               log_dir: Path | None = None) -> Node:
        """Return a node that runs `runs` on free ports and reaches this node's other
        services at their ports and Unix sockets: a second gateway or processor (or a
        second set of all three) on this data dir, or on `data_dir`.

        It starts from copies of this node's settings layers, host and TLS contexts;
        this node's `sockets` are fixed now, since the new node names them.
        """
        own = frozenset(runs)
        self._fix_sockets()
        return Node(data_dir or self.data_dir,
                    {name: free_port() if name in own else port
                     for name, port in self.ports.items()},
                    log_dir, base_env=dict(self.base_env),
                    extra_env={k: dict(v) for k, v in self.extra_env.items()},
                    host=self.host, tls=dict(self.tls), inherit_lucid=self.inherit_lucid,
                    die_with_parent=self.die_with_parent, say=self.say, runs=own, peer=self)

    # -- where things are ----------------------------------------------------------------------

    def url(self, name: ServiceName) -> str:
        """Return the base URL of service `name`."""
        scheme = "https" if name in self.tls else "http"
        return url(self.ports[name], connect_host(self.host), scheme)

    @property
    def urls(self) -> dict[ServiceName, str]:
        return {name: self.url(name) for name in SERVICES}

    def log_path(self, name: ServiceName) -> Path | None:
        return None if self.log_dir is None else self.log_dir / f"{name}.log"

    def log_tail(self, name: ServiceName, lines: int = 30) -> str:
        """Return the last lines of a service's log ("" without a log file)."""
        path = self.log_path(name)
        return "" if path is None else log_tail(path, lines)

    def env_of(self, name: ServiceName | Literal["*"]) -> dict[str, str]:
        """Return the environment service `name` starts with ("*": what they all share)."""
        env = {k: v for k, v in os.environ.items()
               if self.inherit_lucid or not k.startswith("LUCID_")}
        env.update({
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
            "LUCID_DATA_DIR": str(self.data_dir),
            "LUCID_HOST": self.host,
            "LUCID_STORAGE_PORT": str(self.ports["storage"]),
            "LUCID_PROCESSOR_PORT": str(self.ports["processor"]),
            "LUCID_API_PORT": str(self.ports["api"]),
            "LUCID_STORAGE_URL": self.url("storage"),
            "LUCID_PROCESSOR_URL": self.url("processor"),
        })
        env.update(self.socket_env(name))
        env.update(self.base_env)
        env.update(self.extra_env.get("*", {}))
        if name != "*":
            env.update(self.extra_env.get(name, {}))
        return env

    # -- Unix sockets ----------------------------------------------------------------------------

    @property
    def sockets(self) -> dict[ServiceName, Path]:
        """Return the Unix socket the processor and storage each listen on besides their
        port (cheaper than loopback TCP per byte); a service without one has TCP only.

        The rule, applied once, when the node first starts a service (or a node is
        made `beside` it), so a service restarted keeps its socket:

        - A service this node runs listens on `<data_dir>/run/<name>-<port>.sock`
          (named by port: nodes sharing a data dir keep their own sockets); a service
          of `peer` on the peer's socket.
        - No socket for a service that serves TLS (in `tls`, or any LUCID_TLS_*
          setting), for one whose LUCID_<NAME>_UDS a settings layer names (that one
          wins), or where the path is longer than a socket's address takes.

        Whether a client uses its upstream's socket is `socket_env`'s rule.
        """
        return dict(self._sockets) if self._sockets is not None else self._socket_rule()

    def _fix_sockets(self) -> None:
        if self._sockets is None:
            self._sockets = self._socket_rule()

    def _socket_rule(self) -> dict[ServiceName, Path]:
        layers = self._layers(None)
        if any(k.startswith("LUCID_TLS_") for layer in layers for k in layer):
            return {}
        found: dict[ServiceName, Path] = {}
        for name in ("processor", "storage"):
            if name not in self.runs:
                path = None if self.peer is None else self.peer.sockets.get(name)
            else:
                path = self.data_dir / "run" / f"{name}-{self.ports[name]}.sock"
            if (path is None or name in self.tls or len(os.fsencode(path)) > MAX_SOCKET_PATH
                    or any(f"LUCID_{name.upper()}_UDS" in layer for layer in layers)):
                continue
            found[name] = path
        return found

    def socket_env(self, name: ServiceName | Literal["*"]) -> dict[str, str]:
        """Return the LUCID_*_UDS settings service `name` starts with: every one of
        `sockets`, but its upstream's when its own settings name that upstream's URL (a
        test's proxy, another host), which it then reaches over TCP."""
        env = {f"LUCID_{svc.upper()}_UDS": str(path) for svc, path in self.sockets.items()}
        if name == "*" or (upstream := UPSTREAM.get(name)) is None:
            return env
        if any(f"LUCID_{upstream.upper()}_URL" in layer for layer in self._layers(name)):
            env.pop(f"LUCID_{upstream.upper()}_UDS", None)
        return env

    def _layers(self, name: ServiceName | None) -> list[Mapping[str, str]]:
        """Return the settings layers of service `name` (None: of every service)."""
        layers: list[Mapping[str, str]] = [self.base_env]
        layers += (self.extra_env.values() if name is None
                   else [self.extra_env.get("*", {}), self.extra_env.get(name, {})])
        if self.inherit_lucid:
            layers.append(os.environ)
        return layers

    def pids(self) -> dict[ServiceName, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    # -- starting ------------------------------------------------------------------------------

    def spawn(self, name: ServiceName) -> subprocess.Popen[bytes]:
        """Start `python -m sessions.<name>` without waiting for it (a service of this node)."""
        if name not in self.runs:
            raise ValueError(f"{name} is another node's service")
        self._fix_sockets()
        log = self.log_path(name)
        with contextlib.ExitStack() as stack:
            out = None if log is None else stack.enter_context(log.open("ab"))
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", f"sessions.{name}"], cwd=REPO,
                env=self.env_of(name), stdin=subprocess.DEVNULL, stdout=out,
                stderr=None if out is None else subprocess.STDOUT,
                start_new_session=self.own_session,
                preexec_fn=_die_with_parent if self.die_with_parent else None)  # noqa: PLW1509
        self.procs[name] = proc
        return proc

    def start(self, name: ServiceName, *, timeout: float = START_TIMEOUT,
              abort: Callable[[], bool] | None = None) -> None:
        """Start one service and return once its /health answers 200.

        Raises ServiceFailed if it exits or does not answer within `timeout`, and
        StartAborted as soon as `abort()` is true.
        """
        self.spawn(name)
        self.wait_ok(name, "/health", timeout=timeout, abort=abort)

    def start_all(self, *, timeout: float = START_TIMEOUT, ready: bool = True,
                  abort: Callable[[], bool] | None = None) -> None:
        """Start storage, the processor, then the gateway (those this node runs), each once
        its upstream answers; with `ready`, return once the gateway's /ready answers (the
        whole chain is up)."""
        for name in SERVICES:
            if name in self.runs:
                self.start(name, timeout=timeout, abort=abort)
        if ready:
            self.wait_ready("api", timeout=timeout)

    def wait_ready(self, name: ServiceName = "api", timeout: float = 20.0) -> None:
        """Return once `name`'s /ready answers 200 (for the gateway: the whole chain is up)."""
        self.wait_ok(name, "/ready", timeout=timeout)

    def wait_ok(self, name: ServiceName, path: str, *, timeout: float,
                abort: Callable[[], bool] | None = None, interval: float = 0.05) -> None:
        """Return once GET `path` of service `name` answers 200; raise ServiceFailed if the
        process exits first or time runs out, StartAborted once `abort()` is true."""
        proc, endpoint = self.procs[name], self.url(name) + path
        verify: ssl.SSLContext | bool = self.tls.get(name, True)
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if abort is not None and abort():
                raise StartAborted(f"{name}: stopped while starting")
            if proc.poll() is not None:
                raise ServiceFailed(self._failed(name, f"{name} exited with status "
                                                       f"{proc.returncode} while starting"))
            try:
                last = httpx.get(endpoint, timeout=2.0, trust_env=False, verify=verify)
                if last.status_code == 200:
                    return
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(interval)
        raise ServiceFailed(self._failed(name, f"{name} did not answer 200 at {endpoint} in "
                                               f"{timeout:.0f} s ({last!r})"))

    def _failed(self, name: ServiceName, message: str) -> str:
        tail = self.log_tail(name)
        return f"{message}:\n{tail}" if tail else message

    # -- running and stopping ------------------------------------------------------------------

    def exited(self) -> tuple[ServiceName, int] | None:
        """Return the first service that has exited and its status, or None."""
        for name, proc in self.procs.items():
            code = proc.poll()
            if code is not None:
                return name, code
        return None

    def check_alive(self) -> None:
        """Raise ServiceFailed if a service has exited."""
        dead = self.exited()
        if dead is not None:
            raise ServiceFailed(self._failed(dead[0], f"{dead[0]} died with {dead[1]}"))

    def kill(self, name: ServiceName) -> None:
        """SIGKILL one service, as a crash or the OOM killer would."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def restart(self, name: ServiceName) -> None:
        """Kill one service if it runs, then start it again and wait for its /health."""
        if name in self.procs:
            self.kill(name)
        self.start(name)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM every service, newest first, killing any still running after `grace`;
        remove the Unix socket files of those it stops (uvicorn leaves them)."""
        sockets = self.sockets
        for name in reversed(list(self.procs)):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                if self.say is not None:
                    self.say(f"{name} did not stop within {grace:.0f} s; killing it")
                proc.kill()
                proc.wait(timeout=grace)
            if (path := sockets.get(name)) is not None:
                path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def running(self, *, timeout: float = START_TIMEOUT) -> Iterator[Node]:
        """Run all three services (the chain ready) until the block ends."""
        try:
            self.start_all(timeout=timeout)
            yield self
        finally:
            self.stop()

