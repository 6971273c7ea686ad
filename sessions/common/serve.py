"""Run one service in the foreground, as its container does: `python -m sessions.<service>`.

`serve` is the one start of a service process, behind `python -m sessions.api`,
`python -m sessions.processor`, `python -m sessions.storage` and `lucid-sessions serve`:
tune the heap, read and check the configuration (a bad one exits 2 with a message,
never a traceback), build the app and hand it to uvicorn.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib.util
import logging
import os
import socket
import ssl
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sessions.common.secrets import ConfigError

# httpx imports its own command line (`httpx.main`: click, rich and pygments, where they are
# installed) with itself; no service uses it, and it held ~4 MB of each one's resident set.
# Every service's settings import this module before httpx (README, "Memory: one budget").
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # None: import refused

if TYPE_CHECKING:  # the CLI imports tune_allocator: it must not pay for FastAPI's import
    import asyncio

    import uvicorn
    from fastapi import FastAPI

    from sessions.common.settings import CommonSettings

S = TypeVar("S", bound="CommonSettings")

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # mallopt, <malloc.h>
MAX_SOCKET_PATH = 107
"""Longest Unix socket path Linux takes (sun_path is 108 bytes with its NUL)."""
UNIX_SEND_BUFFER = 4 << 20
"""SO_SNDBUF of a Unix socket connection (Linux doubles it, and caps it at wmem_max)."""
STARTUP_FAILURE = 3  # uvicorn's exit status when a server does not start
HEAP_BLOCK_LIMIT = 32 << 20  # glibc's largest mmap threshold on 64-bit
HEAP_TRIM_LIMIT = 16 << 20
HEAP_ARENAS = 2
HEAP_TUNED = ("api", "processor", "storage")
"""Every service: the heap behaves the same whichever path (upload with or without a
checksum, replay, verify) and however many requests run at once."""


def tune_allocator() -> bool:
    """Keep MiB-sized buffers in glibc's heap instead of fresh mappings; return if it applied.

    Bodies cross each service in pieces of 64 KiB to 8 MiB.  glibc gives each piece
    over its (moving) mmap threshold a fresh mapping, so relayed bytes keep landing on
    pages the kernel must fault in and zero; with the threshold at glibc's maximum the
    memory is reused instead.  The CLI's `upload` and `replay` move bytes the same way.
    Two arenas at most, each trimmed past 16 MiB: glibc otherwise opens an arena per
    thread (up to 8 per core), each keeping what its thread freed, so a service's
    resident set grew with the requests it had served at once.  The figures are in the
    README (Performance).  Elsewhere than glibc nothing changes.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied: list[int] = [mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCK_LIMIT),
                          mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_LIMIT),
                          mallopt(_M_ARENA_MAX, HEAP_ARENAS)]
    return applied == [1, 1, 1]


def configure_logging(level: str) -> None:
    """Log to stderr; our loggers never format secrets, and httpx's per-request lines
    (URLs of every internal call) only at debug level."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "debug":
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _pick(preferred: str, fallback: str) -> str:
    return preferred if importlib.util.find_spec(preferred) is not None else fallback


def http_protocol() -> type[asyncio.Protocol] | str:
    """Return uvicorn's `http` choice: httptools without uvicorn's body copies, else h11."""
    if importlib.util.find_spec("httptools") is None:
        return "h11"
    from sessions.common._bodyproto import BodyProtocol

    return BodyProtocol


def uvicorn_config(app: FastAPI, settings: CommonSettings, *, cert: Path | None,
                   key: Path | None) -> uvicorn.Config:
    """Return how uvicorn serves a service: no WebSocket protocol (no route is one, and
    loading it costs resident memory), no access log, TLS as the settings say."""
    import uvicorn

    client_ca = settings.tls_client_ca_file if cert is not None else None
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, loop=_pick("uvloop", "asyncio"),
        http=http_protocol(), ws="none", access_log=False, lifespan="on",
        timeout_graceful_shutdown=10,
        log_level=settings.log_level, server_header=False, ssl_certfile=cert, ssl_keyfile=key,
        ssl_ca_certs=None if client_ca is None else str(client_ca),
        ssl_cert_reqs=ssl.CERT_NONE if client_ca is None else ssl.CERT_REQUIRED)


def serve(name: str, load_settings: Callable[[], S], create_app: Callable[[S], FastAPI]) -> int:
    """Serve one service until it is stopped; return the exit status (2: bad configuration).

    Every secret is read before the app is built, so a missing or malformed one exits 2
    naming the variable, as does a data directory the service may not write.
    """
    if name in HEAP_TUNED:
        tune_allocator()
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        settings.preflight()
        cert, key = settings.tls_files()
        app = create_app(settings)
    except ConfigError as exc:
        print(f"error: {name}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a data directory it may not write
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {name}: {exc.strerror or type(exc).__name__}{where}", file=sys.stderr)
        return 2
    import uvicorn

    config = uvicorn_config(app, settings, cert=cert, key=key)
    server = uvicorn.Server(config)
    uds = settings.listen_uds
    if uds is None:
        server.run()
    else:
        try:
            sockets = [config.bind_socket(), bind_unix(uds)]
        except OSError as exc:
            print(f"error: {name}: cannot listen on {uds}: {exc.strerror}", file=sys.stderr)
            return 2
        try:
            server.run(sockets=sockets)
        finally:
            uds.unlink(missing_ok=True)
    return 0 if server.started else STARTUP_FAILURE


def _accepting(path: Path) -> bool:
    """Return whether a process accepts connections on the Unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
    return True


def bind_unix(path: Path) -> socket.socket:
    """Return a stream socket bound to `path`, readable and writable by this user only.

    A socket file left by a service that was killed is replaced; one a live process
    still accepts on, or any other file at `path`, is not (OSError).  The directory is
    made if missing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise FileExistsError(errno.EEXIST, "not a socket", str(path))
        if _accepting(path):
            raise OSError(errno.EADDRINUSE, "another process listens there", str(path))
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
    except BaseException:
        sock.close()
        raise
    return sock


def widen_unix_send_buffer(transport: asyncio.BaseTransport) -> None:
    """Raise the send buffer of a Unix socket connection to UNIX_SEND_BUFFER; others unchanged.

    A Unix stream socket queues at most its send buffer (net.core.wmem_default,
    ~208 KiB) at the peer: each write is then cut short and read in small pieces.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SEND_BUFFER)
