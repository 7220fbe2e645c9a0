"""Who may call: API keys, a rate limit per key, and a cap on what a request may send.

Keys live hashed in the database (`keys.py`); a request shows one as `Authorization: Bearer
KEY` or `X-API-Key: KEY`. Every route but health needs one. With no key in the database the
service is open, which `cli.serve` allows only on a loopback address (a developer's machine):
the first `domainvlm serve keys add` closes it, without a restart.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from domainvlm.adapters.service.problems import Problem

OPEN_OWNER = "local"  # the owner of everything made while the service runs without keys
_KEYS_TTL = 2.0  # seconds a "does any key exist" answer is reused


@dataclass(frozen=True)
class Caller:
    """The key a request came with (its name; never the key itself)."""

    name: str
    rate_per_minute: int | None = None


class KeyGate:
    """Finds the caller of a request in the key table, and rate-limits each key."""

    def __init__(self, sessions, default_rate: int) -> None:
        self._sessions, self._default_rate = sessions, default_rate
        self._any: tuple[float, bool] = (0.0, False)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def any_keys(self) -> bool:
        from sqlalchemy import select

        from domainvlm.adapters.service.db import ApiKey

        at, known = self._any
        if time.monotonic() - at > _KEYS_TTL:
            with self._sessions() as session:
                known = session.execute(select(ApiKey.id).limit(1)).first() is not None
            self._any = (time.monotonic(), known)
        return known

    def caller(self, request: Request) -> Caller:
        """The caller of `request`; Problem 401 without a valid key (while keys exist)."""
        from domainvlm.adapters.service.keys import find_key

        given = _presented(request)
        if not self.any_keys():
            return Caller(OPEN_OWNER)
        if not given:
            raise Problem(401, "this route needs an API key: send `Authorization: Bearer KEY` "
                          "(make one with `domainvlm serve keys add NAME`)", "missing-key",
                          {"WWW-Authenticate": "Bearer"})
        with self._sessions() as session:
            row = find_key(session, given)
            found = Caller(row.name, row.rate_per_minute) if row is not None else None
        if found is None:
            raise Problem(401, "the API key is unknown or revoked", "invalid-key",
                          {"WWW-Authenticate": "Bearer"})
        return found

    def charge(self, caller: Caller) -> None:
        """Take one request from the caller's bucket; Problem 429 when it is empty."""
        rate = caller.rate_per_minute or self._default_rate
        with self._lock:
            now = time.monotonic()
            tokens, at = self._buckets.get(caller.name, (float(rate), now))
            tokens = min(float(rate), tokens + (now - at) * rate / 60.0)
            if tokens < 1.0:
                wait = max(1, int((1.0 - tokens) * 60.0 / rate + 0.999))
                self._buckets[caller.name] = (tokens, now)
                raise Problem(429, f"rate limit of {rate} requests a minute reached; retry "
                              f"in {wait} s", "rate-limited", {"Retry-After": str(wait)})
            self._buckets[caller.name] = (tokens - 1.0, now)


def _presented(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


class BodyLimit:
    """ASGI middleware: refuse a body over `limit` bytes, by its Content-Length at once, and
    by counting while it streams in (a chunked upload has no length to check)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _too_large(scope, send, self.limit)
            return
        seen, over, answered = 0, False, False

        async def counted() -> Message:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True  # the app sees the client leave; the caller gets 413
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal answered
            if over:
                if not answered:
                    answered = True
                    await _too_large(scope, send, self.limit)
                return
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over and not answered:
            await _too_large(scope, send, self.limit)


async def _too_large(scope: Scope, send: Send, limit: int) -> None:
    import json

    from domainvlm.adapters.service.problems import MEDIA_TYPE, TYPE_ROOT

    payload = json.dumps({"type": TYPE_ROOT + "too-large", "title": "Content Too Large",
                          "status": 413, "detail": f"the request body is over the limit of "
                          f"{limit} bytes; send less (or raise --max-request-mb)",
                          "instance": scope.get("path", "")}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", MEDIA_TYPE.encode()),
                            (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})
