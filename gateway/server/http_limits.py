"""Limits on a request's head (request line and headers) for uvicorn's httptools protocol.

uvicorn's httptools protocol accepts a head of any size at any speed (200 MiB of headers were
accepted; a head sent a byte a second stays open forever), which is why h11, with its 16 KiB
limit, is sometimes preferred; h11 costs 35 % more CPU per request here (issue 7: 0.307 against
0.228 ms per non-streaming request, 12.1 against 10.7 ms per 1,000 streamed tokens). So the
gateway keeps httptools and bounds the head itself:

- at most `MAX_HEADER_BYTES` of request line and headers: beyond it 431, and the connection
  closes. The bytes of a head still incomplete count too (httptools holds a header's partial
  name and value in memory until it ends: a header that never ends was buffered up to the
  time limit, 132 MB from one connection);
- the head complete within `HEADER_READ_TIMEOUT` seconds of its first byte (or of the
  connection opening): else 408 if anything arrived, and the connection closes;
- at most `MAX_CONNECTIONS` connections at once: one more is answered 503 and closed before
  anything is read, so what clients can make the process hold before they are authenticated is
  bounded by MAX_CONNECTIONS x MAX_HEADER_BYTES (plus uvicorn's 64 KiB read buffer each);
- a request httptools cannot parse (bad request line, Content-Length and Transfer-Encoding
  together, a bad length or chunk) is answered 400 before the connection closes.

Every answer is OpenAI-shaped JSON. `python app.py` serves with this protocol; under the uvicorn
CLI its own protocol (unbounded heads, plain-text 400s) is used.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import error_body


class _HeadTooLarge(Exception):
    """Raised inside the parser's callbacks; httptools reports it as a parser error."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` with a size and a time limit on each request's head."""

    max_head_bytes = 64 * 1024
    head_timeout = 10.0
    max_connections = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._head_started = False  # a byte of the current head has arrived
        self._head_timer: asyncio.TimerHandle | None = None
        self._too_large = False
        self._in_head = True  # between requests: what arrives is (the start of) a head
        self._raw_head_bytes = 0  # received since the current head began, whole or not

    # --- the timer: armed while a head is awaited ----------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(503, "The gateway has too many open connections; retry shortly.")
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._raw_head_bytes += len(data)
        super().data_received(data)
        if (
            self._in_head
            and self._raw_head_bytes > self.max_head_bytes
            and not self.transport.is_closing()
        ):
            self._too_large = True
            self._disarm()
            self._refuse(431, self._too_large_message())

    def on_message_complete(self) -> None:
        self._in_head, self._raw_head_bytes = True, 0
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._head_started = True
        if self._head_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._head_started = False
        self._in_head, self._raw_head_bytes = False, 0
        super().on_headers_complete()

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_started:
            self._refuse(408, f"The request head was not received within {self.head_timeout:g} s.")
        else:
            self.transport.close()  # a connection that never sent a request

    # --- the size ------------------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_head_bytes:
            self._too_large = True
            raise _HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to any parser error, our own raise included."""
        self._disarm()
        if self._too_large:
            self._refuse(431, self._too_large_message())
        else:
            self._refuse(400, "The request is not valid HTTP/1.1 and could not be parsed.")

    def _too_large_message(self) -> str:
        return f"The request line and headers are larger than {self.max_head_bytes} bytes."

    def _refuse(self, status: int, message: str) -> None:
        body = orjson.dumps(error_body(message, "invalid_request_error"))
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(head.encode("latin-1") + body)
        self.transport.close()


_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def limited_protocol(
    max_head_bytes: int, head_timeout: float, max_connections: int = 4096
) -> type[HttpToolsProtocol]:
    """The protocol class to give uvicorn (`Config(http=...)`) for these limits."""
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {
            "max_head_bytes": max_head_bytes,
            "head_timeout": head_timeout,
            "max_connections": max_connections,
        },
    )
