"""The service transport's response parser against h11's: the same bytes, the same verdict.

Every byte sequence (valid and malformed status lines, fields, framings, chunked
bodies, trailers; many drawn by hypothesis) goes through h11 as the client of a
GET and through the wire transport's own receive path, fed in random pieces then
an EOF.  Both must accept (same status, same fields, same body bytes) or both
must refuse.

The wire transport is deliberately stricter than h11 in four ways, each applied
to h11's verdict here as a rule (and each shown by a test of its own below):
a field section with both Content-Length and Transfer-Encoding (RFC 9112 6.3,
request smuggling), a control character in a field value or reason phrase
(RFC 9110 5.5), an HTTP major version other than 1, and a bare LF as a line end
(RFC 9112 2.2 allows either; our upstreams send CRLF).  Generated heads use CRLF
only, so the last never arises in the differential test.
"""

from __future__ import annotations

import asyncio
import re
from typing import TypeVar

import h11
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessions.common._wire import WireTransport, _receive, _Wire

T = TypeVar("T")
Fields = list[tuple[bytes, bytes]]
Verdict = tuple[int, Fields, bytes] | None  # (status, fields, body) if accepted, else None

_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


# -- the two parsers -------------------------------------------------------------------------


def h11_verdict(data: bytes) -> Verdict:
    """Return h11's verdict on `data` as the answer to a GET, with our stricter rules applied."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "upstream")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    body = bytearray()
    status, fields = 0, []
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.InformationalResponse | h11.Response):
                if _stricter_refuses(event.headers, event.http_version, event.reason):
                    return None
                status, fields = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                if _stricter_refuses(event.headers, b"1.1", b""):
                    return None
                return status, fields, bytes(body)
            else:  # ConnectionClosed (or NEED_DATA, impossible after EOF) before the end
                return None
    except h11.RemoteProtocolError:
        return None


def _stricter_refuses(headers: h11._headers.Headers, version: bytes, reason: bytes) -> bool:
    """Return whether one of the wire transport's stricter rules refuses what h11 accepted."""
    names = {name for name, _ in headers}
    return (not version.startswith(b"1.")
            or {b"content-length", b"transfer-encoding"} <= names
            or any(_CTL.search(value) for _, value in headers)
            or _CTL.search(reason.replace(b"\t", b" ")) is not None)


async def _wire_verdict(pieces: list[bytes]) -> Verdict:
    wire = _Wire()
    for piece in pieces:
        if piece:
            wire.data_received(piece)
    wire.eof_received()
    try:
        resp = await _receive(WireTransport(), wire, "GET", seconds=5.0, complete=True)
        body = await resp.aread()
    except httpx.RemoteProtocolError:
        return None
    return resp.status_code, [(n.lower(), v) for n, v in resp.headers.raw], body


def wire_verdict(data: bytes, cuts: list[int] | None = None) -> Verdict:
    """Return the wire transport's verdict on `data`, delivered in pieces cut at `cuts`."""
    bounds = sorted({c % (len(data) + 1) for c in cuts or []} | {0, len(data)})
    pieces = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    return asyncio.run(_wire_verdict(pieces))


# -- generated responses ---------------------------------------------------------------------

TCHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
VALUE_BYTES = bytes(b for b in range(256) if b != 0x0A)  # bare LF: a deliberate difference
TE_VALUES = [b"chunked", b"Chunked", b"CHUNKED", b"gzip", b"gzip, chunked", b"chunked, gzip",
             b"chunked, chunked", b"identity", b"", b"chunked;q=1", b"x-custom"]


