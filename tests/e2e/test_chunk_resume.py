"""A chunk read cut mid-answer between the processor and storage (real processes, a real TCP
reset) is resumed with a Range request: the replay completes byte for byte, storage served
a 206 for it, and a chunk altered on disk still fails authentication after a resume.  The
same holds when storage is killed and restarted mid-chunk.  A cut between storage and
SeaweedFS is resumed one layer down, by obstore's own ranged GET.

The processor is restarted to reach storage through `CuttingProxy`, a loopback TCP proxy
that resets the connection once, in the middle of the sealed chunk it is armed for, and
is put back on storage directly afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Cluster
from tests.e2e.support import MIB, assert_error, recorded_session, replay
from tests.storage.s3_server import S3Server, s3_server  # noqa: F401 - a fixture

pytestmark = pytest.mark.e2e

KEEP = 400_000  # answer bytes (head included) let through before the cut: mid-chunk
CHUNK_ROUTE = "/internal/v1/sessions/{session_id}/chunks/{index}"


class CuttingProxy:
    """Forwards loopback TCP to `upstream_port`; once armed with a chunk's request line, resets
    the connection carrying that chunk's answer after KEEP bytes of it, then disarms.

    Armed with `hold`, it sets `holding` at that point and waits for `hold` before the
    reset (the test restarts storage meanwhile).  While storage is down, a connection
    is accepted and closed at once, as a stopped upstream behind a proxy looks.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed: re.Pattern[bytes] | None = None
        self.hold: threading.Event | None = None
        self.holding = threading.Event()
        self.cuts = 0
        self.heads: list[bytes] = []  # the head of every GET and HEAD passed on, in order
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, request: bytes, hold: threading.Event | None = None) -> None:
        """Cut the answer to the next request matching the regular expression `request`."""
        with self._lock:
            self.armed = re.compile(request)
            self.hold = hold

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                down, _ = self.listener.accept()
                try:
                    up = socket.create_connection(("127.0.0.1", self.upstream_port))
                except OSError:
                    down.close()
                    continue
                cut = threading.Event()
                threading.Thread(target=self._requests, args=(down, up, cut), daemon=True).start()
                threading.Thread(target=self._answers, args=(up, down, cut), daemon=True).start()

    def _requests(self, down: socket.socket, up: socket.socket, cut: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := down.recv(1 << 16):
                with self._lock:
                    if data.startswith((b"GET ", b"HEAD ")):
                        self.heads.append(data.split(b"\r\n\r\n", 1)[0])
                    if self.armed is not None and self.armed.search(data):
                        self.armed = None
                        cut.set()  # before the request goes on: its answer is the one to cut
                up.sendall(data)
        with contextlib.suppress(OSError):
            up.shutdown(socket.SHUT_WR)

    def _answers(self, up: socket.socket, down: socket.socket, cut: threading.Event) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := up.recv(1 << 16):
                if cut.is_set():
                    if sent + len(data) >= KEEP:
                        down.sendall(data[:KEEP - sent])
                        if self.hold is not None:
                            self.holding.set()
                            self.hold.wait(60)
                        self.cuts += 1
                        # SO_LINGER 0: the close resets the connection.  The shutdown
                        # first wakes the thread reading requests from it, which would
                        # otherwise keep the socket open past close().
                        down.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        b"\x01\x00\x00\x00\x00\x00\x00\x00")
                        for sock in (down, up):
                            sock.shutdown(socket.SHUT_RDWR)
                            sock.close()
                        return
                    sent += len(data)
                down.sendall(data)
        with contextlib.suppress(OSError):
            down.shutdown(socket.SHUT_WR)


def storage_get(sid: str, index: int) -> bytes:
    """The processor's request for a chunk, as storage receives it."""
    return f"^GET /internal/v1/sessions/{sid}/chunks/{index} ".encode()


