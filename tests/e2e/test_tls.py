"""The three services on loopback, every hop over verified TLS, the CLI uploading and replaying.

A throwaway CA (tests/tls_certs.py) signs one certificate for 127.0.0.1 and localhost;
each service serves HTTPS with it (`LUCID_TLS_CERT_FILE`, `LUCID_TLS_KEY_FILE`), the
gateway and the processor verify their upstream against the CA (`LUCID_TLS_CA_FILE`),
and the processor and storage also ask their callers for a client certificate (mutual
TLS: `LUCID_TLS_CLIENT_CA_FILE`, `LUCID_TLS_CLIENT_CERT_FILE`/`_KEY_FILE`).  The chain
runs once per client transport (wire, httpx).  Another CA's certificate is refused by
the CLI and by a service hop, each with a clear message and no traceback, and the key
never reaches a log.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from pymongo import MongoClient

from sessions.client.launcher import REPO, SERVICES, Node, free_ports
from sessions.common.tls import client_context
from tests.e2e.conftest import Cluster
from tests.e2e.support import ID_RE, MIB, session_bytes
from tests.mongo_server import MongoServer
from tests.tls_certs import Pki, make_pki

pytestmark = pytest.mark.e2e

TIMEOUT = 90


def _tls_env(pki: Pki) -> dict[str, str]:
    return {"LUCID_TLS_CERT_FILE": str(pki.cert), "LUCID_TLS_KEY_FILE": str(pki.key),
            "LUCID_TLS_CA_FILE": str(pki.ca)}


def _mutual(node: Node, pki: Pki) -> None:
    """Make the processor and storage accept only callers with a certificate pki's CA signed."""
    for name in ("processor", "storage"):
        node.extra_env.setdefault(name, {})["LUCID_TLS_CLIENT_CA_FILE"] = str(pki.ca)
    for name in ("api", "processor"):
        node.extra_env.setdefault(name, {}).update({
            "LUCID_TLS_CLIENT_CERT_FILE": str(pki.cert), "LUCID_TLS_CLIENT_KEY_FILE": str(pki.key)})
    trusted = client_context(pki.ca, cert=pki.cert, key=pki.key)
    node.tls = {name: trusted for name in SERVICES}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("other"), name="Another CA")


def _tls_url(server: MongoServer, ca: Path, *, database: str | None = None) -> str:
    """Return a metadata URL of a fresh database that reaches the server over TLS, trusting ca."""
    return server.url(database) + "&tls=true&tlsCAFile=" + quote(str(ca), safe="/")


@pytest.fixture(scope="module")
def tls_mongo(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[MongoServer]:
    """SecantusDB on loopback serving TLS only, with pki's certificate."""
    server = MongoServer(tmp_path_factory.mktemp("mongo-tls"))
    server.external = None  # always this server: the point is its TLS
    server.extra_args = ["--tls-cert-file", str(pki.cert), "--tls-key-file", str(pki.key)]
    server.client_options = {"tls": True, "tlsCAFile": str(pki.ca)}
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module", params=["wire", "httpx"])
def tls_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                pki: Pki, tls_mongo: MongoServer) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp(f"tls-{request.param}"))
    cluster.base_env |= {**_tls_env(pki), "LUCID_HTTP_TRANSPORT": request.param}
    cluster.extra_env.setdefault("storage", {})["LUCID_METADATA_URL"] = \
        _tls_url(tls_mongo, pki.ca, database=f"lucid_tls_{request.param}")
    _mutual(cluster, pki)
    with cluster.serving():
        assert all(cluster.url(name).startswith("https://") for name in SERVICES)
        yield cluster
    for name in SERVICES:
        assert pki.key_text.strip() not in cluster.log_text(name)
        assert "PRIVATE KEY" not in cluster.log_text(name)


