"""The e2e harness: the three services as real processes on free loopback ports.

`Cluster` is the launcher's `Node` (sessions/client/launcher.py, the one that
`lucid-sessions up` and the benchmarks use) with this suite's settings and checks.

One cluster serves the whole e2e session (starting three Python web services
costs seconds, and every test makes its own sessions, so they do not interfere).
Storage starts first and must answer /health before the processor starts, and the
processor before the gateway, so no two processes race to generate the same secret.

The cluster is parametrised over the metadata store: every test runs on SQLite, and
the modules in `BOTH_STORES` (upload, finalize, replay, verify, delete, list) run
on MongoDB too (storage on `LUCID_METADATA_URL`, the test server of `tests.mongo_server`).

Every process writes stdout and stderr to `<tmp>/logs/<service>.log`.  After each
test the new log lines are checked: no secret value and no "Traceback" may
appear (a failing test also gets those lines attached to its report).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sessions.client import launcher
from sessions.client.launcher import SERVICES, Node, ServiceName
from tests.e2e.support import CHUNK, MAX_UPLOAD, NODE_NAME, UPLOAD_TYPE, RawRequest
from tests.mongo_server import MongoServer, mongo_server  # noqa: F401 - a fixture

LOG_TAIL = 120  # lines of each service's log attached to a failing test's report
E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e `e2e`: each one runs against real processes."""
    for item in items:
        if E2E_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.e2e)

BOTH_STORES = frozenset({"test_cli", "test_upload", "test_delete", "test_list"})
"""Test modules that also run with storage on MongoDB (the rest run on SQLite only)."""


