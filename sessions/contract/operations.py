"""Sans-I/O operations: each endpoint described once, as a request to build and an answer to read.

No sockets here. A client (the CLI's sync `LucidClient`, the gateway's async
`ProcessorClient`, the processor's async `StorageClient`) turns an `Operation` into
an HTTP request with its own transport, then hands the status and body back to the
operation's parser (`Operation.read`) or to `decode_error`.

Paths are relative to an API root: the gateway serves them under `/v1`, the
processor under `/internal/v1` (it mirrors the public API for every session, proof,
node and audit endpoint; only tokens differ: the public API creates and shows
tokens, the internal one stores their hashes).

The models (and pydantic) are imported inside the operations that read them: a
replay, whose answer goes to a file and whose errors `decode_error` reads without
them, loads neither (tests/e2e/test_cli_replay.py).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from pydantic import BaseModel

    from sessions.contract.models import (
        AuditPage,
        ConsistencyProof,
        CreatedToken,
        CreateSession,
        CreateToken,
        InclusionProof,
        KeyRotation,
        NewToken,
        NodeInfo,
        PrefixCheckResult,
        RotateSigningIn,
        Session,
        SessionPage,
        StoredToken,
        StoredTokenList,
        TokenList,
        UploadResult,
        UploadStatus,
        VerifyReport,
    )

T = TypeVar("T")
M = TypeVar("M", bound="BaseModel")
Params = Sequence[tuple[str, str]]


class MalformedAnswer(ValueError):
    """A 2xx answer whose body is not the operation's shape (each client names its peer)."""


def reads(model: type[M]) -> Callable[[int, bytes], M]:
    """Return a reader of a 2xx answer as `model`; it raises MalformedAnswer naming the fields
    that do not fit, never their values (a stored session holds a wrapped key)."""
    def read(_status: int, body: bytes) -> M:
        from pydantic import ValidationError

        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            wrong = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                              for e in exc.errors(include_input=False, include_url=False)[:5])
            raise MalformedAnswer(f"not a {model.__name__}: {wrong}") from None
    return read


def raw_body(_status: int, body: bytes) -> bytes:
    return body


def nothing(_status: int, _body: bytes) -> None:
    return None


def unless_204(_status: int, body: bytes) -> bytes | None:
    return None if _status == 204 else body


@dataclass(frozen=True)
class Operation(Generic[T]):
    """One HTTP request to build (method, path below the API root, query, headers, JSON body)
    and how to read its 2xx answer.

    A streamed body (upload PATCH) is left to the caller's transport, as is a streamed
    answer (replay): `read` is then not called; nothing on the byte path is copied here.
    """

    method: str
    path: str
    read: Callable[[int, bytes], T]
    params: Params = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    long: bool = False
    """The server reads a whole session (or every key) to answer: no read timeout."""


@dataclass(frozen=True)
class ErrorReply:
    """A decoded error answer: the stable code, the detail, and any extra fields of the body."""

    status: int
    code: str
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)
    recognised: bool = True
    """False when the body was not a `{"error", "detail"}` object (code is then `http_error`)."""

    def body(self) -> dict[str, Any] | None:
        """Return the error body as the service rendered it, None if it was not one."""
        if not self.recognised:
            return None
        return {"error": self.code, **({"detail": self.detail} if self.detail else {}),
                **self.extra}


def decode_error(status: int, body: bytes) -> ErrorReply:
    """Return what an error answer says; never raise, whatever the body holds."""
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        detail = parsed.get("detail")
        extra = {k: v for k, v in parsed.items() if k not in ("error", "detail")}
        return ErrorReply(status, parsed["error"], detail if isinstance(detail, str) else "",
                          extra)
    return ErrorReply(status, "http_error", f"HTTP {status}", recognised=False)


def _sid(session_id: str) -> str:
    return f"/sessions/{session_id}"


# -- sessions -------------------------------------------------------------------------------


