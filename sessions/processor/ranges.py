"""The Range header of a replay (RFC 9110 §14.1-14.2): one byte range, or the whole stream.

What a replay answers, for a representation of `size` bytes:

* no Range, a unit other than `bytes`, or an invalid ranges-specifier (bad syntax,
  `last-pos` below `first-pos`): the header is ignored and the whole stream is sent,
  200 (§14.2: a server MUST ignore an unknown unit and MAY ignore an invalid one);
* several range-specs: ignored too, 200 with the whole stream (§14.2 lets a server
  ignore Range; multipart/byteranges is not produced);
* one satisfiable range-spec: 206 with that range;
* one unsatisfiable range-spec (`first-pos` >= size, or a zero suffix-length, or any
  range of an empty stream): 416 with `Content-Range: bytes */size` (§15.5.17).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sessions.common.errors import RangeNotSatisfiable

_SPEC = re.compile(r"([0-9]*)-([0-9]*)")
_HUGE = 10**30  # any position at least this large is past every stream: int() stays cheap
_MAX_SPECS = 100  # §14.2 lets a server ignore a request of many ranges; don't even parse them


@dataclass(frozen=True, slots=True)
class ByteRange:
    """The half-open plaintext byte range [start, end) a reader asked for."""

    start: int
    end: int


def _number(digits: str) -> int:
    significant = digits.lstrip("0")
    return _HUGE if len(significant) > 30 else int(significant or "0")


def _specs(header: str) -> list[tuple[int | None, int | None]] | None:
    """Return the range-specs of a valid `bytes` ranges-specifier, or None if it is not one."""
    unit, sep, range_set = header.strip().partition("=")
    if not sep or unit.lower() != "bytes":
        return None
    elements = [e.strip(" \t") for e in range_set.split(",", _MAX_SPECS)]
    if len(elements) > _MAX_SPECS:
        return None
    specs: list[tuple[int | None, int | None]] = []
    for element in filter(None, elements):  # §5.6.1.2: empty list elements are ignored
        m = _SPEC.fullmatch(element)
        if m is None or m.group(1) == m.group(2) == "":
            return None
        first = _number(m.group(1)) if m.group(1) else None
        last = _number(m.group(2)) if m.group(2) else None
        if first is not None and last is not None and last < first:
            return None  # §14.1.1: an invalid range-spec
        specs.append((first, last))
    return specs or None


def parse_range(header: str | None, *, size: int) -> ByteRange | None:
    """Return the one byte range to send, or None to send the whole stream (status 200).

    Requires size >= 0.  Raises RangeNotSatisfiable (416, `extra={"size": size}`) only
    for a single valid range-spec that selects nothing of the stream (RFC 9110 §14.1.1).
    """
    specs = None if header is None else _specs(header)
    if specs is None or len(specs) != 1:
        return None
    first, last = specs[0]
    if first is None:
        assert last is not None
        if last == 0 or size == 0:
            raise RangeNotSatisfiable(extra={"size": size})
        return ByteRange(max(0, size - last), size)
    if first >= size:
        raise RangeNotSatisfiable(extra={"size": size})
    return ByteRange(first, size if last is None else min(size, last + 1))