def s3_get(sid: str, index: int, method: str = "GET") -> bytes:
    """Storage's GET (or other `method`) of a chunk's object, as the S3 server receives it
    (path style)."""
    return f"^{method} /[^ ]*/{sid}/{index:010d}/[0-9a-f]{{64}}\\.lcs HTTP/1\\.1".encode()


@contextlib.contextmanager
def processor_through(cluster: Cluster, proxy: CuttingProxy) -> Iterator[None]:
    """Run the processor with its storage calls going through `proxy`, then restore it.

    The processor's storage URL names the proxy, so the launcher gives it no Unix socket
    to storage; storage keeps its socket, also when it is restarted inside."""
    before = cluster.extra_env.get("processor")
    cluster.extra_env["processor"] = {**(before or {}),
                                      "LUCID_STORAGE_URL": f"http://127.0.0.1:{proxy.port}"}
    cluster.restart("processor")
    cluster.wait_ready("api")
    try:
        yield
    finally:
        if before is None:
            del cluster.extra_env["processor"]
        else:
            cluster.extra_env["processor"] = before
        cluster.restart("processor")
        cluster.wait_ready("api")


def ranged_chunk_reads(cluster: Cluster) -> int:
    """Return how many 206 answers storage's chunk GET has served (its request metrics)."""
    r = httpx.get(cluster.url("storage") + "/metrics", headers=cluster.auth_of("storage"),
                  trust_env=False, timeout=10)
    assert r.status_code == 200
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in r.text.splitlines()
               if line.startswith("lucid_http_request_duration_seconds_count{")
               and f'route="{CHUNK_ROUTE}"' in line and 'status="206"' in line)


def test_a_chunk_read_cut_mid_chunk_resumes_and_still_authenticates(
        cluster: Cluster, api: httpx.Client) -> None:
    data = os.urandom(3 * MIB + 4321)  # incompressible: each sealed chunk ~1 MiB
    sid = recorded_session(api, data, piece=4 * MIB)["id"]
    assert cluster.chunk_file(sid, 1).stat().st_size > KEEP + 100_000
    proxy = CuttingProxy(cluster.ports["storage"])
    try:
        with processor_through(cluster, proxy):
            log_start = cluster.log_sizes()["processor"]
            ranged = ranged_chunk_reads(cluster)

            # 1. Chunk 1's answer is reset mid-chunk; the whole replay still arrives intact.
            proxy.arm(storage_get(sid, 1))
            r = replay(api, sid)
            assert proxy.cuts == 1
            assert r.status_code == 200 and r.content == data
            assert ranged_chunk_reads(cluster) == ranged + 1
            log = cluster.log_text("processor", log_start)
            assert re.search(rf"chunk 1 of session {sid} broke off at byte \d+", log), log[-2000:]

            # 2. A 1-byte Range in chunk 2, cut too: one resumed read, then the byte.
            proxy.arm(storage_get(sid, 2))
            r = replay(api, sid, f"bytes={2 * MIB + 5}-{2 * MIB + 5}")
            assert proxy.cuts == 2 and ranged_chunk_reads(cluster) == ranged + 2
            assert r.status_code == 206 and r.content == data[2 * MIB + 5:2 * MIB + 6]

            # 3. Chunk 0 altered on disk and cut: resumed, then refused whole; nothing served.
            path = cluster.chunk_file(sid, 0)
            blob = bytearray(path.read_bytes())
            blob[len(blob) - 100] ^= 0x01  # past the cut: only the resumed bytes are wrong
            path.write_bytes(bytes(blob))
            proxy.arm(storage_get(sid, 0))
            body = assert_error(replay(api, sid), 502, "chunk_corrupt")
            assert body.get("index", 0) == 0
            assert proxy.cuts == 3 and ranged_chunk_reads(cluster) == ranged + 3
    finally:
        proxy.close()


