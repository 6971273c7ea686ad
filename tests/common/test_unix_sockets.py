"""Unix sockets between co-located services: listening, reaching, settings and the launcher.

Real sockets throughout: uvicorn serving an app on a TCP port and a Unix socket at once
(as `serve` runs it), the wire transport and httpx's own reaching it through the socket,
the settings' refusals, and the launcher's wiring, including a whole node whose two
internal hops run over Unix sockets while a session is uploaded and replayed.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from sessions.api import config as api_config
from sessions.client.launcher import Node
from sessions.common._wire import WireTransport
from sessions.common.httpclient import service_transport
from sessions.common.secrets import ConfigError
from sessions.common.serve import MAX_SOCKET_PATH, UNIX_SEND_BUFFER, bind_unix, http_protocol
from sessions.common.settings import Transport, load
from sessions.processor import config as processor_config
from sessions.storage import config as storage_config
from tests.uvicorn_server import serving

MiB = 1 << 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer '<how it came> <size> <sha256>' of the body, then the body itself again."""
    if scope["type"] != "http":
        return
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    how = b"unix" if scope.get("client") is None else b"tcp"  # uvicorn: no peer address
    answer = b"%s %d %s\n" % (how, len(body), hashlib.sha256(body).hexdigest().encode()) + body
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


@asynccontextmanager
async def _serving(path: Path) -> AsyncIterator[int]:
    """uvicorn on a free TCP port and on the Unix socket `path`, as `serve` starts it."""
    config = uvicorn.Config(_app, host="127.0.0.1", port=0, log_level="warning",
                            lifespan="off", http=http_protocol(), loop="asyncio")
    async with serving(config, [config.bind_socket(), bind_unix(path)]) as port:
        yield port


@pytest.fixture
def short_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory whose socket paths fit: pytest's tmp_path can be too long."""
    if len(str(tmp_path)) < 60:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="lucid-uds-") as name:
        yield Path(name)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", [Transport.WIRE, Transport.HTTPX])
async def test_both_transports_reach_the_service_through_its_socket(kind: Transport,
                                                                    short_dir: Path) -> None:
    path = short_dir / "run" / "svc.sock"
    body = bytes(range(256)) * (24 * MiB // 256)  # several send buffers' worth
    async with _serving(path) as port:
        transport = service_transport(kind, max_connections=4, uds=str(path))
        async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{port}",
                                     timeout=30) as client:
            for _ in range(2):  # the second reuses the pooled connection
                resp = await client.put("/x", content=body)
                head, echoed = resp.content.split(b"\n", 1)
                digest = hashlib.sha256(body).hexdigest().encode()
                assert head == b"unix %d %s" % (len(body), digest)
                assert echoed == body
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as tcp:
            assert (await tcp.put("/x", content=b"abc")).content.startswith(b"tcp 3 ")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the file stays; the next bind replaces it


@pytest.mark.anyio
async def test_the_wire_transport_widens_the_unix_send_buffer(short_dir: Path) -> None:
    path = short_dir / "w.sock"
    async with _serving(path):
        wire = WireTransport(uds=str(path))
        async with httpx.AsyncClient(transport=wire, base_url="http://svc") as client:
            assert (await client.get("/")).status_code == 200
            (conn,) = [w for idle in wire._idle.values() for w in idle]
            assert conn.transport is not None
            sock = conn.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) > 1 << 20
    assert UNIX_SEND_BUFFER >= 1 << 20


@pytest.mark.anyio
async def test_a_unix_socket_upstream_is_plain_http_and_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plain http"):
        WireTransport(uds="/x.sock", tls=ssl.create_default_context())
    async with httpx.AsyncClient(transport=WireTransport(uds=str(tmp_path / "none.sock")),
                                 base_url="http://svc") as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("https://svc/")
        with pytest.raises(httpx.ConnectError, match="Unix socket"):
            await client.get("/")


def test_bind_replaces_a_stale_socket_and_refuses_any_other_file(short_dir: Path) -> None:
    base = short_dir
    path = base / "deep" / "s.sock"
    first = bind_unix(path)
    first.listen()
    with pytest.raises(OSError, match="another process listens there"):
        bind_unix(path)  # a live service keeps its socket
    first.close()  # a killed service leaves its socket file behind
    second = bind_unix(path)
    second.close()
    plain = base / "plain"
    plain.write_text("mine")
    with pytest.raises(FileExistsError):
        bind_unix(plain)
    assert plain.read_text() == "mine"