def cli(cluster: Node, workdir: Path, *args: str, url: str | None = None,
        cacert: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m sessions.client ARGS` against the gateway; no traceback may show."""
    env = {k: v for k, v in cluster.env_of("*").items()
           if not k.startswith("LUCID_") and k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    env |= {"LUCID_URL": url or cluster.url("api"), "XDG_CACHE_HOME": str(workdir / "cache"),
            "LUCID_TOKEN_FILE": str(cluster.data_dir / "secrets" / "admin.token")}
    if cacert is not None:
        env["LUCID_CACERT"] = str(cacert)
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "sessions.client", *args], cwd=workdir, env=env, text=True,
        capture_output=True, timeout=TIMEOUT, check=False)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def test_the_cli_uploads_and_replays_through_three_https_services(
        tls_cluster: Cluster, pki: Pki, tmp_path: Path) -> None:
    data = session_bytes(2 * MIB + 777, seed=170)
    source = tmp_path / "session.rec"
    source.write_bytes(data)
    up = cli(tls_cluster, tmp_path, "upload", str(source), cacert=pki.ca)
    assert up.returncode == 0, up.stderr
    sid = up.stdout.strip().splitlines()[-1]
    assert ID_RE.fullmatch(sid), up.stdout
    out = tmp_path / "replayed.rec"
    replay = cli(tls_cluster, tmp_path, "replay", sid, "-o", str(out), cacert=pki.ca)
    assert replay.returncode == 0, replay.stderr
    assert out.read_bytes() == data
    verified = cli(tls_cluster, tmp_path, "verify", sid, cacert=pki.ca)
    assert verified.returncode == 0 and "OK" in verified.stdout, verified.stderr
    metadata_url = tls_cluster.env_of("storage")["LUCID_METADATA_URL"]
    with MongoClient(metadata_url, serverSelectionTimeoutMS=5000) as mongo:
        assert mongo.get_default_database()["sessions"].find_one({"_id": sid}) is not None


@pytest.mark.parametrize("trust", ["another CA", "no TLS"])
def test_storage_is_not_ready_on_a_mongodb_it_cannot_trust(
        tmp_path: Path, pki: Pki, other: Pki, tls_mongo: MongoServer, trust: str) -> None:
    url = (_tls_url(tls_mongo, other.ca) if trust == "another CA"
           else tls_mongo.url())
    node = Node(tmp_path / "data", free_ports(), tmp_path,
                extra_env={"storage": {"LUCID_METADATA_URL": url}})
    node.data_dir.mkdir()
    try:
        node.start("storage")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # past "not connected yet": the attempt's verdict
            answer = httpx.get(node.url("storage") + "/ready", trust_env=False, timeout=30.0)
            assert answer.status_code == 503, answer.text
            if "unreachable or refused" in answer.json()["detail"]:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"storage never gave up on the untrusted database: {answer.text}")
    finally:
        node.stop()
    log = (tmp_path / "storage.log").read_text()
    assert "Traceback" not in log and pki.key_text.strip() not in log


def test_the_cli_refuses_a_gateway_another_ca_signed(tls_cluster: Cluster, other: Pki,
                                                     tmp_path: Path) -> None:
    refused = cli(tls_cluster, tmp_path, "ls", cacert=other.ca)
    assert refused.returncode == 1
    assert "error: tls_untrusted:" in refused.stderr
    assert "certificate verification failed" in refused.stderr


def test_plain_http_to_the_https_gateway_fails_cleanly(tls_cluster: Cluster,
                                                       tmp_path: Path) -> None:
    plain = tls_cluster.url("api").replace("https://", "http://")
    result = cli(tls_cluster, tmp_path, "ls", url=plain)
    assert result.returncode != 0 and result.stderr.startswith("error: "), result.stderr


def test_the_internal_services_refuse_a_caller_without_a_client_certificate(
        tls_cluster: Cluster, pki: Pki) -> None:
    headers = tls_cluster.auth_of("storage")
    for name in ("processor", "storage"):
        with pytest.raises(httpx.HTTPError):
            httpx.get(tls_cluster.url(name) + "/health", verify=client_context(pki.ca),
                      headers=headers, trust_env=False, timeout=10.0)
        shown = httpx.get(tls_cluster.url(name) + "/health", verify=tls_cluster.tls[name],
                          trust_env=False, timeout=10.0)
        assert shown.status_code == 200


def test_a_hop_to_a_server_another_ca_signed_is_refused_and_logged(
        tmp_path: Path, pki: Pki, other: Pki) -> None:
    """The processor trusts another CA than storage's: nothing flows, the log says why."""
    node = Node(tmp_path / "data", free_ports(), tmp_path, base_env=_tls_env(pki),
                extra_env={"processor": {"LUCID_TLS_CA_FILE": str(other.ca)}},
                tls={name: client_context(pki.ca) for name in SERVICES})
    node.data_dir.mkdir()
    try:
        node.start_all(ready=False)
        answer = httpx.get(node.url("api") + "/ready", verify=node.tls["api"], trust_env=False,
                           timeout=30.0)
        assert answer.status_code == 503
        token = (node.data_dir / "secrets" / "admin.token").read_text().strip()
        created = httpx.post(node.url("api") + "/v1/sessions", json={},
                             headers={"Authorization": f"Bearer {token}"},
                             verify=node.tls["api"], trust_env=False, timeout=30.0)
        assert created.status_code == 503
        assert created.json()["error"] == "upstream_unavailable"
    finally:
        node.stop()
    log = (tmp_path / "processor.log").read_text()
    assert "TLS to session storage failed: certificate verification failed" in log
    assert "Traceback" not in log
    for name in SERVICES:
        assert pki.key_text.strip() not in (tmp_path / f"{name}.log").read_text()


@pytest.mark.parametrize("name", ["processor", "storage"])
def test_the_images_healthcheck_probes_a_service_serving_mutual_tls(
        tls_cluster: Cluster, pki: Pki, name: str) -> None:
    """The HEALTHCHECK command of sessions/Dockerfile.<name>, run as the container would."""
    text = (REPO / "sessions" / f"Dockerfile.{name}").read_text()
    found = re.search(r"^HEALTHCHECK .*\n\s+CMD (\[.*\])$", text, re.M)
    assert found is not None
    probe = json.loads(found.group(1))
    env = {k: v for k, v in tls_cluster.env_of(name).items() if not k.startswith("LUCID_")}
    env |= {f"LUCID_{name.upper()}_PORT": str(tls_cluster.ports[name]),
            "LUCID_TLS_CERT_FILE": str(pki.cert), "LUCID_TLS_KEY_FILE": str(pki.key),
            "LUCID_TLS_CLIENT_CA_FILE": str(pki.ca)}
    command = [sys.executable, *probe[1:]]
    assert subprocess.run(command, env=env, capture_output=True, timeout=60,  # noqa: S603
                          check=False).returncode == 0
    del env["LUCID_TLS_CLIENT_CA_FILE"]  # no client certificate shown: refused
    assert subprocess.run(command, env=env, capture_output=True, timeout=60,  # noqa: S603
                          check=False).returncode != 0
