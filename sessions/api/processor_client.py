"""The gateway's one HTTP client for the chunk processor; httpx stops at this boundary.

One long-lived `httpx.AsyncClient` (connection reuse) talks to the processor's
`/internal/v1` with the service token.  Upstream error bodies are re-raised
unchanged as `ServiceError`s; transport failures become `UpstreamUnavailable`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from sessions.api.actor import actor_headers
from sessions.common.errors import NotFound, NotReady, UpstreamUnavailable, error_from_body
from sessions.common.httpclient import service_client
from sessions.common.models import PrefixCheck
from sessions.common.settings import Transport
from sessions.common.tokens import NewToken, StoredToken, StoredTokenList

log = logging.getLogger("lucid.api.processor")

JSON_TIMEOUT = httpx.Timeout(300.0, connect=5.0, pool=30.0)
STREAM_TIMEOUT = httpx.Timeout(None, connect=5.0, pool=30.0)
_ERROR_HEADERS = ("upload-offset", "retry-after")


@contextmanager
def _translated() -> Iterator[None]:
    """Turn httpx transport failures into UpstreamUnavailable (the one boundary, trait 8)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise UpstreamUnavailable("the chunk processor did not answer in time") from exc
    except httpx.TransportError as exc:
        raise UpstreamUnavailable("the chunk processor is not answering") from exc


async def _raise_for_error(resp: httpx.Response) -> None:
    """Raise the ServiceError an upstream 4xx/5xx body carries; return on success."""
    if resp.status_code < 400:
        return
    with _translated():
        raw = await resp.aread()
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if resp.status_code == 401:
        # Not the client's fault: this gateway's service token is wrong.
        log.error("the chunk processor rejected the gateway's service token")
        raise UpstreamUnavailable("the chunk processor rejected this gateway's credentials")
    err = error_from_body(resp.status_code, body)
    for name in _ERROR_HEADERS:
        if name in resp.headers:
            err.headers[name.title()] = resp.headers[name]
    raise err


