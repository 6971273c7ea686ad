"""The patterns the OpenAPI documents state agree with the validators the services run."""

from __future__ import annotations

import re
import sys
import unicodedata

import pytest
from pydantic import ValidationError

from sessions.common.ids import SESSION_ID_PATTERN, is_session_id, new_session_id
from sessions.common.models import (
    _CONTROL,
    _CONTROL_CLASS,
    LABEL_VALUE_DOC,
    MAX_CHUNK_INDEX,
    CreateSession,
)
from sessions.storage.records import MAX_CHUNK_INDEX as STORAGE_MAX_CHUNK_INDEX


def test_the_documented_label_value_pattern_is_the_validators_rule() -> None:
    """Every code point: excluded by the documented class iff CreateSession refuses it."""
    assert LABEL_VALUE_DOC["pattern"] == "^[^" + _CONTROL_CLASS + "]*$"
    excluded = re.compile("[" + _CONTROL_CLASS + "]")
    wrong = [hex(c) for c in range(sys.maxunicode + 1)
             if bool(excluded.fullmatch(chr(c))) != (unicodedata.category(chr(c)) in _CONTROL)]
    assert wrong == [], f"pattern and validator disagree (Unicode {unicodedata.unidata_version})"


@pytest.mark.parametrize("value", ["a\u202eb", "\x00", "x\u200by", "\U000e0001"])
def test_a_control_or_format_character_is_refused(value: str) -> None:
    with pytest.raises(ValidationError):
        CreateSession.model_validate({"labels": {"k": value}})


@pytest.mark.parametrize("value", [True, "12", [1], 1.5])
def test_retention_days_is_a_json_integer(value: object) -> None:
    with pytest.raises(ValidationError):
        CreateSession.model_validate({"retention_days": value})
    assert CreateSession.model_validate({"retention_days": 12.0}).retention_days == 12


def test_the_documented_id_pattern_is_the_id_rule() -> None:
    pattern = re.compile(SESSION_ID_PATTERN)
    for value in [new_session_id(), "8" + new_session_id()[1:], new_session_id()[:-1],
                  new_session_id().lower(), "I" * 26, "0" * 26]:
        assert bool(pattern.fullmatch(value)) == is_session_id(value), value


def test_one_chunk_index_bound_for_every_service() -> None:
    assert MAX_CHUNK_INDEX == STORAGE_MAX_CHUNK_INDEX
