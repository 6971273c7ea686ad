"""A second node beside a test's Cluster, for the tests that run two of a service.

`beside` starts node B (the launcher's `Node.beside`): the services it `runs` on free
ports of its own, on the cluster's data dir (or, with `own_data`, one of its own, as a
second host would have), reaching the cluster's other services at their ports and Unix
sockets.  Its logs go to `<root>/logs`; `tracebacks` reads them after the test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import httpx

from sessions.client.launcher import SERVICES, Node, ServiceName
from tests.e2e.conftest import Cluster


@contextlib.contextmanager
def beside(a: Cluster, root: Path, runs: Iterable[ServiceName], *, own_data: bool = False,
           env: Mapping[str, str] | None = None) -> Iterator[Node]:
    """Start node B beside `a` (whose upstreams of `runs` answer), with `env` laid over the
    settings it copies from `a`; yield it once its services answer, then stop it."""
    own = frozenset(runs)
    (root / "logs").mkdir(parents=True)
    if own_data:
        (root / "data").mkdir()
    b = a.beside(own, data_dir=root / "data" if own_data else None, log_dir=root / "logs")
    b.base_env.update(env or {})
    try:
        b.start_all(ready="api" in own)
        yield b
    finally:
        b.stop()


def tracebacks(node: Node, label: str) -> list[str]:
    """Return a problem for each of the node's service logs that holds a traceback."""
    problems = []
    for name in SERVICES:
        path = node.log_path(name)
        text = path.read_text(encoding="utf-8") if path is not None and path.exists() else ""
        if "Traceback" in text:
            problems.append(f"{label}'s {name} log has a traceback:\n{text[-3000:]}")
    return problems


def gateway(node: Node, admin: str) -> httpx.Client:
    """Return a client of the node's gateway at /v1 with the admin token."""
    return _client(node.url("api") + "/v1", admin)


def processor(node: Node, token: str) -> httpx.Client:
    """Return a client of the node's processor's internal API with the service token."""
    return _client(node.url("processor") + "/internal/v1", token)


def _client(base_url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, trust_env=False,
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=httpx.Timeout(60.0, connect=5.0))