class Cluster(Node):
    """The launcher's Node on free ports under `root`, plus what tests need to poke at it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root / "data", launcher.free_ports(), root / "logs", base_env={
            "LUCID_CHUNK_SIZE": str(CHUNK), "LUCID_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
            "LUCID_NODE_NAME": NODE_NAME,
            # a processor killed mid-upload holds its writer lease until it lapses: keep that short
            "LUCID_LEASE_SECONDS": "3"})
        self.root = root
        self.data_dir.mkdir()
        self.log_dir = root / "logs"
        self.log_dir.mkdir()
        # (service, start, end) byte windows of a log where a traceback is expected:
        # see broken_stream
        self.allowed: list[tuple[str, int, int]] = []

    @property
    def env(self) -> dict[str, str]:
        return self.env_of("*")

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    @contextlib.contextmanager
    def serving(self) -> Iterator[Cluster]:
        """Run all three services until the block ends; then assert their logs are clean."""
        with self.running():
            yield self
        problems = self.log_problems()
        assert not problems, "\n\n".join(problems)

    def peak_rss_kib(self, name: ServiceName) -> int:
        """Return the service's peak resident set size (VmHWM) in KiB."""
        with open(f"/proc/{self.procs[name].pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise AssertionError(f"no VmHWM for {name}")

    # -- secrets, clients, files ----------------------------------------------------------------

    def secret(self, name: str) -> str:
        return (self.data_dir / "secrets" / name).read_text(encoding="utf-8").strip()

    @property
    def admin_token(self) -> str:
        return self.secret("admin.token")

    def auth_of(self, service: str) -> dict[str, str]:
        """Return the Authorization header an operator sends to a service: the admin token
        to the gateway, the service token to the internal services (everything there but
        /health and /ready needs it)."""
        token = self.admin_token if service == "api" else self.secret("service.token")
        return {"Authorization": f"Bearer {token}"}

    def client(self, *, auth: bool = True, token: str | None = None,
               base: str = "/v1") -> httpx.Client:
        """Return a gateway client at `base`: admin token by default, `token` if given, or none."""
        headers = {}
        if auth:
            headers["Authorization"] = f"Bearer {token or self.admin_token}"
        return httpx.Client(base_url=self.url("api") + base, headers=headers, trust_env=False,
                            timeout=httpx.Timeout(60.0, connect=5.0))

    def open_upload(self, sid: str, *, length: int, offset: int = 0, timeout: float = 30.0,
                    headers: dict[str, str] | None = None) -> RawRequest:
        """Open a hand-written PATCH of `length` body bytes at `offset`; nothing sent yet."""
        return RawRequest(self.ports["api"], "PATCH", f"/v1/sessions/{sid}/upload", {
            "Authorization": f"Bearer {self.admin_token}", "Content-Type": UPLOAD_TYPE,
            "Upload-Offset": str(offset), "Content-Length": str(length), **(headers or {})},
            timeout=timeout)

    def storage_internal(self) -> httpx.Client:
        """Return a client of storage's internal API (service token): to look behind the API."""
        return httpx.Client(base_url=self.url("storage") + "/internal/v1", trust_env=False,
                            headers={"Authorization": "Bearer " + self.secret("service.token")},
                            timeout=30.0)

    def session_dir(self, sid: str) -> Path:
        """Return where storage keeps a session's chunk files (sessions/storage/chunkstore.py)."""
        return self.data_dir / "storage" / "chunks" / sid[:2] / sid

    def chunk_file(self, sid: str, index: int) -> Path:
        return self.session_dir(sid) / f"{index:010d}.lcs"

    def secret_values(self) -> list[str]:
        """Return every secret string that must never appear in a log."""
        values = []
        for path in sorted((self.data_dir / "secrets").rglob("*")):
            if not path.is_file():  # e.g. kek/, the retention periods' keys (checked too)
                continue
            text = path.read_text(encoding="utf-8").strip()
            values.append(text)
            if path.name == "master.key":
                values.append(text.upper())
            if path.name == "signing.key":
                values.append(text.rsplit("+", 1)[-1])  # the key material alone
        return [v for v in values if len(v) >= 16]

    # -- logs -----------------------------------------------------------------------------------

    def log_sizes(self) -> dict[str, int]:
        return {name: self.log_path(name).stat().st_size if self.log_path(name).exists() else 0
                for name in SERVICES}

    def log_text(self, name: str, start: int = 0, end: int | None = None, *,
                 skip_allowed: bool = False) -> str:
        path = self.log_path(name)
        if not path.exists():
            return ""
        data = path.read_bytes()[start:end]
        if skip_allowed:
            # Blank out the windows where a traceback is expected, keeping offsets intact.
            buf = bytearray(data)
            for svc, lo, hi in self.allowed:
                if svc == name:
                    a, b = max(lo - start, 0), min(hi - start, len(buf))
                    if a < b:
                        buf[a:b] = b" " * (b - a)
            data = bytes(buf)
        return data.decode("utf-8", errors="replace")

    def log_tail(self, name: str, start: int = 0) -> str:
        lines = self.log_text(name, start).splitlines()
        return "\n".join(lines[-LOG_TAIL:])

    @contextlib.contextmanager
    def broken_stream(self, *names: str) -> Iterator[None]:
        """Mark a window in which `names` may log a traceback.

        The only way an ASGI app can cut a response whose headers are already out
        (a replay that meets a tampered chunk mid-stream) is to let the exception
        reach the server, and uvicorn logs that with its traceback.  That is the
        designed behaviour, so it is tolerated inside this window and nowhere else.
        """
        before = self.log_sizes()
        try:
            yield
        finally:
            time.sleep(0.2)  # the servers log the cut just after the client sees it
            after = self.log_sizes()
            self.allowed.extend((n, before[n], after[n]) for n in names)

    def log_problems(self, start: dict[str, int] | None = None) -> list[str]:
        """Return each secret or unexpected traceback in the logs since `start`."""
        secrets = self.secret_values() if (self.data_dir / "secrets").exists() else []
        problems = []
        for name in SERVICES:
            text = self.log_text(name, (start or {}).get(name, 0), skip_allowed=True)
            for value in secrets:
                if value in text:
                    problems.append(f"{name} log contains a secret (…{value[-4:]})")
            if "Traceback" in text:
                at = text.index("Traceback")
                problems.append(f"{name} log has a traceback:\n{text[max(0, at - 300):at + 3000]}")
        return problems


_CLUSTER: Cluster | None = None
_STARTS = pytest.StashKey[dict[str, int]]()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every cluster test on SQLite, and those of BOTH_STORES on MongoDB as well."""
    if "store" in metafunc.fixturenames:
        module = metafunc.module.__name__.rsplit(".", 1)[-1]
        stores = ["sqlite", "mongodb"] if module in BOTH_STORES else ["sqlite"]
        metafunc.parametrize("store", stores, indirect=True, scope="session")


@pytest.fixture(scope="session")
def store(request: pytest.FixtureRequest) -> str:
    """The metadata store the cluster's storage runs on: "sqlite" or "mongodb"."""
    name: str = request.param
    return name


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, store: str,
            request: pytest.FixtureRequest) -> Iterator[Cluster]:
    global _CLUSTER
    c = Cluster(tmp_path_factory.mktemp(f"e2e-{store}"))
    if store == "mongodb":
        server: MongoServer = request.getfixturevalue("mongo_server")
        c.extra_env["storage"] = {"LUCID_METADATA_URL": server.url()}
    try:
        c.start_all()
        _CLUSTER = c
        yield c
    finally:
        _CLUSTER = None
        c.stop()
    problems = c.log_problems()
    assert not problems, "\n\n".join(problems)


@pytest.fixture(autouse=True)
def _logs_clean(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test: its log lines carry no secret and no unexpected traceback."""
    start = cluster.log_sizes()
    request.node.stash[_STARTS] = start
    yield
    time.sleep(0.05)
    problems = cluster.log_problems(start)
    assert not problems, "\n\n".join(problems)


@pytest.fixture(scope="session")
def api(cluster: Cluster) -> Iterator[httpx.Client]:
    """A gateway client at /v1 with the admin token."""
    with cluster.client() as client:
        yield client


@pytest.fixture(scope="session")
def node(api: httpx.Client) -> dict[str, str]:
    r = httpx.get(api.base_url.join("node"), trust_env=False)  # no token: /node is public
    assert r.status_code == 200, r.text
    body: dict[str, str] = r.json()
    return body


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    """Attach the services' log lines of a failing test to its report."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    start = item.stash.get(_STARTS, None)
    if report.failed and _CLUSTER is not None and start is not None:
        for name in SERVICES:
            tail = _CLUSTER.log_tail(name, start[name])
            if tail:
                report.sections.append((f"{name} log during this test", tail))


@pytest.fixture
def restartable(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster, with every service guaranteed up again after the test."""
    yield cluster
    for name in SERVICES:
        if name not in cluster.procs:
            cluster.start(name)
    cluster.wait_ready("api")
