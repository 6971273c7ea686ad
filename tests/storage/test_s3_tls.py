"""Chunks on S3 over https: SeaweedFS serving S3 over TLS with a throwaway CA's certificate.

`weed mini -s3.port.https=P -s3.cert.file=... -s3.key.file=...` serves S3 over TLS on
its own port (tests/storage/s3_server.py starts it).  Storage trusts the CA through
`LUCID_S3_CA_FILE` (obstore's `root_certificate`, added to the system's CAs); a store
that trusts no CA that signed the server's certificate gets nothing through (503).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sessions.client.launcher import free_port
from sessions.common.ids import new_session_id
from sessions.common.secrets import ConfigError
from sessions.core import LEAF_PREFIX
from sessions.storage.config import Settings
from sessions.storage.errors import StorageUnavailable
from sessions.storage.s3store import S3ChunkStore, open_s3_store
from tests.storage.s3_server import S3Server, s3_server, weed_binary  # noqa: F401 - a fixture
from tests.tls_certs import Pki, make_pki

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("s3pki"))


@pytest.fixture(scope="module")
def tls_s3(tmp_path_factory: pytest.TempPathFactory, pki: Pki,
           s3_server: S3Server) -> Iterator[tuple[S3Server, str]]:  # noqa: F811 - skips with it
    """A SeaweedFS of this module serving S3 over https too; yields it and its https endpoint."""
    binary = weed_binary()
    assert binary is not None
    server = S3Server(tmp_path_factory.mktemp("s3tls"), binary)
    port = free_port()
    server.extra_args = [f"-s3.port.https={port}", f"-s3.cert.file={pki.cert}",
                         f"-s3.key.file={pki.key}"]
    server.start()
    try:
        yield server, f"https://127.0.0.1:{port}"
    finally:
        server.remove()


def _settings(tmp_path: Path, server: S3Server, endpoint: str,
              ca: Path | None) -> Settings:
    key, secret = server.write_credentials(tmp_path / "secrets")
    return Settings(mode="local", data_dir=tmp_path / "data", chunk_store_url=server.url(),
                    s3_endpoint=endpoint, s3_access_key_file=key, s3_secret_key_file=secret,
                    s3_ca_file=ca)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _round_trip(store: S3ChunkStore) -> tuple[bytes, bytes]:
    """Put one chunk; return its bytes and what reading it back gives."""
    sid, data = new_session_id(), os.urandom(100_000)
    leaf = hashlib.sha256(LEAF_PREFIX + data).digest()
    assert await store.put(sid, 0, _one(data), expected_leaf_hash=leaf,
                           max_bytes=1 << 20) == len(data)
    return data, await store.get(sid, 0, leaf_hash=leaf)


async def test_chunks_cross_https_to_an_object_store_the_ca_file_vouches_for(
        tmp_path: Path, tls_s3: tuple[S3Server, str], pki: Pki) -> None:
    server, endpoint = tls_s3
    location = _settings(tmp_path, server, endpoint, pki.ca).chunk_store_location()
    assert location is not None and location.root_certificate == pki.ca.read_text().strip()
    assert "BEGIN CERTIFICATE" not in repr(location)
    data, got = await _round_trip(open_s3_store(location))
    assert got == data


async def test_an_object_store_no_trusted_ca_signed_gets_nothing(
        tmp_path: Path, tls_s3: tuple[S3Server, str], pki: Pki,
        caplog: pytest.LogCaptureFixture) -> None:
    server, endpoint = tls_s3
    other = make_pki(tmp_path / "other", name="Another CA")
    for ca in (None, other.ca):  # the system's CAs alone; another CA besides them
        location = _settings(tmp_path / str(ca is None), server, endpoint,
                             ca).chunk_store_location()
        assert location is not None
        with pytest.raises(StorageUnavailable):
            await _round_trip(open_s3_store(location))
    assert server.secret_key not in caplog.text


def test_the_s3_ca_file_needs_an_https_endpoint_and_a_certificate(
        tmp_path: Path, pki: Pki, s3_server: S3Server) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match="LUCID_S3_CA_FILE is set, but LUCID_S3_ENDPOINT"):
        _settings(tmp_path, s3_server, s3_server.endpoint, pki.ca).chunk_store_location()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="LUCID_S3_CA_FILE .* holds no PEM CA certificate"):
        _settings(tmp_path, s3_server, "https://127.0.0.1:1", garbage).chunk_store_location()
