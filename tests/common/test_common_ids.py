"""Session ids: 26 Crockford base32 characters, time-ordered, and one strict validator.

A naive reference decoder below checks the layout (48-bit milliseconds, then 80 random bits)
independently of the encoder under test.
"""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessions.common.errors import InvalidId
from sessions.common.ids import check_session_id, is_session_id, new_session_id

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MAX_MS = 2**48 - 1
GOOD = "01J9Z8X7W6V5T4S3R2Q1P0N9M8"


def decode(sid: str) -> int:
    """Return the 130-bit integer a Crockford base32 id spells (reference, not the module's)."""
    value = 0
    for ch in sid:
        value = value * 32 + CROCKFORD.index(ch)
    return value


def test_a_new_id_is_26_crockford_characters_and_validates() -> None:
    sid = new_session_id()
    assert len(sid) == 26
    assert set(sid) <= set(CROCKFORD)
    assert is_session_id(sid)
    assert check_session_id(sid) == sid


@pytest.mark.parametrize("ms", [0, 1, 1_700_000_000_000, MAX_MS], ids=["zero", "one", "2023",
                                                                       "max-48-bit"])
def test_the_first_48_bits_are_the_milliseconds(ms: int) -> None:
    sid = new_session_id(now_ms=ms)
    assert decode(sid) >> 80 == ms
    assert is_session_id(sid)


def test_the_default_clock_is_now_in_milliseconds() -> None:
    import time

    before = int(time.time() * 1000)
    ms = decode(new_session_id()) >> 80
    after = int(time.time() * 1000)
    assert before <= ms <= after


def test_ids_made_with_increasing_times_sort_in_that_order() -> None:
    times = [1_700_000_000_000 + 7 * i for i in range(300)] + [MAX_MS - 1, MAX_MS]
    made = [new_session_id(now_ms=ms) for ms in times]
    assert sorted(made) == made
    assert len(set(made)) == len(made)


@given(st.lists(st.integers(0, MAX_MS), min_size=2, max_size=20, unique=True))
def test_string_order_is_time_order(times: list[int]) -> None:
    by_time = [new_session_id(now_ms=ms) for ms in sorted(times)]
    assert sorted(by_time) == by_time


def test_ids_are_unique_within_one_millisecond() -> None:
    made = {new_session_id(now_ms=1_700_000_000_000) for _ in range(20_000)}
    assert len(made) == 20_000
    # the random 80 bits vary: the tails are not all the same
    assert len({sid[10:] for sid in made}) == 20_000


def test_ids_from_the_clock_are_unique() -> None:
    made = [new_session_id() for _ in range(10_000)]
    assert len(set(made)) == len(made)


@given(st.integers(0, MAX_MS))
def test_every_generated_id_validates(ms: int) -> None:
    sid = new_session_id(now_ms=ms)
    assert is_session_id(sid)
    assert check_session_id(sid) == sid
    assert sid[0] in "01234567"


BAD_IDS = {
    "lowercase": GOOD.lower(),
    "one-lowercase-letter": GOOD[:-1] + "m",
    "letter-I": GOOD[:-1] + "I",
    "letter-L": GOOD[:-1] + "L",
    "letter-O": GOOD[:-1] + "O",
    "letter-U": GOOD[:-1] + "U",
    "empty": "",
    "25-chars": GOOD[:25],
    "27-chars": GOOD + "0",
    "52-chars": GOOD + GOOD,
    "dot-dot-slash": "../" + GOOD[3:],
    "slash": GOOD[:13] + "/" + GOOD[14:],
    "backslash": GOOD[:13] + "\\" + GOOD[14:],
    "nul-inside": GOOD[:13] + "\x00" + GOOD[14:],
    "nul-suffix": GOOD + "\x00",
    "arabic-indic-digit": "\u0660" + GOOD[1:],
    "fullwidth-digit": GOOD[:-1] + "\uff18",
    "devanagari-digit": GOOD[:-1] + "\u0968",
    "leading-8": "8" + GOOD[1:],
    "leading-Z": "Z" + GOOD[1:],
    "newline-suffix": GOOD + "\n",
    "newline-replacing-last": GOOD[:-1] + "\n",
    "crlf-suffix": GOOD + "\r\n",
    "space-suffix": GOOD + " ",
    "tab-suffix": GOOD + "\t",
    "space-prefix": " " + GOOD,
    "newline-prefix": "\n" + GOOD,
    "hyphenated": GOOD[:13] + "-" + GOOD[14:],
    "percent-encoded": "%2E%2E%2F" + GOOD[9:],
}


@pytest.mark.parametrize("value", list(BAD_IDS.values()), ids=list(BAD_IDS))
def test_malformed_ids_are_rejected(value: str) -> None:
    assert not is_session_id(value)
    with pytest.raises(InvalidId) as info:
        check_session_id(value)
    err = info.value
    assert (err.status, err.code) == (400, "invalid_id")
    assert err.detail == "session id must be 26 characters of Crockford base32"


@pytest.mark.parametrize("value", [None, 12, b"01J9Z8X7W6V5T4S3R2Q1P0N9M8", [GOOD]],
                         ids=["none", "int", "bytes", "list"])
def test_non_strings_are_not_ids(value: object) -> None:
    assert is_session_id(value) is False


def test_the_boundaries_of_the_alphabet_validate() -> None:
    assert is_session_id("0" * 26)
    assert is_session_id("7" + "Z" * 25)
    assert not is_session_id("8" + "0" * 25)


@given(st.text(max_size=40))
def test_arbitrary_text_validates_only_if_it_is_26_alphabet_chars(value: str) -> None:
    expected = (len(value) == 26 and value[0] in "01234567"
                and all(c in CROCKFORD for c in value))
    assert is_session_id(value) is expected


@given(st.text(alphabet=CROCKFORD + "ILOUilou" + string.ascii_lowercase + "\n /.",
               min_size=24, max_size=28))
def test_near_miss_text_validates_only_if_it_is_26_alphabet_chars(value: str) -> None:
    expected = re.fullmatch(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", value) is not None
    assert is_session_id(value) is expected
    if expected:
        assert len(value) == 26 and set(value) <= set(CROCKFORD)
