"""Property-based fuzzing of the replay's Range parser against a naive RFC 9110 reference.

The reference reads the grammar of §14.1.1 literally (split on "=", ",", "-"; digits
are ASCII only) and selects bytes by enumerating every position of a small stream, so
it shares no code or trick (digit capping, clamping arithmetic) with the parser.  The
parser may answer only: None (send the whole stream), a ByteRange inside the stream,
or RangeNotSatisfiable (416) carrying the size; anything else is a finding.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sessions.common.errors import RangeNotSatisfiable
from sessions.common.ranges import ByteRange, parse_range

Outcome = ByteRange | str | None  # a range, "416", or None for the whole stream


def reference(header: str, size: int) -> Outcome:
    """Return what RFC 9110 §14.1-14.2 (as this service applies it) selects for header."""
    unit, eq, range_set = header.strip(" \t").partition("=")
    if not eq or unit.lower() != "bytes":
        return None
    elements = [e.strip(" \t") for e in range_set.split(",")]
    specs = []
    for element in elements:
        if element == "":
            continue
        parts = element.split("-")
        if len(parts) != 2 or not all(re.fullmatch(r"[0-9]*", p) for p in parts):
            return None
        first, last = parts
        if first == "" and last == "":
            return None
        if first and last and int(last) < int(first):
            return None
        specs.append((first, last))
    if len(specs) != 1:
        return None
    first, last = specs[0]
    if first == "":
        n = int(last)
        chosen = [i for i in range(size) if i >= size - n] if n > 0 else []
    else:
        lo, hi = int(first), (int(last) if last else size - 1)
        chosen = [i for i in range(size) if lo <= i <= hi]
    if not chosen:
        return "416"
    return ByteRange(chosen[0], chosen[-1] + 1)


def outcome(header: str, size: int) -> Outcome:
    """Return what parse_range answers, mapping its one documented error to "416"."""
    try:
        got = parse_range(header, size=size)
    except RangeNotSatisfiable as err:
        assert (err.status, err.code, err.extra) == (416, "range_not_satisfiable",
                                                      {"size": size})
        return "416"
    assert got is None or 0 <= got.start < got.end <= size
    return got


HEADER_CHARS = st.sampled_from("0123456789-=,; \tbyteBYTESx+.")
NUMBER = st.one_of(st.integers(0, 80).map(str), st.integers(0, 10**40).map(str),
                   st.text("0123456789", max_size=60), st.just(""))
SPEC = st.tuples(NUMBER, st.sampled_from(["-", "--", "", " -"]), NUMBER).map("".join)
OWS = st.sampled_from(["", " ", "\t", "  "])
STRUCTURED = st.builds(
    lambda unit, eq, specs, seps: unit + eq + "".join(
        s + sep for s, sep in zip(specs, seps, strict=False)).rstrip(",") if specs else unit + eq,
    st.sampled_from(["bytes", "BYTES", "Bytes", "items", "", "byte"]),
    st.sampled_from(["=", "", " =", "= "]),
    st.lists(SPEC, max_size=4),
    st.lists(st.builds(lambda a, b: a + "," + b, OWS, OWS), min_size=4, max_size=4),
)


@settings(max_examples=1500)
@given(header=st.one_of(STRUCTURED, st.text(HEADER_CHARS, max_size=40)), size=st.integers(0, 64))
@example(header="bytes=10-5", size=20)
@example(header="bytes=abc", size=20)
@example(header="bytes=0-1,5-6", size=20)
@example(header="bytes=-0", size=20)
@example(header="bytes=0-", size=0)
@example(header="bytes=" + "9" * 50 + "-", size=20)
def test_parser_matches_the_naive_reference(header: str, size: int) -> None:
    assert outcome(header, size) == reference(header, size)


@settings(max_examples=500)
@given(header=st.text(max_size=200), size=st.integers(0, 2**63))
def test_any_text_gets_a_documented_answer(header: str, size: int) -> None:
    """Arbitrary Unicode: no exception but the documented 416, never a range off the stream."""
    outcome(header, size)


@pytest.mark.parametrize(("header", "expected"), [
    ("bytes=10-5", None),           # defect 7: was 400; an invalid range-spec is ignored
    ("bytes=abc", None),            # defect 7: was 400
    ("bytes=0-1,5-6", None),        # defect 7: was 416; several ranges: the whole stream
    ("bytes=5-6,0-1", None),
    ("bytes=3-4", ByteRange(3, 5)),
    ("bytes=30-", "416"),
], ids=["reversed", "letters", "multi", "multi-unordered", "single", "past-end"])
def test_regressions_of_defect_7(header: str, expected: Outcome) -> None:
    assert outcome(header, 20) == expected