def test_settings_refuse_sockets_that_cannot_work(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("LUCID_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LUCID_PROCESSOR_UDS", "/run/" + "x" * MAX_SOCKET_PATH + ".sock")
    with pytest.raises(ConfigError, match="longer than 107"):
        load(processor_config.Settings).check_sockets()
    monkeypatch.setenv("LUCID_PROCESSOR_UDS", "/run/lucid/processor.sock")
    monkeypatch.setenv("LUCID_PROCESSOR_URL", "https://proc.example:8085")
    with pytest.raises(ConfigError, match="plain http"):
        load(api_config.Settings).check_sockets()
    monkeypatch.setenv("LUCID_PROCESSOR_URL", "http://127.0.0.1:8085")
    api = load(api_config.Settings)
    api.check_sockets()
    assert api.upstream_uds == Path("/run/lucid/processor.sock") and api.listen_uds is None
    monkeypatch.setenv("LUCID_STORAGE_UDS", "/run/lucid/storage.sock")
    processor = load(processor_config.Settings)
    assert processor.listen_uds == Path("/run/lucid/processor.sock")
    assert processor.upstream_uds == Path("/run/lucid/storage.sock")
    storage = load(storage_config.Settings)
    assert storage.listen_uds == Path("/run/lucid/storage.sock") and storage.upstream_uds is None
    monkeypatch.setenv("LUCID_TLS_CERT_FILE", str(tmp_path / "cert.pem"))
    with pytest.raises(ConfigError, match="serve TLS"):
        load(storage_config.Settings).check_sockets()


def test_the_launcher_wires_sockets_unless_a_layer_says_otherwise(short_dir: Path) -> None:
    ports = {"storage": 1001, "processor": 1002, "api": 1003}
    base = short_dir
    wired = Node(base, ports).env_of("api")
    assert wired["LUCID_PROCESSOR_UDS"] == str(base / "run" / "processor-1002.sock")
    assert wired["LUCID_STORAGE_UDS"] == str(base / "run" / "storage-1001.sock")
    second = Node(base, {**ports, "processor": 1004})  # another processor on this data dir
    assert second.env_of("api")["LUCID_PROCESSOR_UDS"] == str(base / "run" / "processor-1004.sock")
    proxied = Node(base, ports, extra_env={"api": {"LUCID_PROCESSOR_URL": "http://127.0.0.1:9"}})
    assert "LUCID_PROCESSOR_UDS" not in proxied.env_of("api")  # the gateway: TCP to its URL
    assert proxied.env_of("processor")["LUCID_PROCESSOR_UDS"] == wired["LUCID_PROCESSOR_UDS"]
    assert Node(base, ports, base_env={"LUCID_TLS_CA_FILE": "/ca.pem"}).sockets == {}
    long_dir = base / ("d" * MAX_SOCKET_PATH)
    assert Node(long_dir, ports).sockets == {}


def test_a_node_moves_a_session_through_its_unix_sockets(short_dir: Path) -> None:
    node = Node.in_dir(short_dir / "n", base_env={"LUCID_LOG_LEVEL": "warning"})
    assert set(node.sockets) == {"processor", "storage"}
    node.start_all()
    try:
        token = (node.data_dir / "secrets" / "admin.token").read_text().strip()
        data = bytes(range(251)) * (3 * MiB // 251)
        with httpx.Client(base_url=node.url("api") + "/v1", timeout=60,
                          headers={"Authorization": f"Bearer {token}"}) as api:
            sid = api.post("/sessions", json={"labels": {}}).json()["id"]
            resp = api.patch(f"/sessions/{sid}/upload", content=data,
                             headers={"Upload-Offset": "0",
                                      "Content-Type": "application/offset+octet-stream"})
            assert resp.status_code == 200, resp.text
            assert api.post(f"/sessions/{sid}/finalize").status_code == 200
            assert api.get(f"/sessions/{sid}/replay").content == data
            # pooled connections stay open a few seconds: the kernel lists each accepted one
            # under its socket's path, besides the listening socket itself
            table = Path("/proc/net/unix").read_text()
            for name in ("processor", "storage"):
                sock = node.data_dir / "run" / f"{name}-{node.ports[name]}.sock"
                assert stat.S_ISSOCK(sock.stat().st_mode)
                assert table.count(f" {sock}\n") >= 2, name
    finally:
        node.stop()
    assert list((node.data_dir / "run").iterdir()) == []  # stop removes what uvicorn leaves
