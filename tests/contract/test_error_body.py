"""`decode_error` (no pydantic: the CLI's replay reads errors with it) against `ErrorBody`.

The error body's shape is defined once, by the `ErrorBody` model the services render
and document.  Every client reads it with `operations.decode_error`, a plain JSON
reader, so a replay loads no model.  Run on the same bytes, the two must agree: a
body the model accepts is read into the same code, detail and extra fields.  The
reader is the more lenient one, and only where the CLI still has something to say:
a body with no string `detail` (the code is kept, the detail left empty), or one
that Python's JSON decodes and pydantic's does not (UTF-16 or UTF-32, a UTF-8 byte
order mark, a lone surrogate escape).  It never raises, whatever the bytes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sessions.contract import operations as ops
from sessions.contract.models import ErrorBody

SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
           | st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
KEYS = st.sampled_from(["error", "detail", "offset", "size", "state", "Error", ""])
OBJECTS = st.dictionaries(KEYS, VALUES, max_size=5)
SHAPED = st.fixed_dictionaries(
    {"error": st.text(max_size=12) | SCALARS, "detail": st.text(max_size=12) | VALUES},
    optional={"offset": st.integers(), "size": st.integers(), "index": st.integers(),
              "reason": st.text(max_size=6), "state": st.text(max_size=6), "x": VALUES})


def _encoded(doc: Any, how: str) -> bytes:
    text = json.dumps(doc, ensure_ascii=how == "ascii")
    return text.encode("utf-16" if how == "utf-16" else "utf-8")


WELL_FORMED = st.fixed_dictionaries(
    {"error": st.text(max_size=12), "detail": st.text(max_size=12)},
    optional={"offset": st.integers(), "x": VALUES, "": VALUES})
BODIES = (st.tuples(WELL_FORMED, st.sampled_from(["ascii", "utf-8"])).map(lambda p: _encoded(*p))
          | st.tuples(SHAPED | OBJECTS | VALUES, st.sampled_from(["ascii", "utf-8", "utf-16"]))
          .map(lambda pair: _encoded(*pair))
          | st.binary(max_size=40)
          | st.tuples(SHAPED, st.integers(min_value=0, max_value=60))
            .map(lambda pair: _encoded(pair[0], "utf-8")[:pair[1]]))  # cut short


def model_reading(body: bytes) -> ErrorBody | None:
    try:
        return ErrorBody.model_validate_json(body)
    except ValidationError:
        return None


CHOSEN = [
    b'{"error": "offset_mismatch", "detail": "at 7", "offset": 7}',
    b'{"error": "a", "detail": "b", "error": "c"}',  # the last of a repeated key
    b'{"error": "\\ud800", "detail": "lone surrogate"}',
    b'{"error": "a", "detail": "b"} trailing',
    b'\xef\xbb\xbf{"error": "a", "detail": "b"}',  # a UTF-8 byte order mark
    b'{"error": "a", "detail": "b", "n": 1e400, "m": 123456789012345678901234567890}',
    b'{"error": "a", "detail": "b", "n": NaN}',
    b'{"error": "a", "detail": null}', b'{"error": "a"}', b'{"error": 5, "detail": "b"}',
    b'{"error": "a", "detail": "\xff"}', b'{"error": "a", "detail": "b"', b"null", b"",
    b"<html>", b"[1]", b'"error"', json.dumps({"error": "a", "detail": "b"}).encode("utf-16"),
]


@pytest.mark.parametrize("body", CHOSEN)
def test_chosen_bodies_read_alike(body: bytes) -> None:
    check(404, body)


@settings(max_examples=3000, deadline=None)
@given(status=st.sampled_from([400, 401, 403, 404, 409, 416, 500, 502, 507]), body=BODIES)
def test_decode_error_reads_what_the_model_reads(status: int, body: bytes) -> None:
    event(check(status, body))


def check(status: int, body: bytes) -> str:
    """Hold decode_error's reading of `body` to ErrorBody's; return which of them read it."""
    reply = ops.decode_error(status, body)  # never raises
    model = model_reading(body)
    if model is not None:
        assert (reply.recognised, reply.status, reply.code, reply.detail) == (
            True, status, model.error, model.detail), body
        assert _same(reply.extra, model.model_extra), body
        return "both"
    if not reply.recognised:
        assert (reply.code, reply.detail, reply.body()) == ("http_error", f"HTTP {status}", None)
        return "neither"
    # Accepted by the reader alone: no string detail, or bytes only Python's JSON reads.
    parsed = json.loads(body)
    assert isinstance(parsed, dict) and isinstance(parsed["error"], str)
    no_detail = not isinstance(parsed.get("detail"), str)
    assert no_detail or _only_python_reads(body), body
    assert reply.detail == ("" if no_detail else parsed["detail"])
    return "the reader alone"


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values (NaN included, which is not equal to itself)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _only_python_reads(body: bytes) -> bool:
    """Whether the body is not UTF-8, opens with a byte order mark or holds a lone surrogate."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return text.startswith("\ufeff") or any(
        0xD800 <= ord(c) <= 0xDFFF for c in json.dumps(json.loads(body), ensure_ascii=False))


def test_the_services_bodies_read_back_whole() -> None:
    """What a ServiceError renders is what a client reads, extra fields included."""
    from sessions.common.errors import OffsetMismatch, RangeNotSatisfiable

    for err in (OffsetMismatch(extra={"offset": 7}), RangeNotSatisfiable(extra={"size": 9})):
        body = json.dumps(err.body()).encode()
        model = ErrorBody.model_validate_json(body)
        reply = ops.decode_error(err.status, body)
        assert reply.body() == model.model_dump() == err.body()