def create_session(spec: CreateSession) -> Operation[Session]:
    """`POST /sessions`: the public body, or the processor's `OwnedCreateSession`."""
    from sessions.contract import models as m

    return Operation("POST", "/sessions", reads(m.Session), json=spec.model_dump(mode="json"))


def session_query(*, state: str | None = None, labels: Sequence[str] = (), limit: int = 50,
                  cursor: str | None = None) -> list[tuple[str, str]]:
    """Return the query of a list request: limit, state, `label=key:value`..., cursor."""
    params = [("limit", str(limit))]
    params += [("state", state)] if state else []
    params += [("label", item) for item in labels]
    params += [("cursor", cursor)] if cursor else []
    return params


def list_sessions(params: Params) -> Operation[SessionPage]:
    """`GET /sessions`: one page (build `params` with `session_query`)."""
    from sessions.contract import models as m

    return Operation("GET", "/sessions", reads(m.SessionPage), params=tuple(params))


def get_session(session_id: str) -> Operation[Session]:
    from sessions.contract import models as m

    return Operation("GET", _sid(session_id), reads(m.Session))


def set_upload_length(session_id: str, length: int) -> Operation[Session]:
    from sessions.contract import models as m

    return Operation("PUT", _sid(session_id) + "/upload-length", reads(m.Session),
                     json={"upload_length": length})


def finalize(session_id: str) -> Operation[Session]:
    from sessions.contract import models as m

    return Operation("POST", _sid(session_id) + "/finalize", reads(m.Session))


def delete_session(session_id: str) -> Operation[None]:
    return Operation("DELETE", _sid(session_id), nothing)


def set_hold(session_id: str, hold: bool) -> Operation[Session]:
    """`PUT .../hold` puts the session under legal hold, `DELETE .../hold` releases it."""
    from sessions.contract import models as m

    return Operation("PUT" if hold else "DELETE", _sid(session_id) + "/hold", reads(m.Session))


def manifest(session_id: str) -> Operation[bytes]:
    """The manifest byte for byte (its canonical form is what is signed): never re-encoded."""
    return Operation("GET", _sid(session_id) + "/manifest", raw_body)


def checkpoint(session_id: str, size: int | None = None) -> Operation[bytes]:
    params = () if size is None else (("size", str(size)),)
    return Operation("GET", _sid(session_id) + "/checkpoint", raw_body, params=params)


def inclusion_proof(session_id: str, index: int, size: int | None = None
                    ) -> Operation[InclusionProof]:
    from sessions.contract import models as m

    params = (("index", str(index)),) + (() if size is None else (("size", str(size)),))
    return Operation("GET", _sid(session_id) + "/proof/inclusion", reads(m.InclusionProof),
                     params=params)


def consistency_proof(session_id: str, first: int, second: int | None = None
                      ) -> Operation[ConsistencyProof]:
    from sessions.contract import models as m

    params = (("from", str(first)),) + (() if second is None else (("to", str(second)),))
    return Operation("GET", _sid(session_id) + "/proof/consistency", reads(m.ConsistencyProof),
                     params=params)


def verify(session_id: str, sample: float = 100) -> Operation[VerifyReport]:
    """Verification reads every sampled chunk: a long operation."""
    from sessions.contract import models as m

    return Operation("POST", _sid(session_id) + "/verify", reads(m.VerifyReport),
                     params=(("sample", f"{sample:g}"),), long=True)


# -- uploads --------------------------------------------------------------------------------


def upload_status(session_id: str) -> Operation[UploadStatus]:
    from sessions.contract import models as m

    return Operation("GET", _sid(session_id) + "/upload", reads(m.UploadStatus))


def upload(session_id: str, headers: Mapping[str, str]) -> Operation[UploadResult]:
    """`PATCH .../upload`: the caller streams the body (Upload-Offset, Content-Type ... in
    `headers`); the answer's `Upload-Offset` header repeats its offset."""
    from sessions.contract import models as m

    return Operation("PATCH", _sid(session_id) + "/upload", reads(m.UploadResult),
                     headers=dict(headers), long=True)


