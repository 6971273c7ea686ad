"""TLS for the service hops: the settings, and both transports against a real HTTPS server.

The server is uvicorn with a throwaway CA's certificate (tests/tls_certs.py), started
in-process on a loopback port, as `sessions.common.serve` starts each service; the
clients are the services' own (`service_client` over the wire transport and over
httpx's), verifying with the context the settings build.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from sessions.api.config import Settings as ApiSettings
from sessions.client.launcher import REPO
from sessions.common.httpclient import service_client
from sessions.common.secrets import ConfigError
from sessions.common.settings import Transport
from sessions.common.tls import client_context, server_files
from sessions.processor.config import Settings as ProcessorSettings
from sessions.storage.config import Settings as StorageSettings
from tests.tls_certs import Pki, make_pki, write_encrypted_key
from tests.uvicorn_server import serving

pytestmark = pytest.mark.anyio

TOKEN = "t" * 40
KINDS = [Transport.WIRE, Transport.HTTPX]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another CA: its certificates are not the server's."""
    return make_pki(tmp_path_factory.mktemp("other"), name="Another CA")


# -- settings ----------------------------------------------------------------------------------


def test_server_files_are_both_or_neither_and_a_matching_pair(pki: Pki, other: Pki,
                                                              tmp_path: Path) -> None:
    assert server_files(None, None) == (None, None)
    assert server_files(pki.cert, pki.key) == (pki.cert, pki.key)
    with pytest.raises(ConfigError, match="both"):
        server_files(pki.cert, None)
    with pytest.raises(ConfigError, match="TLS key: file .* does not exist"):
        server_files(pki.cert, tmp_path / "absent.pem")
    with pytest.raises(ConfigError, match="unencrypted private key") as mismatch:
        server_files(pki.cert, other.key)
    encrypted = write_encrypted_key(pki, tmp_path / "encrypted.pem")
    with pytest.raises(ConfigError, match="unencrypted private key") as locked:
        server_files(pki.cert, encrypted)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    with pytest.raises(ConfigError, match="unencrypted private key"):
        server_files(pki.cert, garbage)
    with pytest.raises(ConfigError, match="LUCID_TLS_CLIENT_CA_FILE needs"):
        server_files(None, None, client_ca=pki.ca)
    for caught in (mismatch, locked):
        assert "PRIVATE KEY" not in str(caught.value)


def test_a_client_context_verifies_chain_and_name_and_names_a_bad_ca_file(
        pki: Pki, tmp_path: Path) -> None:
    context = client_context(pki.ca)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.verify_flags & ssl.VERIFY_X509_STRICT  # as Python 3.13, the images' Python
    assert client_context(None).cert_store_stats()["x509_ca"] >= 0  # the system's CAs
    with pytest.raises(ConfigError, match="LUCID_TLS_CA_FILE: file .* does not exist"):
        client_context(tmp_path / "absent.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("no certificate here\n")
    with pytest.raises(ConfigError, match="LUCID_TLS_CA_FILE .* holds no PEM CA certificate"):
        client_context(garbage)
    with pytest.raises(ConfigError, match="both LUCID_TLS_CLIENT_CERT_FILE"):
        client_context(pki.ca, cert=pki.cert)


@pytest.mark.parametrize(("settings", "variable"), [(ApiSettings, "processor_url"),
                                                    (ProcessorSettings, "storage_url")])
def test_the_upstream_context_follows_the_upstream_scheme(
        pki: Pki, settings: type[ApiSettings | ProcessorSettings], variable: str) -> None:
    plain = settings(**{variable: "http://10.0.0.7:8085"})  # type: ignore[arg-type]
    assert plain.upstream_tls() is None
    system = settings(**{variable: "https://10.0.0.7:8085"})  # type: ignore[arg-type]
    context = system.upstream_tls()
    assert context is not None and context.check_hostname
    assert context.verify_mode is ssl.CERT_REQUIRED
    pinned = settings(**{variable: "https://10.0.0.7:8085", "tls_ca_file": pki.ca})  # type: ignore[arg-type]
    assert pinned.upstream_tls() is not None
    unused = settings(**{variable: "http://10.0.0.7:8085", "tls_ca_file": pki.ca})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="LUCID_TLS_CA_FILE set, but the upstream .* plain http"):
        unused.preflight()


def test_every_service_reads_the_tls_files(pki: Pki, tmp_path: Path) -> None:
    for settings in (ApiSettings, ProcessorSettings, StorageSettings):
        assert settings(tls_cert_file=pki.cert, tls_key_file=pki.key).tls_files() == \
            (pki.cert, pki.key)
        with pytest.raises(ConfigError, match="both"):
            settings(tls_key_file=pki.key).tls_files()


# -- a real HTTPS server -------------------------------------------------------------------------


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer with the body's size and SHA-256, and whether the peer showed a certificate."""
    if scope["type"] != "http":
        return
    digest, size = hashlib.sha256(), 0
    while True:
        message = await receive()
        digest.update(message.get("body", b""))
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    answer = f'{{"size": {size}, "sha256": "{digest.hexdigest()}"}}'.encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


