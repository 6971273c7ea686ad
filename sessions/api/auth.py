"""Who is calling: bearer tokens checked against storage through a bounded cache, rate limits.

The gateway checks a token without a storage round trip on every request: a
lookup by token id is cached for `LUCID_TOKEN_CACHE_SECONDS`, found or not.  So a
token revoked through another gateway keeps working at most that long here (one
revoked through this gateway stops at once).  The secret is checked on every
request against the cached hash, in constant time.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sessions.common.auth import bearer_token, tokens_equal
from sessions.common.errors import RateLimited, Unauthorized
from sessions.common.tokens import (
    BOOTSTRAP_ID,
    Role,
    StoredToken,
    expiry,
    parse_token,
    secret_digest,
)

K = TypeVar("K")
V = TypeVar("V")
MAX_ENTRIES = 10_000
access_log = logging.getLogger("lucid.access")


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: the id of its token (never the token) and that token's role.

    `authenticate` leaves it on `request.state.principal`, so code that records who
    acted (logs, the audit log) reads it from one place.
    """

    token_id: str
    role: Role


BOOTSTRAP = Principal(BOOTSTRAP_ID, Role.ADMIN)


class Bounded(Generic[K, V]):
    """A dict of at most `size` entries that forgets the least recently set one first."""

    def __init__(self, size: int = MAX_ENTRIES) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def set(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def pop(self, key: K) -> None:
        self._items.pop(key, None)


Lookup = Callable[[str], Awaitable[StoredToken | None]]


class TokenVerifier:
    """Returns the principal of a bearer token: the bootstrap admin token or a stored one.

    Stored tokens are looked up by id through `lookup` and the answer (found or not)
    is kept `ttl` seconds (monotonic clock): the bound on how long a revocation made
    elsewhere takes to reach this gateway.
    """

    def __init__(self, bootstrap: str, lookup: Lookup, *, ttl: float,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._bootstrap = bootstrap
        self._lookup = lookup
        self._ttl = ttl
        self._clock = clock
        self._now = now
        self._cache: Bounded[str, tuple[float, StoredToken | None]] = Bounded()

    async def principal(self, conn: HTTPConnection) -> Principal:
        """Return who the request's bearer token names; raise Unauthorized (401) otherwise."""
        presented = bearer_token(conn)
        if presented is None:
            raise _unauthorized()
        if tokens_equal(presented, self._bootstrap):
            return BOOTSTRAP
        parsed = parse_token(presented)
        if parsed is None:
            raise _unauthorized()
        token_id, secret = parsed
        rec = await self._record(token_id)
        if rec is None or not hmac.compare_digest(secret_digest(secret),
                                                  bytes.fromhex(rec.secret_hash)):
            raise _unauthorized()
        if rec.revoked_at is not None:
            raise _unauthorized("the token was revoked")
        if rec.expires_at is not None:
            now = self._now()
            if _expired(rec.expires_at, now):
                raise _unauthorized("the token has expired")
            if _expired(rec.created_at, now, before=True):
                raise _unauthorized("this gateway's clock reads before the token was created, "
                                    "so its expiry cannot be checked")
        return Principal(rec.id, rec.role)

    def forget(self, token_id: str) -> None:
        """Drop a token's cached record (this gateway revoked it: refuse it from now on)."""
        self._cache.pop(token_id)

    async def _record(self, token_id: str) -> StoredToken | None:
        cached = self._cache.get(token_id)
        if cached is not None and self._clock() < cached[0]:
            return cached[1]
        rec = await self._lookup(token_id)
        if self._ttl > 0:
            self._cache.set(token_id, (self._clock() + self._ttl, rec))
        return rec


def _unauthorized(detail: str | None = None) -> Unauthorized:
    return Unauthorized(detail, headers={"WWW-Authenticate": "Bearer"})


def _expired(text: str, now: datetime, *, before: bool = False) -> bool:
    """Return whether the expiry `text` has passed; an unreadable one has (fail closed).

    With before=True, whether `now` is still before the instant `text` (a token's
    creation): a clock that reads so is behind (a Pi without an RTC battery boots in
    the past), and an expiring token is refused rather than trusted on that clock.
    """
    try:
        moment = expiry(text)
    except ValueError:
        return True
    return now < moment if before else moment <= now


class RateLimiter:
    """A token bucket per token id: `rate` requests a second on average, `burst` at once.

    Per gateway process: N gateways allow N times the rate.  rate <= 0 turns it off.
    """

    def __init__(self, rate: float, burst: int, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst = rate, max(1, burst)
        self._clock = clock
        self._buckets: Bounded[str, tuple[float, float]] = Bounded()

    def take(self, key: str) -> None:
        """Spend one request of key's bucket; raise RateLimited (429, Retry-After) if empty."""
        if self.rate <= 0:
            return
        now = self._clock()
        level, last = self._buckets.get(key) or (float(self.burst), now)
        level = min(float(self.burst), level + (now - last) * self.rate)
        if level < 1:
            self._buckets.set(key, (level, now))
            wait = max(1, math.ceil((1 - level) / self.rate))
            raise RateLimited(headers={"Retry-After": str(wait)})
        self._buckets.set(key, (level - 1, now))


class AccessLog:
    """Logs one line per request: token id (never the token), method, path, status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        scope.setdefault("state", {})  # shared with the scopes tus dispatch derives from it

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            principal = scope.get("state", {}).get("principal")
            who = principal.token_id if isinstance(principal, Principal) else "-"
            access_log.info("token=%s %s %s %d", who, scope["method"], scope["path"], status)
