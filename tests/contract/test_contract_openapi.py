"""The three services' OpenAPI documents agree wherever they share a shape.

Every shape that crosses a hop comes from `sessions.contract`, so a component schema
that two documents both name must have the same properties (each property's schema
included) and the same required list.  Storage's session record is the public session
plus its wrapped key.  Each processor endpoint that mirrors a public one must also
answer with the same shape as the gateway's.
"""

from __future__ import annotations

from typing import Any

import pytest

Doc = dict[str, Any]


def _schemas(doc: Doc) -> dict[str, Doc]:
    schemas: dict[str, Doc] = doc.get("components", {}).get("schemas", {})
    return schemas


def _shape(schema: Doc) -> tuple[Doc, list[str]]:
    return schema.get("properties", {}), sorted(schema.get("required", []))


PAIRS = [("gateway", "processor"), ("processor", "storage"), ("gateway", "storage")]


@pytest.mark.parametrize(("one", "other"), PAIRS)
def test_shared_component_schemas_are_the_same_shape(docs: dict[str, Doc], one: str,
                                                     other: str) -> None:
    first, second = _schemas(docs[one]), _schemas(docs[other])
    shared = sorted(set(first) & set(second))
    assert shared, f"{one} and {other} share no schema"
    differ = [name for name in shared if _shape(first[name]) != _shape(second[name])]
    assert not differ, f"{one} and {other} disagree on {differ}"


def test_the_public_session_is_in_both_the_gateway_and_the_processor(
        docs: dict[str, Doc]) -> None:
    """The names the documents share include the session and every public answer."""
    shared = set(_schemas(docs["gateway"])) & set(_schemas(docs["processor"]))
    assert shared >= {"Session", "SessionPage", "UploadStatus", "UploadResult",
                      "PrefixCheckResult", "InclusionProof", "ConsistencyProof", "VerifyReport",
                      "NodeInfo", "KeyRotation", "AuditPage", "ErrorBody"}


def test_storage_keeps_the_public_session_plus_its_wrapped_key(docs: dict[str, Doc]) -> None:
    schemas = _schemas(docs["storage"])
    assert "StoredSession" in schemas
    stored_props, stored_required = _shape(schemas["StoredSession"])
    props, required = _shape(_schemas(docs["gateway"])["Session"])
    assert {k: v for k, v in stored_props.items() if k != "wrapped_key"} == props
    assert [r for r in stored_required if r != "wrapped_key"] == required


def _answers(doc: Doc, prefix: str) -> dict[tuple[str, str], str | None]:
    """Return {(method, path below the API root): the 2xx answer's schema name}."""
    out: dict[tuple[str, str], str | None] = {}
    for path, item in doc["paths"].items():
        if not path.startswith(prefix + "/"):
            continue
        for method, op in item.items():
            ok = next((r for code, r in op.get("responses", {}).items()
                       if code.startswith("2")), {})
            schema = ok.get("content", {}).get("application/json", {}).get("schema", {})
            ref = schema.get("$ref")
            out[(method.upper(), path[len(prefix):])] = ref.rsplit("/", 1)[-1] if ref else None
    return out


def test_mirrored_endpoints_answer_with_the_same_model(docs: dict[str, Doc]) -> None:
    public = _answers(docs["gateway"], "/v1")
    internal = _answers(docs["processor"], "/internal/v1")
    mirrored = sorted(set(public) & set(internal))
    assert len(mirrored) >= 15, mirrored
    differ = {key: (public[key], internal[key]) for key in mirrored
              if not key[1].startswith("/tokens") and public[key] != internal[key]}
    assert not differ, differ
