"""The gateway's front door: API keys, per-key rate, requests in flight, body size and time.

One pure-ASGI middleware (it neither buffers nor delays streams) that decides before any route
runs, in this order:

1. API keys (`API_KEYS`, `API_KEYS_FILE`): `Authorization: Bearer <key>`, compared in constant
   time against every key (no early exit, so timing says nothing about which key or how many
   matched). `/health` is always open; `/health/ready` and `/metrics` follow
   `PROTECT_HEALTH_AND_METRICS`; a GET or HEAD of one of the exact `open_paths` the app names
   (the playground's page and files) needs no key. Only a key id (a hash prefix) is ever
   logged, never the key.
2. Per-key rate (`RATE_LIMIT_PER_MINUTE`): a token bucket per key; 429 with Retry-After.
3. Draining: after SIGTERM new requests get 503 (probes still answer).
4. Requests in flight (`MAX_IN_FLIGHT`): beyond it 429 with Retry-After instead of piling work
   onto SGLang.
5. The body: a declared `Content-Length` over `MAX_BODY_BYTES` is refused before reading; a body
   that grows past it while being read stops at the limit (413), and a body not complete within
   `BODY_READ_TIMEOUT` (slow-loris) is a 408. A JSON body is also bounded in its number of
   elements (`MAX_JSON_ELEMENTS`, its commas counted as it arrives, a few microseconds per 64 KiB
   read): parsing costs the event loop about 2 us per element whatever the bytes, so a body of a
   million tiny content parts would stall every stream for seconds; beyond the limit, 400.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Collection
from pathlib import Path

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import (
    AuthenticationFailed,
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    UpstreamUnavailable,
)
from gateway.server.request_context import key_id_var
from gateway.settings import Settings

logger = logging.getLogger("gateway.guards")

ALWAYS_OPEN = frozenset({"/health"})
PROBES = frozenset({"/health", "/health/ready", "/metrics"})
OPEN_METHODS = frozenset({"GET", "HEAD"})  # for `open_paths`: reading a page, never an API call


class Draining:
    """Set once the process has been asked to stop: new work is refused, probes say not ready.

    `requested` is set by the signal handler; `active` by the app once it starts draining;
    `done` once the drain is over and the server may stop listening.
    """

    def __init__(self) -> None:
        self.requested = False
        self.active = False
        self.done = False


def load_api_keys(settings: Settings) -> list[str]:
    """Keys from API_KEYS (comma-separated) and API_KEYS_FILE (one per line, # comments)."""
    keys: list[str] = []
    if settings.api_keys is not None:
        keys += [k.strip() for k in settings.api_keys.get_secret_value().split(",")]
    if settings.api_keys_file:
        for line in Path(settings.api_keys_file).read_text(encoding="utf-8").splitlines():
            keys.append(line.split("#", 1)[0].strip())
    return [key for key in keys if key]


def key_id(key: bytes) -> str:
    """What logs and metrics may say about a key: a short prefix of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:8]


class KeyRing:
    """The accepted keys, kept only as SHA-256 digests."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = [
            (hashlib.sha256(key.encode()).digest(), key_id(key.encode())) for key in keys
        ]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def identify(self, presented: bytes) -> str | None:
        """The id of the matching key, comparing against all of them in constant time."""
        digest = hashlib.sha256(presented).digest()
        found = None
        for candidate, identity in self._digests:
            if hmac.compare_digest(digest, candidate):
                found = identity
        return found


class RateLimiter:
    """A token bucket per key id: `per_minute` requests a minute, bursts up to that many."""

    def __init__(self, per_minute: int) -> None:
        self._capacity = float(per_minute)
        self._refill_per_second = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, updated)

    def retry_after(self, identity: str) -> float | None:
        """None when the request may go ahead (a token is taken), else seconds to wait."""
        now = time.monotonic()
        tokens, updated = self._buckets.get(identity, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - updated) * self._refill_per_second)
        if tokens >= 1.0:
            self._buckets[identity] = (tokens - 1.0, now)
            return None
        self._buckets[identity] = (tokens, now)
        return (1.0 - tokens) / self._refill_per_second


