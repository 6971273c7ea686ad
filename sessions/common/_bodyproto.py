"""uvicorn's httptools protocol, handing request bodies up as they were parsed.

Stock uvicorn appends every body piece httptools parsed to a `bytearray` and hands
the application `bytes(...)` of it: two copies of every received byte on top of the
event loop's and the parser's own, on each of the three hops a session's bytes take.
`BodyProtocol` keeps the parsed pieces instead and hands up the one piece pending as
is (several, rare, are joined once).  Parsing, flow control (reads pause past
uvicorn's HIGH_WATER_LIMIT pending), keep-alive and responses stay uvicorn's: only
`on_body` is replaced, and it relies on `RequestResponseCycle.receive` returning
`bytes(cycle.body)` and then resetting `cycle.body`.  The served versions are pinned
(pyproject: uvicorn < 0.60); `tests/common/test_bodyproto.py` holds this reading of
uvicorn to the installed one.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sessions.common.serve import widen_unix_send_buffer


class PendingBody:
    """Body pieces parsed and not yet received: `bytes()` of it is the one piece, not a copy."""

    __slots__ = ("_pieces", "_size")

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._size = 0

    def add(self, piece: bytes) -> None:
        """Keep piece (bytes, as the parser made it) until the application receives it."""
        self._pieces.append(piece)
        self._size += len(piece)

    def __len__(self) -> int:
        return self._size

    def __bytes__(self) -> bytes:
        pieces = self._pieces
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


class BodyProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose request bodies reach the application without uvicorn's copies
    (and whose Unix socket connections get the service transport's send buffer)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        widen_unix_send_buffer(transport)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        held: object = cycle.body  # uvicorn types it bytearray; this class puts a PendingBody there
        if isinstance(held, PendingBody):
            pending = held
        else:  # receive() left a fresh bytearray
            pending = PendingBody()
            if cycle.body:  # never here: on_body is the only writer; kept whole all the same
                pending.add(bytes(cycle.body))
            cycle.body = pending  # type: ignore[assignment]
        pending.add(body)
        if len(pending) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()