def prefix_check(session_id: str, offset: int, digest: bytes) -> Operation[PrefixCheckResult]:
    """The node reads the whole committed session back to answer: a long operation."""
    from sessions.contract import models as m

    body = m.PrefixCheck(offset=offset, sha256=base64.b64encode(digest).decode("ascii"))
    return Operation("POST", _sid(session_id) + "/upload/prefix-check",
                     reads(m.PrefixCheckResult), json=body.model_dump(), long=True)


# -- streamed reads: the client opens the stream itself and reads no body through `read` ------


def replay(session_id: str, byte_range: str | None = None) -> Operation[None]:
    headers = {"Accept-Encoding": "identity"} | ({} if byte_range is None
                                                  else {"Range": byte_range})
    return Operation("GET", _sid(session_id) + "/replay", nothing, headers=headers, long=True)


def sealed_chunk(session_id: str, index: int) -> Operation[bytes]:
    return Operation("GET", f"{_sid(session_id)}/chunks/{index}", raw_body,
                     headers={"Accept-Encoding": "identity"})


# -- the node, keys and the audit log -------------------------------------------------------


def node() -> Operation[NodeInfo]:
    from sessions.contract import models as m

    return Operation("GET", "/node", reads(m.NodeInfo))


def rotate_keys() -> Operation[KeyRotation]:
    """Rewraps one small key per session: a long operation for large catalogues."""
    from sessions.contract import models as m

    return Operation("POST", "/keys/rotate", reads(m.KeyRotation), long=True)


def rotate_signing_key(body: RotateSigningIn) -> Operation[NodeInfo]:
    from sessions.contract import models as m

    return Operation("POST", "/keys/signing/rotate", reads(m.NodeInfo),
                     json=body.model_dump(exclude_none=True))


def audit_page(*, start: int = 0, limit: int = 100,
               session_id: str | None = None) -> Operation[AuditPage]:
    from sessions.contract import models as m

    params: Params = (("start", str(start)), ("limit", str(limit)))
    params = (*params, ("session_id", session_id)) if session_id is not None else params
    return Operation("GET", "/audit", reads(m.AuditPage), params=params)


def audit_checkpoint() -> Operation[bytes | None]:
    """The audit log's signed head; None (204) before its first entry."""
    return Operation("GET", "/audit/checkpoint", unless_204)


# -- tokens: the public API (`/v1/tokens`) ----------------------------------------------------


def create_token(body: CreateToken) -> Operation[CreatedToken]:
    from sessions.contract import models as m

    return Operation("POST", "/tokens", reads(m.CreatedToken), json=body.model_dump(mode="json"))


def list_tokens() -> Operation[TokenList]:
    from sessions.contract import models as m

    return Operation("GET", "/tokens", reads(m.TokenList))


def revoke_token(token_id: str) -> Operation[None]:
    return Operation("DELETE", f"/tokens/{token_id}", nothing)


# -- tokens: the processor's store (`/internal/v1/tokens`, hashes only) -----------------------


def store_token(token: NewToken) -> Operation[StoredToken]:
    from sessions.contract import models as m

    return Operation("POST", "/tokens", reads(m.StoredToken), json=token.model_dump(mode="json"))


def stored_tokens() -> Operation[StoredTokenList]:
    from sessions.contract import models as m

    return Operation("GET", "/tokens", reads(m.StoredTokenList))


def stored_token(token_id: str) -> Operation[StoredToken]:
    from sessions.contract import models as m

    return Operation("GET", f"/tokens/{token_id}", reads(m.StoredToken))


def revoke_stored_token(token_id: str) -> Operation[StoredToken]:
    from sessions.contract import models as m

    return Operation("POST", f"/tokens/{token_id}/revoke", reads(m.StoredToken))
