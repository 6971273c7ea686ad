"""The CLI's bulk exchanges (sessions/client/_bulk.py): held to h11, and their failures.

The receive path is run on the same response bytes as h11 (the generated and chosen
responses of tests/common/test_wire_differential.py, delivered in random pieces then
an EOF) and must reach h11's verdict, with the service transport's stricter rules:
refused by both, or accepted with the same status, fields and body.  Then the
failures a user meets on a real loopback socket: a connection dropped mid-body, an
answer sent before the body was read, a checksum the node refuses, a Range replay.
The heads the bulk path writes itself (`plain_target`) are held to the ones httpx
builds from the same URL and headers, and any other URL is left to httpx.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import crc32c
import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sessions.client import MIB, ClientError, LucidClient, Progress, download_replay
from sessions.client._bulk import Exchange, Target, plain_target
from sessions.common._http1 import LocalProtocolError, RemoteProtocolError, _head
from tests.common.test_wire_differential import INVALID, VALID, Verdict, h11_verdict, responses

SID = "01JDZ0Q3W6Y8E2V7K4N5P9R1ST"


def bulk_verdict(data: bytes, cuts: list[int] | None = None) -> Verdict:
    """Return the bulk receive path's verdict on `data`, sent in pieces cut at `cuts`."""
    bounds = sorted({c % (len(data) + 1) for c in cuts or []} | {0, len(data)})
    ours, theirs = socket.socketpair()

    def serve() -> None:
        with theirs, contextlib.suppress(OSError):  # a refused head is not read to the end
            for a, b in zip(bounds, bounds[1:], strict=False):
                theirs.sendall(data[a:b])
            theirs.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=serve)
    writer.start()
    body = bytearray()
    try:
        with Exchange("GET", b"", ours) as exchange:
            reply = exchange.read_reply()
            exchange.read_body(reply, body.extend)
    except RemoteProtocolError:
        return None
    finally:
        writer.join()
    return reply.status, [(n.lower(), v) for n, v in reply.headers], bytes(body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=responses(), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_generated_responses_get_h11s_verdict(data: bytes, cuts: list[int]) -> None:
    assert bulk_verdict(data, cuts) == h11_verdict(data), data


@pytest.mark.parametrize("data", VALID + INVALID)
def test_chosen_responses_get_h11s_verdict(data: bytes) -> None:
    expected = h11_verdict(data)
    assert bulk_verdict(data) == expected
    assert bulk_verdict(data, list(range(len(data)))) == expected  # one byte at a time


# -- the request head: the bulk path's own for a plain URL, httpx's for any other --------------

HOSTS = ("127.0.0.1", "localhost", "gw-1.example", "[::1]", "[::ffff:127.0.0.1]", "LocalHost",
         "user@host", "user:pw@host", "b\u00fccher.example", "xn--bcher-kva.example", "a_b", "")
PORTS = ("", ":80", ":8087", ":0", ":65535", ":65536", ":", ":08087", ":x")
SEGMENT = st.text(alphabet="aZ09-._~!$&'()*+,;=:@%?#/ \t\u00e9", max_size=6)
VALUES = st.text(alphabet="aZ09 =/-_.\t\x7f\r\n\u00e9", max_size=8)


def httpx_target(method: str, url: str, headers: dict[str, str]) -> Target | str:
    """Return the target httpx builds for the request, or the name of its refusal."""
    try:
        request = httpx.Request(method, url, headers=headers)
        return Target(request.url.host, request.url.port or 80, _head(request))
    except (httpx.InvalidURL, LocalProtocolError, UnicodeEncodeError) as exc:
        return type(exc).__name__


@settings(max_examples=2000, deadline=None)
@given(method=st.sampled_from(["GET", "PATCH"]), host=st.sampled_from(HOSTS),
       port=st.sampled_from(PORTS), segments=st.lists(SEGMENT, max_size=4),
       headers=st.dictionaries(st.sampled_from(["Authorization", "Range", "Upload-Offset",
                                                "Content-Length", "accept-encoding"]),
                               VALUES, max_size=3))
def test_a_plain_target_is_the_one_httpx_builds(method: str, host: str, port: str,
                                                segments: list[str],
                                                headers: dict[str, str]) -> None:
    url = f"http://{host}{port}/" + "/".join(segments)
    try:
        ours: Target | str | None = plain_target(method, url, headers)
    except LocalProtocolError:
        ours = "LocalProtocolError"
    event("left to httpx" if ours is None else "refused" if isinstance(ours, str) else "ours")
    if ours is not None:  # None: not plain, httpx builds it (the next test)
        assert ours == httpx_target(method, url, headers), url


def test_the_gateways_urls_are_plain() -> None:
    """The URLs a CLI replay and upload use are written here, not by httpx."""
    headers = {"Authorization": "Bearer " + "t" * 43, "Range": "bytes=0-"}
    for url in ("http://127.0.0.1:8087/v1/sessions/" + SID + "/replay",
                "http://localhost/gw/v1/sessions/" + SID + "/upload", "http://[::1]:80/v1"):
        target = plain_target("GET", url, headers)
        assert target is not None
        assert target == httpx_target("GET", url, headers)


def test_a_url_that_is_not_plain_goes_out_as_httpx_writes_it(tmp_path: Path) -> None:
    """An upper-case host and a %-escaped prefix: httpx's head, on the bulk path's socket."""
    heads: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(65536)
                heads.append(head)
                _answer(conn, "200 OK", b"abc")

        thread = threading.Thread(target=serve)
        thread.start()
        url = f"http://LOCALHOST:{port}/%7Egw"
        client = LucidClient(url, "t" * 40)
        assert plain_target("GET", url + "/v1", {}) is None
        written = download_replay(client, SID, tmp_path / "out.bin", byte_range="bytes=0-2",
                                  progress_enabled=False)
        thread.join(timeout=10)
    assert written == 3
    expected = httpx_target("GET", f"{url}/v1/sessions/{SID}/replay", {
        "Authorization": "Bearer " + "t" * 40, "Accept-Encoding": "identity",
        "Range": "bytes=0-2"})
    assert isinstance(expected, Target)
    assert heads == [expected.head]


# -- on a real loopback socket ---------------------------------------------------------------

Script = Callable[[socket.socket, bytes], None]
"""What the scripted gateway does with one connection, given the request head it read."""


@pytest.fixture
def gateway() -> Iterator[Callable[[Script], LucidClient]]:
    """Return a factory of clients of a gateway that runs a script per connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    scripts: list[Script] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    piece = conn.recv(65536)
                    if not piece:
                        break
                    head += piece
                if scripts and head:
                    scripts[0](conn, head)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    def client(script: Script) -> LucidClient:
        scripts[:] = [script]
        return LucidClient(f"http://127.0.0.1:{listener.getsockname()[1]}", "t" * 40)

    yield client
    stop.set()
    listener.close()
    thread.join(timeout=5)


def _answer(conn: socket.socket, status: str, body: bytes, *extra: str) -> None:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *extra]
    conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)


def _drain(conn: socket.socket, head: bytes, n: int) -> bytes:
    """Return the first n body bytes of the request (those past its head included)."""
    got = head.split(b"\r\n\r\n", 1)[1]
    while len(got) < n:
        piece = conn.recv(n - len(got))
        if not piece:
            break
        got += piece
    return got[:n]


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "rec.bin"
    path.write_bytes(bytes(range(256)) * (3 * MIB // 256))
    return path


def test_the_body_goes_out_whole_with_its_checksum(gateway: Callable[[Script], LucidClient],
                                                    sample: Path) -> None:
    seen: dict[str, bytes] = {}

    def script(conn: socket.socket, head: bytes) -> None:
        seen["head"], seen["body"] = head, _drain(conn, head, 2 * MIB)
        _answer(conn, "200 OK", b'{"offset": %d, "chunk_count": 2}' % (MIB + 2 * MIB))

    client = gateway(script)
    with sample.open("rb") as fh:
        answer = client.patch(SID, fh, MIB, 2 * MIB, Progress(None, enabled=False))
    assert answer.offset == 3 * MIB
    expected = sample.read_bytes()[MIB:3 * MIB]
    assert seen["body"] == expected
    crc = base64.b64encode(crc32c.crc32c(expected).to_bytes(4, "big"))  # the CLI's default
    assert b"\r\nUpload-Checksum: crc32c " + crc + b"\r\n" in seen["head"]
    assert seen["head"].startswith(f"PATCH /v1/sessions/{SID}/upload HTTP/1.1\r\n".encode())
    assert b"\r\nupload-offset: 1048576\r\n" in seen["head"].lower()


def test_a_connection_dropped_mid_body_is_a_retryable_failure(
        gateway: Callable[[Script], LucidClient], sample: Path) -> None:
    def script(conn: socket.socket, head: bytes) -> None:
        _drain(conn, head, MIB // 2)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    client = gateway(script)  # the linger of 0 makes the close a reset
    with sample.open("rb") as fh, pytest.raises(ClientError) as info:
        client.patch(SID, fh, 0, 3 * MIB, Progress(None, enabled=False))
    assert info.value.code == "connection_failed"
    assert info.value.retryable


def test_an_answer_sent_before_the_body_was_read_is_the_error(
        gateway: Callable[[Script], LucidClient], sample: Path) -> None:
    def script(conn: socket.socket, _: bytes) -> None:
        _answer(conn, "401 Unauthorized", b'{"error": "unauthorized", "detail": "bad token"}')
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(5)
        while conn.recv(1 << 20):  # the client may still be sending; it then reads this
            pass

    with sample.open("rb") as fh, pytest.raises(ClientError) as info:
        gateway(script).patch(SID, fh, 0, 3 * MIB, Progress(None, enabled=False))
    assert (info.value.code, info.value.status) == ("unauthorized", 401)


def test_a_refused_checksum_is_a_clear_error(gateway: Callable[[Script], LucidClient],
                                             sample: Path) -> None:
    def script(conn: socket.socket, head: bytes) -> None:
        _drain(conn, head, MIB)
        _answer(conn, "460 Checksum Mismatch",
                b'{"error": "checksum_mismatch", "detail": "the body does not match"}')

    with sample.open("rb") as fh, pytest.raises(ClientError) as info:
        gateway(script).patch(SID, fh, 0, MIB, Progress(None, enabled=False))
    assert str(info.value) == "checksum_mismatch: the body does not match"
    assert info.value.retryable  # the upload loop sends the request again


def test_a_range_replay_asks_for_the_range(gateway: Callable[[Script], LucidClient],
                                           tmp_path: Path) -> None:
    heads: list[bytes] = []

    def script(conn: socket.socket, head: bytes) -> None:
        heads.append(head)
        _answer(conn, "206 Partial Content", b"x" * 5, "Content-Range: bytes 10-14/100")

    out = tmp_path / "part.bin"
    assert download_replay(gateway(script), SID, out, byte_range="bytes=10-14",
                           progress_enabled=False) == 5
    assert out.read_bytes() == b"x" * 5
    assert b"\r\nrange: bytes=10-14\r\n" in heads[0].lower()
    assert b"\r\naccept-encoding: identity\r\n" in heads[0].lower()


def test_a_replay_cut_mid_body_leaves_no_file(gateway: Callable[[Script], LucidClient],
                                              tmp_path: Path) -> None:
    def script(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (4 * MIB)
                     + b"y" * (MIB + 7))

    with pytest.raises(ClientError) as info:
        download_replay(gateway(script), SID, tmp_path / "out.bin", byte_range=None,
                        progress_enabled=False)
    assert info.value.code == "truncated"
    assert f"after {MIB + 7:,} of {4 * MIB:,} bytes" in info.value.detail
    assert list(tmp_path.iterdir()) == []


def test_a_chunked_replay_is_decoded(gateway: Callable[[Script], LucidClient],
                                     tmp_path: Path) -> None:
    def script(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")

    out = tmp_path / "out.bin"
    assert download_replay(gateway(script), SID, out, byte_range=None,
                           progress_enabled=False) == 11
    assert out.read_bytes() == b"hello world"


def test_a_replay_error_answer_is_the_nodes_error(gateway: Callable[[Script], LucidClient],
                                                  tmp_path: Path) -> None:
    def script(conn: socket.socket, _: bytes) -> None:
        _answer(conn, "404 Not Found", b'{"error": "session_not_found", "detail": "no such"}')

    with pytest.raises(ClientError) as info:
        download_replay(gateway(script), SID, tmp_path / "out.bin", byte_range=None,
                        progress_enabled=False)
    assert (info.value.code, info.value.status) == ("session_not_found", 404)
    assert list(tmp_path.iterdir()) == []


def test_no_gateway_is_connection_failed(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed below: nothing listens there
    client = LucidClient(f"http://127.0.0.1:{port}", None)
    with pytest.raises(ClientError) as info:
        download_replay(client, SID, tmp_path / "out.bin", byte_range=None,
                        progress_enabled=False)
    assert info.value.code == "connection_failed"
