"""The Range header (RFC 9110 §14.1-14.2): one byte range, or the whole representation.

Two readers share one parser of the `bytes` ranges-specifier.  `parse_range` is the
replay's, lenient as §14.2 allows; `parse_one_range` is storage's internal chunk
GET's, strict: anything but one valid `bytes` range-spec is a 400 `invalid_range`,
since only our own processor sends it.

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

from sessions.common.errors import InvalidRange, RangeNotSatisfiable

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
    return _resolve(*specs[0], size=size)


def parse_one_range(header: str, *, size: int) -> ByteRange:
    """Return the one byte range a strict reader asked for (storage's chunk GET).

    Requires size >= 0.  Raises InvalidRange (400) unless header is a valid `bytes`
    ranges-specifier of exactly one range-spec, RangeNotSatisfiable (416,
    `extra={"size": size}`) if that spec selects nothing of the `size` bytes.
    """
    specs = _specs(header)
    if specs is None or len(specs) != 1:
        raise InvalidRange("Range must be one `bytes=first-last`, `bytes=first-` or "
                           "`bytes=-suffix`")
    try:
        return _resolve(*specs[0], size=size)
    except RangeNotSatisfiable:
        raise RangeNotSatisfiable(f"the range selects none of the {size} bytes stored",
                                  extra={"size": size}) from None


def _resolve(first: int | None, last: int | None, *, size: int) -> ByteRange:
    """Return the part of `size` bytes a valid range-spec selects; RangeNotSatisfiable if none."""
    if first is None:
        assert last is not None
        if last == 0 or size == 0:
            raise RangeNotSatisfiable(extra={"size": size})
        return ByteRange(max(0, size - last), size)
    if first >= size:
        raise RangeNotSatisfiable(extra={"size": size})
    return ByteRange(first, size if last is None else min(size, last + 1))
