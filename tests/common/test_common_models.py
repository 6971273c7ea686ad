"""Request models shared by the gateway and the processor: the label rules and list parameters."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sessions.common.errors import InvalidId, InvalidParameter, ServiceError
from sessions.common.ids import new_session_id
from sessions.common.models import (
    LABEL_KEY,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_PAGE,
    MAX_UPLOAD_LENGTH,
    CreateSession,
    UploadLength,
    list_params,
)

SID = "01J9Z8X7W6V5T4S3R2Q1P0N9M8"
KEY_FIRST = "abcdefghijklmnopqrstuvwxyz0123456789"
KEY_REST = KEY_FIRST + "_.-"


def test_label_rules_are_the_documented_ones() -> None:
    assert (LABEL_KEY, MAX_LABELS, MAX_LABEL_VALUE, MAX_PAGE) == (
        r"[a-z0-9][a-z0-9_.-]{0,63}", 32, 256, 500)


@pytest.mark.parametrize("labels", [{"host\n": "x"}, {"k": "a\x7fb"}, {"k": "a\x85b"}],
                         ids=["key-newline-suffix", "value-del", "value-c1-control"])
def test_labels_reject_what_a_dollar_anchor_or_ascii_check_would_let_through(
        labels: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        CreateSession.model_validate({"labels": labels})


@pytest.mark.parametrize("params", [[("label", "host\n:x")], [("limit", "\u00b2")],
                                    [("limit", "1" * 5000)], [("limit", "\uff15")]],
                         ids=["label-key-newline", "limit-superscript-two", "limit-5000-digits",
                              "limit-fullwidth-five"])
def test_list_params_refuse_odd_digits_and_newlines(params: list[tuple[str, str]]) -> None:
    with pytest.raises(InvalidParameter):
        list_params(params)


# ----------------------------------------------------------------------------- CreateSession


def test_an_empty_body_means_no_labels_and_no_retention() -> None:
    spec = CreateSession.model_validate({})
    assert (spec.labels, spec.retention_days) == ({}, None)


GOOD_LABELS: dict[str, dict[str, str]] = {
    "typical": {"user": "alice", "host": "ws-17", "protocol": "rdp"},
    "one-char-key": {"a": "x", "7": "y"},
    "64-char-key": {"k" * 64: "v"},
    "key-punctuation": {"a_b.c-d": "v", "0-9": "v"},
    "empty-value": {"note": ""},
    "256-char-value": {"note": "v" * 256},
    "unicode-value": {"user": "Zoë 山田 🎥"},
    "spaces-and-tabs-free-value": {"title": "quarterly review, part 2 (final)"},
    "32-labels": {f"k{i}": str(i) for i in range(32)},
}


@pytest.mark.parametrize("labels", list(GOOD_LABELS.values()), ids=list(GOOD_LABELS))
def test_good_labels_are_accepted_unchanged(labels: dict[str, str]) -> None:
    assert CreateSession.model_validate({"labels": labels}).labels == labels


BAD_LABELS: dict[str, dict[str, str]] = {
    "uppercase-key": {"User": "alice"},
    "empty-key": {"": "v"},
    "leading-dot": {".hidden": "v"},
    "leading-dash": {"-x": "v"},
    "leading-underscore": {"_x": "v"},
    "65-char-key": {"k" * 65: "v"},
    "space-in-key": {"a b": "v"},
    "colon-in-key": {"a:b": "v"},
    "slash-in-key": {"a/b": "v"},
    "unicode-key": {"usér": "v"},
    "257-char-value": {"note": "v" * 257},
    "newline-in-value": {"note": "a\nb"},
    "tab-in-value": {"note": "a\tb"},
    "nul-in-value": {"note": "a\x00b"},
    "escape-in-value": {"note": "\x1b[31mred"},
    "33-labels": {f"k{i}": str(i) for i in range(33)},
}


@pytest.mark.parametrize("labels", list(BAD_LABELS.values()), ids=list(BAD_LABELS))
def test_bad_labels_are_rejected(labels: dict[str, str]) -> None:
    with pytest.raises(ValidationError) as info:
        CreateSession.model_validate({"labels": labels})
    assert [e["loc"][0] for e in info.value.errors()] == ["labels"]


@pytest.mark.parametrize("days", [1, 30, 36500])
def test_retention_in_range_is_accepted(days: int) -> None:
    assert CreateSession.model_validate({"retention_days": days}).retention_days == days


@pytest.mark.parametrize("days", [0, -1, 36501, 10**9])
def test_retention_out_of_range_is_rejected(days: int) -> None:
    with pytest.raises(ValidationError) as info:
        CreateSession.model_validate({"retention_days": days})
    assert [e["loc"] for e in info.value.errors()] == [("retention_days",)]


@pytest.mark.parametrize("body", [
    {"labels": {}, "owner": "mallory"},
    {"retention": 5},
    {"wrapped_key": "x"},
    {"id": SID},
], ids=["owner", "misspelt-retention", "wrapped-key", "id"])
def test_extra_fields_are_forbidden(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        CreateSession.model_validate(body)
    assert {e["type"] for e in info.value.errors()} == {"extra_forbidden"}


@pytest.mark.parametrize("body", [
    {"labels": ["user", "alice"]},
    {"labels": {"user": 5}},
    {"labels": None},
    {"retention_days": "forever"},
    {"upload_length": False}, {"upload_length": "12"}, {"upload_length": 1.5},
    {"upload_length": -1}, {"upload_length": MAX_UPLOAD_LENGTH + 1}, {"upload_length": 1e300},
], ids=["list-labels", "int-value", "null-labels", "word-retention", "bool-length",
        "string-length", "fraction-length", "negative-length", "huge-length", "huge-float"])
def test_wrongly_typed_fields_are_rejected(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CreateSession.model_validate(body)


@given(st.dictionaries(
    st.builds(lambda a, b: a + b, st.sampled_from(KEY_FIRST),
              st.text(alphabet=KEY_REST, max_size=63)),
    st.text(alphabet=st.characters(exclude_categories=("Cs", "Cc", "Cf")),
            max_size=MAX_LABEL_VALUE),
    max_size=MAX_LABELS))
def test_any_labels_within_the_rules_are_accepted(labels: dict[str, str]) -> None:
    assert CreateSession.model_validate({"labels": labels}).labels == labels


@given(st.text(alphabet=KEY_REST + "ABZ :/é", min_size=1, max_size=70))
def test_a_key_is_accepted_exactly_when_it_matches_the_rule(key: str) -> None:
    expected = (key[0] in KEY_FIRST and len(key) <= 64
                and all(c in KEY_REST for c in key))
    try:
        CreateSession.model_validate({"labels": {key: "v"}})
    except ValidationError:
        accepted = False
    else:
        accepted = True
    assert accepted is expected


# ------------------------------------------------------------------------------ list_params

GOOD_PARAMS: dict[str, list[tuple[str, str]]] = {
    "nothing": [],
    "each-state": [("state", s) for s in
                   ("recording", "finalizing", "completed", "failed", "deleted")],
    "label": [("label", "user:alice")],
    "label-empty-value": [("label", "note:")],
    "label-value-with-colon": [("label", "url:http://x:80")],
    "label-256-value": [("label", "k:" + "v" * 256)],
    "repeated-labels": [("label", "user:alice"), ("label", "host:ws-17")],
    "cursor": [("cursor", SID)],
    "limit-1": [("limit", "1")],
    "limit-500": [("limit", "500")],
    "everything": [("state", "completed"), ("label", "user:bob"), ("cursor", SID),
                   ("limit", "50")],
}


@pytest.mark.parametrize("params", list(GOOD_PARAMS.values()), ids=list(GOOD_PARAMS))
def test_valid_parameters_are_returned_in_order(params: list[tuple[str, str]]) -> None:
    assert list_params(iter(params)) == params


def test_a_fresh_id_is_a_valid_cursor() -> None:
    sid = new_session_id()
    assert list_params([("cursor", sid)]) == [("cursor", sid)]


BAD_PARAMS: dict[str, tuple[tuple[str, str], type[ServiceError]]] = {
    "unknown-param": (("sort", "asc"), InvalidParameter),
    "uppercase-name": (("STATE", "completed"), InvalidParameter),
    "empty-name": (("", "x"), InvalidParameter),
    "bad-state": (("state", "archived"), InvalidParameter),
    "uppercase-state": (("state", "COMPLETED"), InvalidParameter),
    "empty-state": (("state", ""), InvalidParameter),
    "label-novalue": (("label", "novalue"), InvalidParameter),
    "label-empty": (("label", ""), InvalidParameter),
    "label-bad-key": (("label", "User:alice"), InvalidParameter),
    "label-empty-key": (("label", ":alice"), InvalidParameter),
    "label-257-value": (("label", "k:" + "v" * 257), InvalidParameter),
    "cursor-lowercase": (("cursor", SID.lower()), InvalidId),
    "cursor-short": (("cursor", SID[:-1]), InvalidId),
    "cursor-traversal": (("cursor", "../" + SID[3:]), InvalidId),
    "cursor-newline": (("cursor", SID + "\n"), InvalidId),
    "cursor-empty": (("cursor", ""), InvalidId),
    "limit-0": (("limit", "0"), InvalidParameter),
    "limit-501": (("limit", "501"), InvalidParameter),
    "limit-abc": (("limit", "abc"), InvalidParameter),
    "limit-negative": (("limit", "-1"), InvalidParameter),
    "limit-plus": (("limit", "+5"), InvalidParameter),
    "limit-fraction": (("limit", "1.5"), InvalidParameter),
    "limit-space": (("limit", " 5"), InvalidParameter),
    "limit-empty": (("limit", ""), InvalidParameter),
}


@pytest.mark.parametrize(("param", "error"), list(BAD_PARAMS.values()), ids=list(BAD_PARAMS))
def test_invalid_parameters_raise_the_right_error(param: tuple[str, str],
                                                  error: type[ServiceError]) -> None:
    with pytest.raises(error) as info:
        list_params([("state", "completed"), param])
    assert type(info.value) is error
    assert info.value.status == {InvalidParameter: 422, InvalidId: 400}[error]


def test_an_unknown_parameter_name_is_cut_short_in_the_message() -> None:
    with pytest.raises(InvalidParameter) as info:
        list_params([("x" * 1000, "1")])
    assert info.value.detail == f"unknown query parameter {'x' * 32!r}"


@given(st.integers(-10, 1000))
def test_limit_is_accepted_exactly_in_1_to_500(limit: int) -> None:
    if 1 <= limit <= MAX_PAGE:
        assert list_params([("limit", str(limit))]) == [("limit", str(limit))]
    else:
        with pytest.raises(InvalidParameter):
            list_params([("limit", str(limit))])


@pytest.mark.parametrize("raw", ['12', '12.0', '1.2e1'])
def test_upload_length_is_a_json_integer_as_json_schema_counts_them(raw: str) -> None:
    assert CreateSession.model_validate_json('{"upload_length": ' + raw + '}').upload_length == 12
    assert UploadLength.model_validate_json('{"upload_length": ' + raw + '}').upload_length == 12


@pytest.mark.parametrize("raw", ['true', '"12"', '-1', str(MAX_UPLOAD_LENGTH + 1), '1e19'])
def test_declared_lengths_outside_the_schema_are_refused(raw: str) -> None:
    with pytest.raises(ValidationError):
        UploadLength.model_validate_json('{"upload_length": ' + raw + '}')