class FrontDoor:
    """The middleware; see the module docstring for what it checks, in order."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        draining: Draining,
        open_paths: Collection[str] = (),
    ) -> None:
        self.app = app
        self._open_paths = frozenset(open_paths)
        self._settings = settings
        self._draining = draining
        self._keys = KeyRing(load_api_keys(settings))
        self._rate = (
            RateLimiter(settings.rate_limit_per_minute) if settings.rate_limit_per_minute else None
        )
        self._probes_need_key = settings.protect_health_and_metrics
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        try:
            if self._keys and self._needs_key(path, scope["method"]):
                identity = self._authenticate(scope)
                key_id_var.set(identity)
                if self._rate is not None:
                    wait = self._rate.retry_after(identity)
                    if wait is not None:
                        raise RateLimited(
                            "Rate limit reached for this API key; retry later.",
                            headers={"Retry-After": str(max(1, round(wait)))},
                        )
            if path in PROBES:
                await self.app(scope, receive, send)
                return
            if self._draining.active:
                raise UpstreamUnavailable("The gateway is shutting down.", retry_after=1)
            if self.in_flight >= self._settings.max_in_flight:
                raise RateLimited(
                    "Too many requests in flight on this gateway; retry shortly.",
                    headers={"Retry-After": "1"},
                )
            self._check_declared_length(scope)
        except GatewayError as exc:
            await _send_error(send, exc)
            return
        self.in_flight += 1
        body = _BoundedBody(
            receive,
            self._settings.max_body_bytes,
            self._settings.body_read_timeout,
            self._settings.max_json_elements if _is_json(scope) else None,
        )
        try:
            await self.app(scope, body, send)
        finally:
            body.close()
            self.in_flight -= 1

    def _needs_key(self, path: str, method: str) -> bool:
        if path in ALWAYS_OPEN:
            return False
        if path in self._open_paths and method in OPEN_METHODS:
            return False
        return self._probes_need_key or path not in PROBES

    def _authenticate(self, scope: Scope) -> str:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer" and token.strip():
                    identity = self._keys.identify(token.strip())
                    if identity is not None:
                        return identity
                raise AuthenticationFailed(
                    "Incorrect API key provided. Send it as 'Authorization: Bearer <key>'."
                )
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
        )

    def _check_declared_length(self, scope: Scope) -> None:
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self._settings.max_body_bytes:
                    raise _too_large(self._settings.max_body_bytes)
                return


class _BoundedBody:
    """`receive` that stops a body at the size limit (413) and at the read deadline (408).

    One timer per request, armed at the first read of the body, instead of a timeout scope per
    message: if the deadline passes with the body incomplete, it cancels the task reading it,
    which then raises `RequestTimeout` (what `asyncio.timeout` does, minus its per-call cost).
    """

    __slots__ = (
        "_complete",
        "_deadline",
        "_elements",
        "_expired",
        "_limit",
        "_reader",
        "_receive",
        "_received",
        "_timeout",
        "_timer",
    )

    def __init__(
        self, receive: Receive, limit: int, timeout: float, max_elements: int | None = None
    ) -> None:
        self._receive = receive
        self._limit = limit
        self._elements = max_elements  # JSON elements (commas) the rest of the body may hold
        self._timeout = timeout
        self._deadline = asyncio.get_running_loop().time() + timeout
        self._received = 0
        self._complete = False
        self._expired = False
        self._reader: asyncio.Task[object] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def __call__(self) -> Message:
        if self._complete:
            return await self._receive()  # after the body: only the disconnect is left
        if self._reader is None:
            self._reader = asyncio.current_task()
            self._timer = asyncio.get_running_loop().call_at(self._deadline, self._expire)
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            # Ours only if nothing else cancelled the task as well (uncancel() counts).
            if self._expired and task is self._reader and task is not None and task.uncancel() == 0:
                raise RequestTimeout(
                    f"The request body was not received within {self._timeout:g} seconds."
                ) from None
            raise
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            self._received += len(chunk)
            if self._received > self._limit:
                self.close()
                raise _too_large(self._limit)
            if self._elements is not None:
                self._elements -= chunk.count(b",")
                if self._elements < 0:
                    self.close()
                    raise InvalidRequest(
                        "The request has too many JSON elements to be parsed in time; send "
                        "fewer content parts, messages or array items.",
                        code="too_many_elements",
                    )
            self._complete = not message.get("more_body", False)
        else:
            self._complete = True  # disconnected: no more body will come
        if self._complete:
            self.close()
        return message

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if not self._complete and self._reader is not None:
            self._expired = True
            self._reader.cancel()


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type: bytes = value.split(b";", 1)[0].strip().lower()
            return media_type == b"application/json"
    return False


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the {limit}-byte limit.")


async def _send_error(send: Send, error: GatewayError) -> None:
    body = orjson.dumps(error.body())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    if isinstance(error, AuthenticationFailed):
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