def _mostly(valid: st.SearchStrategy[T], wild: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """Draw from `valid` four times in five, else from `wild`."""
    return st.integers(0, 4).flatmap(lambda n: wild if n == 0 else valid)


TEXT = st.lists(st.sampled_from(b"abc XYZ019-_.;=/\t\xe9"), max_size=10).map(bytes)
WILD_BYTES = st.lists(st.sampled_from(VALUE_BYTES), max_size=10).map(bytes)


def status_lines() -> st.SearchStrategy[bytes]:
    valid = st.tuples(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
                      st.sampled_from([b"200", b"201", b"204", b"206", b"304", b"404", b"500"]),
                      st.sampled_from([b" OK", b"", b" ", b" Fine Thanks", b" a\tb"]))
    wild = st.tuples(
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.10",
                         b"http/1.1", b"HTTP/1", b" HTTP/1.1"]),
        st.sampled_from([b"999", b"100", b"099", b"000", b"20", b"2000", b"abc", b"200"]),
        st.one_of(st.just(b""), WILD_BYTES.map(lambda r: b" " + r), WILD_BYTES))
    return st.integers(0, 4).flatmap(lambda n: wild if n == 0 else valid).map(
        lambda parts: parts[0] + b" " + parts[1] + parts[2])


@st.composite
def fields(draw: st.DrawFn, *, framing: bool = False) -> bytes:
    """Return one field line (perhaps folded): mostly valid, sometimes not."""
    names = ["Content-Length", "Transfer-Encoding"] if framing else \
        ["Connection", "X-A", "Content-Type", "Trailer", "ETag"]
    name = draw(_mostly(st.one_of(st.sampled_from(names).map(str.encode),
                                  st.text(TCHARS, min_size=1, max_size=8).map(str.encode)),
                        st.sampled_from([b"", b"Bad Name", b"x\x01", b"Na:me", b"X\x7f",
                                         b"Content-Length", b"Transfer-Encoding"])))
    if name.lower() == b"transfer-encoding":
        value = draw(st.sampled_from(TE_VALUES))
    elif name.lower() == b"content-length":
        value = draw(st.sampled_from([b"0", b"5", b"11", b"+5", b"-1", b"5, 5", b"5, 6",
                                      b"0x5", b"", b"9" * 21, b"005", b"5 5"]))
    else:
        value = draw(_mostly(TEXT, st.one_of(
            WILD_BYTES, st.sampled_from([b"a\x01b", b"a\x7fb", b"a\x00b", b"a\rb", b"\x0c"]))))
    ows = st.sampled_from([b"", b" ", b" ", b"\t", b"  \t"])
    fold = draw(st.sampled_from([b"", b"", b"", b"", b"\r\n folded", b"\r\n\tmore", b"\r\n "]))
    return name + b":" + draw(ows) + value + draw(ows) + fold


def _chunked(pieces: list[bytes], sizes: list[bytes | None], ext: list[bytes],
             trailers: list[bytes], last: bytes) -> bytes:
    out = bytearray()
    for i, piece in enumerate(pieces):
        size = sizes[i % len(sizes)] if sizes else None
        out += (size if size is not None else b"%x" % len(piece)) + ext[i % len(ext)]
        out += b"\r\n" + piece + b"\r\n"
    out += last + b"\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"
    return bytes(out)


