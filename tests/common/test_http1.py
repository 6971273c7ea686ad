"""The head codec's transport errors (`_http1`) are httpx's family: same names, same ranks.

The CLI's bulk path raises them without importing httpx, and LucidClient translates
them through the mapping it uses for httpx's (`ConnectError` before the timeouts, the
class name in the message): that only holds while each of ours sits where httpx's
namesake does.  The services' transport raises httpx's own in their place.
"""

from __future__ import annotations

import inspect

import httpx
import pytest

from sessions.common import _http1

FAMILY = sorted(name for name, cls in inspect.getmembers(_http1, inspect.isclass)
                if issubclass(cls, _http1.TransportError))


def test_the_family_is_the_one_the_client_translates() -> None:
    assert FAMILY == sorted([
        "TransportError", "TimeoutException", "ConnectTimeout", "ReadTimeout", "WriteTimeout",
        "NetworkError", "ConnectError", "ReadError", "WriteError", "ProtocolError",
        "LocalProtocolError", "RemoteProtocolError"])


@pytest.mark.parametrize("name", FAMILY)
def test_each_error_ranks_as_its_httpx_namesake(name: str) -> None:
    ours, theirs = getattr(_http1, name), getattr(httpx, name)
    assert [c.__name__ for c in ours.__mro__ if c.__name__ in FAMILY] == [
        c.__name__ for c in theirs.__mro__ if c.__name__ in FAMILY]


def test_a_malformed_head_is_the_family_s_remote_protocol_error() -> None:
    with pytest.raises(_http1.RemoteProtocolError):
        _http1.parse_response_head(b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n")
    with pytest.raises(_http1.LocalProtocolError):
        _http1.request_head("GET", b"/", [(b"X", b"a\r\nInjected: 1")])
