"""The CLI's client side against a fake gateway: resumable upload, replay download, errors.

Every test that talks to the fake gateway runs twice: through httpx.MockTransport
(httpx's path, the one an https gateway takes) and served on a loopback socket by
the standard library's HTTP server (the bulk path: one reused buffer out, one in).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from sessions.client import (
    MIB,
    ClientError,
    LucidClient,
    ResumeStore,
    UploadPlan,
    _client,
    cli,
    download_replay,
    upload_file,
)
from sessions.common.checksums import Checksum, hasher
from tests.api.fakes import session_json

SID = "01JDZ0Q3W6Y8E2V7K4N5P9R1ST"
CHUNK = MIB


@dataclass
class FakeGateway:
    """Just enough of `/v1` for uploads and replays; `faults` are consumed one per PATCH."""

    data: bytearray = field(default_factory=bytearray)
    state: str = "recording"
    faults: list[Callable[[httpx.Request], httpx.Response]] = field(default_factory=list)
    patches: list[tuple[int, int]] = field(default_factory=list)
    created: int = 0
    replay_cut: int | None = None
    checks: list[int] = field(default_factory=list)
    checksum: str = "crc32c"
    """The Upload-Checksum algorithm every PATCH must carry (the CLI's default)."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        if (method, path) == ("POST", "/v1/sessions"):
            self.created += 1
            return httpx.Response(201, json=session_json(id=SID, state="recording"))
        if path == f"/v1/sessions/{SID}/upload" and method == "GET":
            return httpx.Response(200, json={"offset": len(self.data), "chunk_size": CHUNK,
                                             "chunk_count": 0, "state": self.state})
        if path == f"/v1/sessions/{SID}/upload" and method == "PATCH":
            return self.patch(request)
        if path == f"/v1/sessions/{SID}/upload/prefix-check" and method == "POST":
            return self.prefix_check(request)
        if path == f"/v1/sessions/{SID}/finalize":
            self.state = "completed"
            return httpx.Response(200, json=session_json(id=SID, state="completed",
                                                         offset=len(self.data)))
        if path == f"/v1/sessions/{SID}/replay":
            body = bytes(self.data)
            headers = {"Content-Length": str(len(body))}
            return httpx.Response(200, stream=Pieces(body[:self.replay_cut]), headers=headers)
        return httpx.Response(404, json={"error": "not_found", "detail": "no route"})

    def prefix_check(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.read())
        self.checks.append(body["offset"])
        if body["offset"] != len(self.data):
            return httpx.Response(409, json={"error": "offset_mismatch", "detail": "no",
                                             "offset": len(self.data)})
        digest = base64.b64encode(hashlib.sha256(self.data).digest()).decode()
        return httpx.Response(200, json={"match": body["sha256"] == digest,
                                         "offset": len(self.data)})

    def patch(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        offset = int(request.headers["upload-offset"])
        self.patches.append((offset, len(body)))
        if self.faults:
            return self.faults.pop(0)(request)
        if offset != len(self.data):
            return httpx.Response(409, json={"error": "offset_mismatch", "detail": "no",
                                             "offset": len(self.data)})
        checksum = Checksum.parse(request.headers["upload-checksum"])
        assert checksum.algorithm == self.checksum
        digest = hasher(checksum.algorithm)
        digest.update(body)
        assert digest.digest() == checksum.digest, "the request's Upload-Checksum is wrong"
        assert int(request.headers["content-length"]) == len(body)
        self.data += body
        return httpx.Response(200, json={"offset": len(self.data), "chunk_count": 0})


class Pieces(httpx.SyncByteStream):
    """A body handed out a MiB at a time, as a node sends a replay."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def __iter__(self) -> Iterator[bytes]:
        for at in range(0, len(self._body), MIB):
            yield self._body[at:at + MIB]


class _Served(BaseHTTPRequestHandler):
    """Hands each request to the server's `app` (a FakeGateway) and writes its answer.

    An answer body shorter than its Content-Length is written as it is and the
    connection closed (a node cutting a replay); a fault that raises an httpx
    transport error closes the connection without an answer (a dropped one).
    """

    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def log_message(self, *_: object) -> None:
        pass

    def _any(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request = httpx.Request(self.command, "http://gw.test" + self.path,
                                headers=list(self.headers.items()), content=body)
        try:
            resp: httpx.Response = self.server.app(request)  # type: ignore[attr-defined]
        except httpx.TransportError:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        content = resp.read()
        self.send_response(resp.status_code)
        for name, value in resp.headers.multi_items():
            if name.lower() != "transfer-encoding":
                self.send_header(name, value)
        self.end_headers()
        self.wfile.write(content)
        if len(content) != int(resp.headers.get("content-length", len(content))):
            self.close_connection = True

    do_GET = do_POST = do_PATCH = do_DELETE = _any


_servers: dict[int, ThreadingHTTPServer] = {}  # one per app: its URL keys resumes


@pytest.fixture(autouse=True, params=["httpx", "socket"])
def via(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test through httpx.MockTransport, then through a real loopback socket."""
    global VIA
    VIA = request.param
    yield request.param
    while _servers:
        _, server = _servers.popitem()
        server.shutdown()
        server.server_close()


VIA = "httpx"


def client_for(app: Callable[[httpx.Request], httpx.Response], token: str | None) -> LucidClient:
    """Return a client of `app`: through MockTransport, or served on a loopback port."""
    if VIA == "httpx":
        return LucidClient("http://gw.test", token, transport=httpx.MockTransport(app))
    server = _servers.get(id(app))
    if server is None:
        server = _servers[id(app)] = ThreadingHTTPServer(("127.0.0.1", 0), _Served)
        server.daemon_threads = True
        server.app = app  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return LucidClient(f"http://127.0.0.1:{server.server_port}", token)


def status(code: int, error: str, **extra: object) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _: httpx.Response(code, json={"error": error, "detail": "x", **extra})


def drop(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "rec.bin"
    path.write_bytes(bytes(range(256)) * (5 * CHUNK // 256 + 300))
    return path


def run_upload(gw: FakeGateway, path: Path, tmp_path: Path, **plan: object) -> str:
    client = client_for(gw, "t" * 40)
    full = {"labels": {}, "retention_days": None, "request_bytes": 2 * CHUNK + 5,
            "finalize": True} | plan
    return upload_file(client, path, UploadPlan(**full), store=ResumeStore(
        tmp_path / "state" / "uploads.json"), progress_enabled=False, say=lambda _: None,
        sleep=lambda _: None)


def test_upload_sends_chunk_multiples_and_finalizes(sample: Path, tmp_path: Path) -> None:
    gw = FakeGateway()
    assert run_upload(gw, sample, tmp_path) == SID
    assert gw.data == sample.read_bytes()
    # one chunk first (hashed while nothing is sent), then growing up to the request size
    assert [n for _, n in gw.patches][:-1] == [CHUNK] + [2 * CHUNK] * (len(gw.patches) - 2)
    assert gw.state == "completed"
    assert json.loads((tmp_path / "state" / "uploads.json").read_text()) == {"uploads": []}


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "md5"])
def test_upload_sends_the_checksum_algorithm_asked_for(sample: Path, tmp_path: Path,
                                                       algorithm: str) -> None:
    gw = FakeGateway(checksum=algorithm)  # it checks every request's digest of that kind
    assert run_upload(gw, sample, tmp_path, checksum=algorithm) == SID
    assert gw.data == sample.read_bytes() and len(gw.patches) > 1


def test_upload_requests_grow_fourfold_from_one_chunk_with_a_slow_digest(
        sample: Path, tmp_path: Path) -> None:
    gw = FakeGateway(checksum="sha256")
    run_upload(gw, sample, tmp_path, request_bytes=16 * CHUNK, checksum="sha256")
    size = sample.stat().st_size
    assert [n for _, n in gw.patches] == [CHUNK, 4 * CHUNK, size - 5 * CHUNK]
    assert gw.data == sample.read_bytes()


def test_upload_requests_go_from_one_chunk_to_full_size_with_crc32c(
        sample: Path, tmp_path: Path) -> None:
    """CRC-32C digests the next request while the first chunk is sent: two requests, not
    four, and each one costs the services a lease, a checkpoint and a commit."""
    size = sample.stat().st_size
    gw = FakeGateway()  # crc32c, the CLI's default
    run_upload(gw, sample, tmp_path, request_bytes=16 * CHUNK)
    assert [n for _, n in gw.patches] == [CHUNK, size - CHUNK]
    assert gw.data == sample.read_bytes()
    gw = FakeGateway()
    run_upload(gw, sample, tmp_path / "again", request_bytes=2 * CHUNK)  # at most the setting
    assert [n for _, n in gw.patches] == [CHUNK, 2 * CHUNK, 2 * CHUNK, size - 5 * CHUNK]


def test_upload_resumes_after_errors(sample: Path, tmp_path: Path) -> None:
    gw = FakeGateway(faults=[status(503, "upstream_unavailable"), drop,
                             status(409, "upload_in_progress"), status(460, "checksum_mismatch")])
    run_upload(gw, sample, tmp_path)
    assert gw.data == sample.read_bytes()


def test_upload_follows_offset_mismatch(sample: Path, tmp_path: Path) -> None:
    gw = FakeGateway()
    gw.data += sample.read_bytes()[:CHUNK]  # someone already sent the first chunk
    run_upload(gw, sample, tmp_path, session_id=SID)
    assert gw.patches[0] == (CHUNK, CHUNK)  # GET .../upload said where to start
    assert gw.data == sample.read_bytes()
    assert gw.created == 0


def test_upload_checks_the_prefix_before_resuming(sample: Path, tmp_path: Path) -> None:
    gw = FakeGateway()
    gw.data += sample.read_bytes()[:CHUNK]
    run_upload(gw, sample, tmp_path, session_id=SID)
    assert gw.checks == [CHUNK]
    assert gw.data == sample.read_bytes()


def test_upload_refuses_another_files_prefix(sample: Path, tmp_path: Path) -> None:
    gw = FakeGateway()
    gw.data += b"\xff" + sample.read_bytes()[1:CHUNK]
    with pytest.raises(ClientError) as info:
        run_upload(gw, sample, tmp_path, session_id=SID)
    assert info.value.code == "prefix_mismatch" and str(sample) in info.value.detail
    assert gw.patches == [] and gw.state == "recording"


def test_upload_refuses_a_session_longer_than_the_file(sample: Path, tmp_path: Path) -> None:
    gw = FakeGateway()
    gw.data += sample.read_bytes() + b"more"
    with pytest.raises(ClientError, match="prefix_mismatch"):
        run_upload(gw, sample, tmp_path, session_id=SID)
    assert gw.checks == [] and gw.patches == []


@pytest.mark.parametrize("same", [True, False])
def test_a_completed_session_of_the_same_size_must_hold_the_file(sample: Path, tmp_path: Path,
                                                                  same: bool) -> None:
    gw = FakeGateway(state="completed")
    data = sample.read_bytes()
    gw.data += data if same else data[:-1] + b"?"
    if same:
        assert run_upload(gw, sample, tmp_path, session_id=SID) == SID
    else:
        with pytest.raises(ClientError, match="prefix_mismatch"):
            run_upload(gw, sample, tmp_path, session_id=SID)
    assert gw.checks == [len(data)] and gw.patches == []


def test_upload_gives_up_after_bounded_retries(sample: Path, tmp_path: Path) -> None:
    gw = FakeGateway(faults=[status(503, "upstream_unavailable")] * 20)
    with pytest.raises(ClientError) as info:
        run_upload(gw, sample, tmp_path, retries=3)
    assert info.value.code == "upstream_unavailable"
    assert len(gw.patches) == 4


def test_client_errors_are_not_retried(sample: Path, tmp_path: Path) -> None:
    gw = FakeGateway(faults=[status(409, "invalid_state")])
    with pytest.raises(ClientError, match="invalid_state"):
        run_upload(gw, sample, tmp_path)
    assert len(gw.patches) == 1


def test_rerun_resumes_the_recorded_session(sample: Path, tmp_path: Path) -> None:
    first = FakeGateway(faults=[drop] * 50)
    with pytest.raises(ClientError):
        run_upload(first, sample, tmp_path, retries=1)
    state = json.loads((tmp_path / "state" / "uploads.json").read_text())["uploads"]
    assert [u["session_id"] for u in state] == [SID]
    first.faults.clear()
    first.data += sample.read_bytes()[:2 * CHUNK]
    run_upload(first, sample, tmp_path)
    assert first.created == 1, "the second run must resume, not create"
    assert first.data == sample.read_bytes()


def test_a_changed_file_starts_a_new_session(sample: Path, tmp_path: Path) -> None:
    gw = FakeGateway(faults=[drop] * 50)
    with pytest.raises(ClientError):
        run_upload(gw, sample, tmp_path, retries=0)
    sample.write_bytes(b"new content")
    gw.faults.clear()
    run_upload(gw, sample, tmp_path)
    assert gw.created == 2


def test_replay_renames_only_a_complete_body(tmp_path: Path) -> None:
    gw = FakeGateway(data=bytearray(b"x" * 5000))
    client = client_for(gw, None)
    out = tmp_path / "out.bin"
    assert download_replay(client, SID, out, byte_range=None, progress_enabled=False) == 5000
    assert out.read_bytes() == b"x" * 5000
    gw.replay_cut = 3000
    with pytest.raises(ClientError, match="3,?000 of 5,?000") as info:
        download_replay(client, SID, tmp_path / "short.bin", byte_range=None,
                        progress_enabled=False)
    assert info.value.code == "truncated"
    assert not (tmp_path / "short.bin").exists()
    assert not (tmp_path / "short.bin.part").exists()


def test_a_replay_is_written_back_as_it_arrives_and_renamed_once_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    total = 2 * _client.WRITEBACK_EVERY + 3 * MIB + 5
    gw = FakeGateway(data=bytearray(bytes(range(256)) * (total // 256) + b"x" * (total % 256)))
    out = tmp_path / "out.bin"
    part = tmp_path / "out.bin.part"
    events: list[tuple[str, object, int]] = []  # (what, on what, bytes in the part file then)
    real_fsync, real_replace = os.fsync, os.replace
    start_writeback = _client._sync_file_range()
    assert start_writeback is not None  # Linux

    def writeback(fd: int, offset: int, nbytes: int, flags: int) -> int:
        events.append(("writeback", (offset, nbytes), os.fstat(fd).st_size))
        return start_writeback(fd, offset, nbytes, flags)

    def fsync(fd: int) -> None:
        real_fsync(fd)
        is_part = os.path.samestat(os.fstat(fd), os.stat(part)) if part.exists() else False
        events.append(("fsync", "part" if is_part else "other", os.fstat(fd).st_size))

    def replace(src: Path, dst: Path) -> None:
        events.append(("replace", (Path(src).name, Path(dst).name), 0))
        real_replace(src, dst)

    monkeypatch.setattr(_client, "_sync_file_range", lambda: writeback)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    assert download_replay(client_for(gw, None), SID, out, byte_range=None,
                           progress_enabled=False) == total
    assert out.read_bytes() == gw.data
    kicks = [(what, size) for kind, what, size in events if kind == "writeback"]
    ends = [offset + n for (offset, n), _ in kicks]
    assert [offset for (offset, _), _ in kicks] == [0, *ends[:-1]]  # each stretch once
    assert all(n >= _client.WRITEBACK_EVERY and offset + n <= size
               for (offset, n), size in kicks)  # behind the write position
    assert len(kicks) == 2  # while the replay still arrived, not after it
    assert [kind for kind, *_ in events[len(kicks):]] == ["fsync", "replace", "fsync"]
    assert events[len(kicks)][1:] == ("part", total)  # the whole body, before the rename
    assert events[len(kicks) + 1][1] == ("out.bin.part", "out.bin")
    assert events[-1][1] == "other"  # the directory, after the rename


def test_writeback_is_linuxs_sync_file_range(tmp_path: Path) -> None:
    start_writeback = _client._sync_file_range()
    assert start_writeback is not None
    with (tmp_path / "f").open("wb") as fh:
        fh.write(b"z" * MIB)
        fh.flush()
        assert start_writeback(fh.fileno(), 0, MIB, _client.SYNC_FILE_RANGE_WRITE) == 0
        assert start_writeback(fh.fileno(), 0, MIB, 0x80) == -1  # a flag it does not know


class Broken(httpx.SyncByteStream):
    def __iter__(self):  # type: ignore[no-untyped-def]
        yield b"x" * 100
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


def test_replay_cut_by_the_node_is_an_error(tmp_path: Path) -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Broken(), headers={"Content-Length": "5000"})
    client = LucidClient("http://gw.test", None, transport=httpx.MockTransport(handler))
    with pytest.raises(ClientError) as info:
        download_replay(client, SID, tmp_path / "out.bin", byte_range="bytes=0-4999",
                        progress_enabled=False)
    assert info.value.code == "truncated"
    assert "of 5,000 bytes" in info.value.detail
    assert list(tmp_path.iterdir()) == []


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCID_DATA_DIR", str(tmp_path))
    assert cli.main(["ls", "--url", "http://127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: connection_failed: cannot connect to http://127.0.0.1:1")
    assert "Traceback" not in err
    assert cli.main(["upload", str(tmp_path / "missing.bin"), "--url", "http://x"]) == 1
    assert capsys.readouterr().err.startswith("error: file_not_found: ")


def test_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = cli.build_parser()
    monkeypatch.setenv("LUCID_DATA_DIR", str(tmp_path))
    for name in ("LUCID_TOKEN", "LUCID_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert cli._token(parser.parse_args(["ls"])) is None
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "admin.token").write_text("default-token\n")
    assert cli._token(parser.parse_args(["ls"])) == "default-token"
    monkeypatch.setenv("LUCID_TOKEN", "env-token")
    assert cli._token(parser.parse_args(["ls"])) == "env-token"
    (tmp_path / "file.token").write_text("file-token\n")
    monkeypatch.setenv("LUCID_TOKEN_FILE", str(tmp_path / "file.token"))
    assert cli._token(parser.parse_args(["ls"])) == "file-token"
    (tmp_path / "flag.token").write_text("flag-token\n")
    args = parser.parse_args(["ls", "--token-file", str(tmp_path / "flag.token")])
    assert cli._token(args) == "flag-token"


@pytest.mark.parametrize("argv", [["show", "nope"], ["upload", "f", "--label", "novalue"],
                                  ["verify", SID, "--sample", "0"], ["replay", SID, "-o", "x",
                                                                     "--range", "a-b"],
                                  ["ls", "--state", "bogus"], ["ls", "--limit", "0"]])
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(argv)
    assert info.value.code == 2


def test_upload_maps_the_file_once_and_hashes_the_next_request_ahead(
        sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No second pass over the file: each request's bytes are mapped, hashed and sent from
    the same pages, and the next request's checksum is computed while this one is sent."""
    import sessions.client._client as client_module

    def no_reads(*_: object) -> None:
        raise AssertionError("the upload read the file through read() (a second pass)")

    ahead: list[tuple[int, int]] = []
    real_digest = client_module.file_digest

    def counting_digest(path: Path, offset: int, length: int, algorithm: str) -> Checksum:
        ahead.append((offset, length))
        return real_digest(path, offset, length, algorithm)

    monkeypatch.setattr(client_module, "_file_range", no_reads)
    monkeypatch.setattr(client_module, "file_digest", counting_digest)
    gw = FakeGateway()  # it checks each request's Upload-Checksum against its body
    assert run_upload(gw, sample, tmp_path) == SID
    assert gw.data == sample.read_bytes()
    assert ahead == gw.patches[1:]  # every request but the first was hashed ahead


def test_a_file_shorter_than_the_request_is_file_changed_not_a_crash(tmp_path: Path) -> None:
    from sessions.client import Progress

    path = tmp_path / "short.bin"
    path.write_bytes(b"x" * 1000)
    client = client_for(FakeGateway(), None)
    with path.open("rb") as fh, pytest.raises(ClientError) as caught:
        client.patch(SID, fh, 0, 2000, Progress(None, enabled=False))
    assert caught.value.code == "file_changed"