def test_a_chunk_read_resumes_across_a_storage_restart(cluster: Cluster,
                                                       api: httpx.Client) -> None:
    """Storage is killed while chunk 1's answer is under way and started again; the processor's
    resumes meet a refused connection until it is back, then read on from the new process."""
    data = os.urandom(2 * MIB + 99)
    sid = recorded_session(api, data, piece=4 * MIB)["id"]
    proxy = CuttingProxy(cluster.ports["storage"])
    try:
        with processor_through(cluster, proxy), ThreadPoolExecutor(1) as pool:
            log_start = cluster.log_sizes()["processor"]
            hold = threading.Event()
            proxy.arm(storage_get(sid, 1), hold)
            with cluster.broken_stream("storage"):
                pending = pool.submit(replay, api, sid)
                assert proxy.holding.wait(30)
                cluster.kill("storage")
                hold.set()  # the cut reaches the processor while storage is down
                started = time.monotonic()
                cluster.start("storage")
                restart_s = time.monotonic() - started
                r = pending.result(timeout=60)
            assert r.status_code == 200 and r.content == data, restart_s
            # the new process served the resume with a Range; killing storage may also cut a
            # chunk read ahead beside it, resumed with its own Range: one or more 206s
            assert proxy.cuts == 1 and ranged_chunk_reads(cluster) >= 1
            log = cluster.log_text("processor", log_start)
            assert len(re.findall(rf"chunk 1 of session {sid} broke off", log)) >= 2, log[-3000:]
    finally:
        proxy.close()


def test_an_s3_read_cut_mid_object_is_resumed_by_obstore_with_a_ranged_get(
        cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The cut is between storage and SeaweedFS: obstore (object_store) resumes the object's
    body itself with a ranged GET from the byte it reached, so storage's own answer never
    breaks and the processor has nothing to resume."""
    s3: S3Server = request.getfixturevalue("s3_server")  # skips with it
    proxy = CuttingProxy(int(s3.endpoint.rsplit(":", 1)[1]))
    key, secret = s3.write_credentials(tmp_path / "s3-secrets")
    (tmp_path / "cluster").mkdir()
    own = Cluster(tmp_path / "cluster")
    own.extra_env["storage"] = {
        "LUCID_CHUNK_STORE_URL": s3.url(), "LUCID_S3_ACCESS_KEY_FILE": str(key),
        "LUCID_S3_ENDPOINT": f"http://127.0.0.1:{proxy.port}",
        "LUCID_S3_SECRET_KEY_FILE": str(secret)}
    try:
        with own.serving(), own.client() as api:
            data = os.urandom(3 * MIB + 5)
            sid = recorded_session(api, data, piece=4 * MIB)["id"]
            proxy.arm(s3_get(sid, 1))
            r = replay(api, sid)
            assert proxy.cuts == 1
            assert r.status_code == 200 and r.content == data
            sealed = own.storage_internal().get(f"/sessions/{sid}/chunks").json()["items"][1]
            gets = [h for h in proxy.heads if re.match(s3_get(sid, 1), h)]
            assert len(gets) == 2, gets
            resumed = re.search(rb"\r\nrange: bytes=([0-9]+)-([0-9]+)", gets[1], re.IGNORECASE)
            assert resumed is not None, gets[1]
            assert 0 < int(resumed[1]) < KEEP and int(resumed[2]) == sealed["sealed_length"] - 1
            assert ranged_chunk_reads(own) == 0

            # storage's own ranged read (a processor's resume): the stat it answers 416 by,
            # then one ranged GET of the object; no second HEAD
            with own.storage_internal() as storage:
                whole = storage.get(f"/sessions/{sid}/chunks/1").content
                seen = len(proxy.heads)
                part = storage.get(f"/sessions/{sid}/chunks/1", headers={"Range": "bytes=5-99"})
                assert part.status_code == 206 and part.content == whole[5:100]
                assert [h.split(b" ", 1)[0] for h in proxy.heads[seen:]
                        if re.match(s3_get(sid, 1, "(GET|HEAD)"), h)] == [b"HEAD", b"GET"]
                past = storage.get(f"/sessions/{sid}/chunks/1",
                                   headers={"Range": f"bytes={len(whole)}-"})
                assert_error(past, 416, "range_not_satisfiable")
    finally:
        proxy.close()