def _json_of(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError as exc:
        raise UpstreamUnavailable("the chunk processor sent a malformed answer") from exc


class ProcessorClient:
    """Calls the processor's `/internal/v1`; one method per public operation."""

    def __init__(self, base_url: str, token: str, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 kind: Transport = Transport.WIRE) -> None:
        self._ready_url = f"{base_url}/ready"
        self._http = service_client(f"{base_url}/internal/v1", token, timeout=JSON_TIMEOUT,
                                    transport=transport, kind=kind, max_connections=256)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, *, params: Any = None, json_body: Any = None,
                    timeouts: httpx.Timeout = JSON_TIMEOUT) -> httpx.Response:
        """Return the read response of one request, or raise its error."""
        with _translated():
            resp = await self._http.request(method, path, params=params, json=json_body,
                                            timeout=timeouts, headers=actor_headers())
        await _raise_for_error(resp)
        return resp

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return _json_of(await self._call(method, path, **kwargs))

    # -- sessions ---------------------------------------------------------------------------

    async def create_session(self, spec: Mapping[str, Any]) -> Any:
        return await self._json("POST", "/sessions", json_body=dict(spec))

    async def list_sessions(self, params: list[tuple[str, str]]) -> Any:
        return await self._json("GET", "/sessions", params=params)

    async def get_session(self, session_id: str) -> Any:
        return await self._json("GET", f"/sessions/{session_id}")

    async def set_upload_length(self, session_id: str, length: int) -> Any:
        return await self._json("PUT", f"/sessions/{session_id}/upload-length",
                                json_body={"upload_length": length})

    async def finalize(self, session_id: str) -> Any:
        return await self._json("POST", f"/sessions/{session_id}/finalize")

    async def delete_session(self, session_id: str) -> None:
        await self._call("DELETE", f"/sessions/{session_id}")

    async def set_hold(self, session_id: str, hold: bool) -> Any:
        return await self._json("PUT" if hold else "DELETE", f"/sessions/{session_id}/hold")

    async def manifest(self, session_id: str) -> bytes:
        return (await self._call("GET", f"/sessions/{session_id}/manifest")).content

    async def checkpoint(self, session_id: str, size: int | None) -> bytes:
        params = {} if size is None else {"size": str(size)}
        return (await self._call("GET", f"/sessions/{session_id}/checkpoint",
                                 params=params)).content

    async def inclusion_proof(self, session_id: str, index: int, size: int | None) -> Any:
        params = {"index": str(index)} | ({} if size is None else {"size": str(size)})
        return await self._json("GET", f"/sessions/{session_id}/proof/inclusion", params=params)

    async def consistency_proof(self, session_id: str, first: int, second: int | None) -> Any:
        params = {"from": str(first)} | ({} if second is None else {"to": str(second)})
        return await self._json("GET", f"/sessions/{session_id}/proof/consistency",
                                params=params)

    async def verify(self, session_id: str, sample: float) -> Any:
        # Verification reads every sampled chunk: no read timeout.
        return await self._json("POST", f"/sessions/{session_id}/verify",
                                params={"sample": f"{sample:g}"}, timeouts=STREAM_TIMEOUT)

    async def node(self) -> Any:
        return await self._json("GET", "/node")

    async def rotate_keys(self) -> Any:
        # Rewraps one small key per session: no read timeout for large catalogues.
        return await self._json("POST", "/keys/rotate", timeouts=STREAM_TIMEOUT)

    # -- API tokens -------------------------------------------------------------------------

    async def create_token(self, token: NewToken) -> StoredToken:
        return StoredToken.model_validate(await self._json(
            "POST", "/tokens", json_body=token.model_dump(mode="json")))

    async def find_token(self, token_id: str) -> StoredToken | None:
        """Return the stored token of that id, None if there is none."""
        try:
            return StoredToken.model_validate(await self._json("GET", f"/tokens/{token_id}"))
        except NotFound:
            return None

    async def list_tokens(self) -> StoredTokenList:
        return StoredTokenList.model_validate(await self._json("GET", "/tokens"))

    async def revoke_token(self, token_id: str) -> StoredToken:
        return StoredToken.model_validate(await self._json("POST", f"/tokens/{token_id}/revoke"))

    # -- keys and the audit log --------------------------------------------------------------

    async def rotate_signing_key(self, body: Mapping[str, Any]) -> Any:
        return await self._json("POST", "/keys/signing/rotate", json_body=dict(body))

    async def audit(self, params: Mapping[str, str]) -> Any:
        return await self._json("GET", "/audit", params=dict(params))

    async def audit_checkpoint(self) -> httpx.Response:
        return await self._call("GET", "/audit/checkpoint")

    # -- uploads ----------------------------------------------------------------------------

    async def upload_status(self, session_id: str) -> Any:
        return await self._json("GET", f"/sessions/{session_id}/upload")

    async def upload(self, session_id: str, body: AsyncIterable[bytes],
                     headers: Mapping[str, str]) -> tuple[Any, str | None]:
        """Stream body to the processor; return its JSON answer and Upload-Offset header.

        An exception raised by `body` (too large, client gone) aborts the upstream
        request mid-body and propagates unchanged: the processor discards a truncated body.
        """
        request = self._http.build_request("PATCH", f"/sessions/{session_id}/upload",
                                           content=body,
                                           headers={**headers, **actor_headers()},
                                           timeout=STREAM_TIMEOUT)
        with _translated():
            resp = await self._http.send(request)
        await _raise_for_error(resp)
        return _json_of(resp), resp.headers.get("upload-offset")

    async def prefix_check(self, session_id: str, body: PrefixCheck) -> Any:
        # The processor reads the whole committed session back: no read timeout.
        return await self._json("POST", f"/sessions/{session_id}/upload/prefix-check",
                                json_body=body.model_dump(), timeouts=STREAM_TIMEOUT)

    # -- streamed reads ---------------------------------------------------------------------

    async def _open(self, path: str, headers: Mapping[str, str]) -> httpx.Response:
        """Return an open streaming response with a 2xx status; the caller must close it."""
        request = self._http.build_request("GET", path, timeout=STREAM_TIMEOUT,
                                           headers={"Accept-Encoding": "identity", **headers,
                                                    **actor_headers()})
        with _translated():
            resp = await self._http.send(request, stream=True)
        try:
            await _raise_for_error(resp)
        except BaseException:
            await resp.aclose()
            raise
        return resp

    async def open_replay(self, session_id: str, byte_range: str | None) -> httpx.Response:
        headers = {} if byte_range is None else {"Range": byte_range}
        return await self._open(f"/sessions/{session_id}/replay", headers)

    async def open_chunk(self, session_id: str, index: int) -> httpx.Response:
        return await self._open(f"/sessions/{session_id}/chunks/{index}", {})

    @staticmethod
    async def relay(resp: httpx.Response, *, count: Callable[[int], None]) -> AsyncIterator[bytes]:
        """Yield an open response's body as read; raise UpstreamUnavailable if it breaks.

        A body shorter than its Content-Length also raises, so the caller can cut
        the client's connection instead of ending a short response cleanly.
        """
        chunked = "transfer-encoding" in resp.headers  # its length, if any, is not the body's
        declared = None if chunked else resp.headers.get("content-length")
        sent = 0
        with _translated():
            async for piece in resp.aiter_raw():  # pieces as the socket gave them: no copies
                sent += len(piece)
                count(len(piece))
                yield piece
        if declared is not None and declared.isdigit() and sent != int(declared):
            raise UpstreamUnavailable("the chunk processor's body ended early")

    @staticmethod
    async def close_stream(resp: httpx.Response) -> None:
        """Close an open response, ignoring a transport that already broke."""
        try:
            await resp.aclose()
        except httpx.HTTPError:
            log.debug("closing a broken upstream stream failed")

    # -- readiness --------------------------------------------------------------------------

    async def ready(self) -> None:
        """Return if the processor's /ready answers 200; raise NotReady otherwise."""
        try:
            resp = await self._http.get(self._ready_url, timeout=httpx.Timeout(5.0))
        except httpx.HTTPError as exc:
            raise NotReady("the chunk processor is not answering") from exc
        if resp.status_code != 200:
            raise NotReady("the chunk processor is not ready")