PAYLOAD = st.lists(st.sampled_from(VALUE_BYTES), max_size=20).map(bytes)


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    pieces = draw(st.lists(PAYLOAD.filter(bool), max_size=4))
    sizes = draw(_mostly(st.just([]), st.lists(st.one_of(st.none(), st.sampled_from(
        [b"0", b"1", b"3", b"zz", b"00005", b"0" * 19 + b"3", b"0" * 21 + b"3", b"-1", b" 3",
         b"3 ", b"3\t", b"A", b"f"])), min_size=1, max_size=3)).map(list))
    ext = draw(st.lists(_mostly(st.sampled_from([b"", b";a=1", b";a=\"b c\"", b" ", b" ;x"]),
                                st.sampled_from([b";", b";\x01", b";x\r", b"\t", b"\r",
                                                 b"\x00"])),
                        min_size=1, max_size=3))
    trailers = draw(st.lists(fields(), max_size=2))
    last = draw(_mostly(st.sampled_from([b"0", b"000", b"0;ext=1", b"0 "]),
                        st.sampled_from([b"", b"00", b"0x0", b"1"])))
    return _chunked(pieces, sizes, ext, trailers, last)


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    """Return an interim answer perhaps, a head, and a body framed mostly as the head says."""
    interim = draw(st.sampled_from([b"", b"", b"", b"HTTP/1.1 100 Continue\r\n\r\n",
                                    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"]))
    mode = draw(st.sampled_from(["length", "length", "chunked", "chunked", "close", "wild"]))
    if mode == "chunked":
        body = draw(chunked_bodies())
        framing = [b"Transfer-Encoding: " + draw(st.one_of(st.just(b"chunked"),
                                                           st.sampled_from(TE_VALUES)))]
        framing += draw(_mostly(st.just([]), st.sampled_from([
            [b"Content-Length: %d" % len(body)], [b"Content-Length: 0"],
            [b"Transfer-Encoding: chunked"], [b"Transfer-Encoding: identity"]])))
    elif mode == "wild":
        body = draw(PAYLOAD)
        framing = draw(st.lists(fields(framing=True), max_size=2))
    else:
        body = draw(PAYLOAD)
        n = len(body)
        framing = [] if mode == "close" else draw(_mostly(
            st.just([b"Content-Length: %d" % n]),
            st.sampled_from([[b"Content-Length: %d" % n] * 2, [b"Content-Length: %d, %d" % (n, n)],
                             [b"Content-Length: %d" % n, b"Content-Length: %d" % (n + 1)],
                             [b"Content-Length: %d, %d" % (n, n + 1)]])))
    extra = draw(st.lists(fields(), max_size=4))
    lines = draw(st.permutations(framing + extra))
    head = draw(status_lines()) + b"".join(b"\r\n" + line for line in lines)
    return interim + head + b"\r\n\r\n" + body


# -- the differential tests ------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=responses(), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_generated_responses_get_h11s_verdict(data: bytes, cuts: list[int]) -> None:
    assert wire_verdict(data, cuts) == h11_verdict(data), data


VALID = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nto the close",
    b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n  b\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-Obs: caf\xe9\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"
    b"5;name=\"va lue\"\r\nhello\r\n1 \r\n!\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
]
INVALID = [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\nTransfer-Encoding: gzip\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n folded-first: x\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nBad Trailer\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 ;x\r\nhello\r\n0\r\n\r\n",
    b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
]


@pytest.mark.parametrize("data", VALID + INVALID)
def test_chosen_responses_get_h11s_verdict(data: bytes) -> None:
    expected = h11_verdict(data)
    assert (expected is not None) == (data in VALID), "the case is filed in the wrong list"
    assert wire_verdict(data) == expected
    assert wire_verdict(data, list(range(len(data)))) == expected  # one byte at a time


# -- where the wire transport is stricter than h11, on purpose ---------------------------------


@pytest.mark.parametrize(("why", "data"), [
    ("RFC 9112 6.3: Content-Length with Transfer-Encoding",
     b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5\r\nhello\r\n0\r\n\r\n"),
    ("a control character in a field value",
     b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 2\r\n\r\nok"),
    ("DEL in a field value", b"HTTP/1.1 200 OK\r\nX-A: a\x7f\r\nContent-Length: 2\r\n\r\nok"),
    ("a control character in a trailer",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: \x1b[2J\r\n\r\n"),
    ("a control character in the reason phrase",
     b"HTTP/1.1 200 O\x1bK\r\nContent-Length: 2\r\n\r\nok"),
    ("an HTTP major version other than 1", b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ("bare LF line ends", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"),
])
def test_where_h11_accepts_the_wire_transport_refuses(why: str, data: bytes) -> None:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "upstream")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), h11.Response), "h11 accepts it"
    assert wire_verdict(data) is None, why


def test_the_oracle_applies_the_stricter_rules() -> None:
    """The differential test compares against h11 plus the rules above, not a weaker h11."""
    assert h11_verdict(b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 0\r\n\r\n") is None
    assert h11_verdict(b"HTTP/1.1 200 OK\r\nX-A: a\tb\r\nContent-Length: 0\r\n\r\n") == \
        (200, [(b"x-a", b"a\tb"), (b"content-length", b"0")], b"")