@asynccontextmanager
async def _server(pki: Pki | None, *, client_ca: Path | None = None) -> AsyncIterator[int]:
    """Run uvicorn on a loopback port (HTTPS with pki's certificate, else plain HTTP)."""
    tls = {} if pki is None else {
        "ssl_certfile": str(pki.cert), "ssl_keyfile": str(pki.key),
        "ssl_ca_certs": None if client_ca is None else str(client_ca),
        "ssl_cert_reqs": ssl.CERT_NONE if client_ca is None else ssl.CERT_REQUIRED}
    config = uvicorn.Config(_echo, host="127.0.0.1", port=0, log_level="critical",
                            lifespan="off", http="httptools", loop="asyncio", **tls)  # type: ignore[arg-type]
    async with serving(config) as port:
        yield port


async def _body() -> AsyncIterator[bytes]:
    for i in range(8):
        yield bytes([i]) * (1 << 20)


@pytest.mark.parametrize("kind", KINDS)
async def test_both_transports_carry_bodies_over_verified_tls(pki: Pki, kind: Transport) -> None:
    data = b"".join(bytes([i]) * (1 << 20) for i in range(8))
    async with _server(pki) as port, service_client(
            f"https://127.0.0.1:{port}", TOKEN, timeout=httpx.Timeout(30.0), kind=kind,
            tls=client_context(pki.ca)) as client:
        sent = await client.put("/chunk", content=_body(),
                                headers={"Content-Length": str(len(data))})
        again = await client.post("/small", content=b"x")
        by_name = await client.get(f"https://localhost:{port}/")
    assert sent.json() == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert again.json()["size"] == 1 and by_name.status_code == 200


@pytest.mark.parametrize("kind", KINDS)
async def test_a_server_no_trusted_ca_signed_is_refused(pki: Pki, other: Pki,
                                                        kind: Transport) -> None:
    for trust in (client_context(other.ca), client_context(None)):
        async with _server(pki) as port, service_client(
                f"https://127.0.0.1:{port}", TOKEN, timeout=httpx.Timeout(10.0), kind=kind,
                tls=trust) as client:
            with pytest.raises(httpx.ConnectError, match="(?i)certificate verif"):
                await client.get("/")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_certificate_for_another_name_is_refused(tmp_path: Path, kind: Transport) -> None:
    elsewhere = make_pki(tmp_path, hosts=("storage.example",))
    async with _server(elsewhere) as port, service_client(
            f"https://127.0.0.1:{port}", TOKEN, timeout=httpx.Timeout(10.0), kind=kind,
            tls=client_context(elsewhere.ca)) as client:
        with pytest.raises(httpx.ConnectError, match="(?i)mismatch"):
            await client.get("/")


@pytest.mark.parametrize("kind", KINDS)
async def test_plain_http_to_an_https_port_and_back_fail_cleanly(pki: Pki,
                                                                 kind: Transport) -> None:
    async with _server(pki) as port, service_client(
            f"http://127.0.0.1:{port}", TOKEN, timeout=httpx.Timeout(10.0), kind=kind) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get("/")
    async with _server(None) as port, service_client(
            f"https://127.0.0.1:{port}", TOKEN, timeout=httpx.Timeout(10.0), kind=kind,
            tls=client_context(pki.ca)) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/")


@pytest.mark.parametrize("kind", KINDS)
async def test_mutual_tls_refuses_a_client_without_a_certificate(pki: Pki, other: Pki,
                                                                 kind: Transport) -> None:
    async with _server(pki, client_ca=pki.ca) as port:
        url = f"https://127.0.0.1:{port}"
        async with service_client(url, TOKEN, timeout=httpx.Timeout(10.0), kind=kind,
                                  tls=client_context(pki.ca, cert=pki.cert,
                                                     key=pki.key)) as client:
            assert (await client.get("/")).status_code == 200
        for cert in (None, other):
            tls = client_context(pki.ca) if cert is None else client_context(
                pki.ca, cert=cert.cert, key=cert.key)
            async with service_client(url, TOKEN, timeout=httpx.Timeout(10.0), kind=kind,
                                      tls=tls) as client:
                with pytest.raises(httpx.HTTPError):  # TLS 1.3: refused after the handshake
                    await client.get("/")


@pytest.mark.parametrize(("service", "env", "needle"), [
    ("storage", {"LUCID_TLS_KEY_FILE": "{other.key}"}, "LUCID_TLS_KEY_FILE"),
    ("processor", {"LUCID_TLS_CA_FILE": "{pki.ca}"}, "LUCID_TLS_CA_FILE set, but the upstream"),
    ("api", {"LUCID_PROCESSOR_URL": "https://127.0.0.1:1", "LUCID_TLS_CA_FILE": "{garbage}"},
     "holds no PEM CA certificate"),
])
def test_a_bad_tls_setting_stops_a_service_at_start(
        tmp_path: Path, pki: Pki, other: Pki, service: str, env: dict[str, str],
        needle: str) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("nothing\n")
    values = {"LUCID_TLS_CERT_FILE": str(pki.cert), "LUCID_TLS_KEY_FILE": str(pki.key)}
    values |= {k: v.format(pki=pki, other=other, garbage=garbage) for k, v in env.items()}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LUCID_")}
    result = subprocess.run(  # noqa: S603 - our interpreter and module
        [sys.executable, "-m", f"sessions.{service}"], cwd=REPO, timeout=60, check=False,
        env={**clean, "LUCID_DATA_DIR": str(tmp_path / "data"), "LUCID_API_PORT": "1",
             "LUCID_PROCESSOR_PORT": "1", "LUCID_STORAGE_PORT": "1", **values},
        capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {service}: ") and needle in last, result.stderr
    assert "Traceback" not in result.stderr and "PRIVATE KEY" not in result.stderr
