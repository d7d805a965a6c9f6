"""The HTTP/1.1 client to SGLang: one pool of keep-alive connections that stays flat however many
streams are open.

Why not httpx here: httpcore's pool scans every connection (and polls every idle socket) each
time a request starts or ends, so its cost grows with the square of the open streams. Measured
with 256 streams of 50 tokens (issue 7, `../shared/bench` scenario e), httpx's pool alone took
58 % of the gateway's core and the gateway relayed 15 % of the tokens SGLang produced. This
client talks to one known server (SGLang behind uvicorn: keep-alive, Content-Length or chunked
bodies) and does only that:

- a connection is an `asyncio.Protocol` fed by the event loop; `httptools` (llhttp, the parser
  uvicorn uses) turns bytes into status, headers and body pieces, chunked framing removed;
- idle connections wait in a LIFO deque (the most recently used is the least likely to have been
  closed by SGLang's 5 s keep-alive); taking or returning one is O(1), and requests over
  `max_connections` wait in FIFO order for the next free connection, up to the pool timeout;
- a response's body is handed over in whatever pieces have arrived (`read_some`), so a reader
  that falls behind gets one joined batch instead of one wake-up per piece; above
  `_PAUSE_READING_BYTES` buffered, reading from SGLang pauses until the reader catches up;
- the read timeout is the longest silence from SGLang while a response is awaited: one timer per
  request that re-arms itself, instead of a timeout scope per read;
- closing a response that was not read to the end closes its connection, which is what tells
  SGLang to stop generating.

Failures are raised as the `TransportError` family below; `translate.error_for_transport`
maps them to the gateway's errors.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

_PAUSE_READING_BYTES = 256 * 1024
_WRITE_HIGH_WATER = 1024 * 1024
_MAX_HEADER_BYTES = 64 * 1024


class TransportError(Exception):
    """The exchange with SGLang failed below HTTP (connection, timeout, framing)."""


class ConnectError(TransportError):
    """No connection could be opened (refused, unreachable, DNS)."""


class ConnectTimeout(TransportError):
    """Opening a connection took longer than the connect timeout."""


class PoolTimeout(TransportError):
    """Every connection stayed busy for longer than the pool timeout."""


class ReadTimeout(TransportError):
    """SGLang sent nothing for longer than the read timeout."""


class ConnectionClosed(TransportError):
    """The connection closed before the response was complete.

    `before_response` is true when not one byte of a response had arrived: on a reused
    keep-alive connection that usually means SGLang closed it just as the request was written.
    """

    def __init__(self, message: str, *, before_response: bool) -> None:
        super().__init__(message)
        self.before_response = before_response


class ProtocolError(TransportError):
    """SGLang's bytes are not valid HTTP/1.1."""


class UpstreamResponse:
    """One response: status and headers are known, the body arrives through `read_some`."""

    __slots__ = (
        "_chunks",
        "_connection",
        "_done",
        "_error",
        "_head",
        "_paused",
        "_size",
        "_waiter",
        "has_length",
        "headers",
        "status",
    )

    def __init__(self, connection: _Connection) -> None:
        self._connection: _Connection | None = connection
        self._head: asyncio.Future[None] = connection.loop.create_future()
        self._chunks: list[bytes] = []
        self._size = 0
        self._done = False
        self._error: TransportError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.has_length = False  # Content-Length or chunked: the end is marked, not a close

    @property
    def complete(self) -> bool:
        """The whole body has arrived (it may not all have been read yet)."""
        return self._done

    def header(self, name: str) -> str | None:
        value = self.headers.get(name.lower().encode("latin-1"))
        return None if value is None else value.decode("latin-1")

    async def read_some(self) -> bytes:
        """Every body byte that has arrived since the last call (waiting for at least one), or
        b"" once the body is complete."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self._chunks = []
                self._size = 0
                if self._paused:
                    self._paused = False
                    if self._connection is not None:
                        self._connection.resume_reading()
                return data
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            waiter = self._waiter = self._connection_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    async def read(self) -> bytes:
        """The rest of the body, whole."""
        parts = []
        while data := await self.read_some():
            parts.append(data)
        return b"".join(parts)

    def close(self) -> None:
        """Release the connection: back to the pool if the body was read to its end, else
        closed (which tells SGLang the request is abandoned). Idempotent."""
        connection = self._connection
        if connection is None:
            return
        self._connection = None
        reusable = self._done and self._error is None
        if self._error is None:
            self._error = ConnectionClosed("The response was closed.", before_response=False)
        connection.finish(reusable=reusable)
        self._wake()  # a reader waiting in read_some raises the error now

    # --- fed by the connection ----------------------------------------------------------------

    def _connection_loop(self) -> asyncio.AbstractEventLoop:
        if self._connection is None:
            raise ConnectionClosed("The response was closed.", before_response=False)
        return self._connection.loop

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _PAUSE_READING_BYTES and not self._paused and self._connection:
            self._paused = True
            self._connection.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self._done = True
        self._wake()

    def _fail(self, error: TransportError) -> None:
        if self._done or self._error is not None:
            return
        self._error = error
        if not self._head.done():
            self._head.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: parses responses with httptools and feeds the current one."""

    def __init__(self, pool: UpstreamClient, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self.loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.response: UpstreamResponse | None = None
        self.closed = False  # the transport is closed or being closed
        self.keep_alive = True  # the server allows another request on this connection
        self.idle = False  # waiting in the pool's idle deque
        self.idle_since = 0.0
        self._received = False  # any byte of the current response
        self._header_bytes = 0
        self._last_data = 0.0
        self._read_timeout = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._write_ready: asyncio.Future[None] | None = None

    # --- used by the pool ---------------------------------------------------------------------

    def start(self, request: bytes, read_timeout: float) -> UpstreamResponse:
        assert self.transport is not None
        assert self.response is None
        response = self.response = UpstreamResponse(self)
        if self.closed:
            # A connection handed to a waiting request can close (SGLang's keep-alive close
            # seen in the same loop turn) before that request runs; writing to it would be
            # dropped silently and the request would wait out the whole read timeout. Fail it
            # at once, as the stale keep-alive connection it is (safe to retry).
            response._fail(
                ConnectionClosed("The model server closed the connection.", before_response=True)
            )
            return response
        self._received = False
        self._header_bytes = 0
        self._read_timeout = read_timeout
        self._last_data = self.loop.time()
        self._timer = self.loop.call_later(read_timeout, self._check_silence)
        self.transport.write(request)
        return response

    async def drained(self) -> None:
        """Wait while the transport holds more than the high-water mark of unsent bytes."""
        if self._write_ready is not None:
            await asyncio.shield(self._write_ready)

    def finish(self, *, reusable: bool) -> None:
        """The current response is over; keep the connection only if it is clean."""
        self.response = None
        self._cancel_timer()
        if reusable and self.keep_alive and not self.closed:
            self.resume_reading()
            self._pool._release(self)
        else:
            self.abort()

    def abort(self) -> None:
        # Abort the transport even when `closed` is already set: `aclose()` marks a
        # connection that is still connecting closed before it has a transport, and the
        # transport it then gets must not stay open. `transport.abort()` is idempotent.
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    def pause_reading(self) -> None:
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self._reading_paused:
            self._reading_paused = False
            # The silence counts from when we listen again; a pause is our reader's delay,
            # not SGLang's (else a pause longer than the read timeout fails the response as soon
            # as reading resumes, if SGLang has nothing queued at that moment).
            self._last_data = self.loop.time()
            self.transport.resume_reading()

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None or response._done:
            self.abort()  # bytes nobody asked for: this connection can no longer be trusted
            return
        self._received = True
        self._last_data = self.loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            response._fail(ProtocolError("The model server tried to switch protocols."))
            self.abort()
        except httptools.HttpParserError as exc:
            response._fail(ProtocolError(f"The model server sent invalid HTTP: {exc}."))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        response = self.response
        if response is not None:
            if response.status and not response.has_length and not response._done:
                response._finish()  # a body delimited by the close itself (no length, not chunked)
            else:
                response._fail(
                    ConnectionClosed(
                        "The model server closed the connection.",
                        before_response=not self._received,
                    )
                )
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)
        self._pool._lost(self)

    def pause_writing(self) -> None:
        self._write_ready = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)
        self._write_ready = None

    # --- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        response = self.response
        if response is None or response.status:  # a second response to one request
            raise ProtocolError("The model server sent a response nobody asked for.")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > _MAX_HEADER_BYTES:
            raise ProtocolError("The model server sent too many header bytes.")
        assert self.response is not None
        self.response.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        response.status = self._parser.get_status_code()
        headers = response.headers
        # Transfer-coding names are case-insensitive (llhttp takes "Chunked" as chunked);
        # otherwise a chunked body cut by a close would pass for a whole body ended by the close.
        response.has_length = (
            b"content-length" in headers
            or b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        )
        if not response._head.done():
            response._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        assert response is not None
        self.keep_alive = self._parser.should_keep_alive()
        self._cancel_timer()
        response._finish()

    # --- the read timeout ---------------------------------------------------------------------

    def _check_silence(self) -> None:
        self._timer = None
        response = self.response
        if response is None:
            return
        silent = self.loop.time() - self._last_data
        if silent >= self._read_timeout and not self._reading_paused:
            response._fail(ReadTimeout("The model server sent nothing in time."))
            self.abort()
        elif self._reading_paused:
            # Our reader is the slow one: look again a whole read timeout later.
            self._timer = self.loop.call_later(self._read_timeout, self._check_silence)
        else:  # data came meanwhile: wait the rest
            self._timer = self.loop.call_later(
                max(self._read_timeout - silent, 0.001), self._check_silence
            )

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class UpstreamClient:
    """Requests to one HTTP/1.1 server (`base_url`) over pooled keep-alive connections."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 1024,
        connect_timeout: float = 5.0,
        read_timeout: float = 600.0,
        pool_timeout: float = 5.0,
        keepalive_expiry: float = 4.0,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self._prefix = url.path.rstrip("/")
        host_header = url.netloc.rsplit("@", 1)[-1]
        fixed = {"Host": host_header, "Accept-Encoding": "identity", **(headers or {})}
        self._fixed_headers = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self.max_connections = max_connections
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._pool_timeout = pool_timeout
        self._keepalive_expiry = keepalive_expiry
        self._idle: deque[_Connection] = deque()
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._connections: set[_Connection] = set()  # every open connection, busy or idle
        self._reserved = 0  # free slots handed to waiters that have not connected yet
        self._closed = False

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        headers: Iterable[tuple[str, str]] = (),
    ) -> UpstreamResponse:
        """Send one request; return once the status line and headers have arrived.

        The caller must `close()` the response (after reading it or not)."""
        request_line = f"{method} {self._prefix}{path} HTTP/1.1\r\n".encode("latin-1")
        head = [request_line, self._fixed_headers]
        for name, value in headers:
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        if body or method not in ("GET", "HEAD"):
            head.append(b"Content-Length: %d\r\n" % len(body))
        head.append(b"\r\n")
        head.append(body)
        connection = await self._acquire()
        response = connection.start(b"".join(head), self._read_timeout)
        try:
            await connection.drained()
            await response._head
        except BaseException:
            response.close()
            raise
        return response

    async def get(self, path: str) -> tuple[int, bytes]:
        """Status and whole body of a GET."""
        response = await self.request("GET", path)
        try:
            return response.status, await response.read()
        finally:
            response.close()

    async def aclose(self) -> None:
        """Close every connection; requests in progress fail with `ConnectionClosed`."""
        self._closed = True
        for connection in self._idle:
            connection.idle = False
        self._idle.clear()
        for connection in list(self._connections):
            connection.abort()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ConnectError("The client was closed."))

    # --- the pool -----------------------------------------------------------------------------

    async def _acquire(self) -> _Connection:
        if self._closed:
            raise ConnectError("The client was closed.")
        idle = self._idle
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            connection.idle = False
            if (
                not connection.closed
                and now - connection.idle_since < self._keepalive_expiry
                and connection.transport is not None
                and not connection.transport.is_closing()
            ):
                return connection
            connection.abort()
        if len(self._connections) + self._reserved >= self.max_connections:
            waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(self._pool_timeout):
                    handed = await waiter
            except BaseException as exc:
                # The pool timeout too: a connection or slot handed over in the loop turn in
                # which the timeout fires would otherwise be lost to the pool for good.
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    handed = waiter.result()  # handed to us just as we were cancelled
                    if handed is None:
                        self._reserved -= 1
                    self._pass_on(handed)
                if isinstance(exc, TimeoutError):
                    raise PoolTimeout("No connection to the model server became free.") from None
                raise
            finally:
                if not waiter.done():
                    waiter.cancel()
            if handed is not None:
                return handed
            self._reserved -= 1  # the slot is ours: open a connection in it
        return await self._connect()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connection = _Connection(self, loop)
        self._connections.add(connection)  # holds its slot while connecting
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(
                    lambda: connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError:
            self._forget(connection)
            raise ConnectTimeout("Connecting to the model server timed out.") from None
        except OSError as exc:
            self._forget(connection)
            raise ConnectError(f"Cannot connect to the model server: {exc}.") from exc
        except BaseException:
            self._forget(connection)
            connection.abort()
            raise
        if self._closed:
            # aclose() ran while this connection was being opened; it must not be used.
            self._forget(connection)
            connection.abort()
            raise ConnectError("The client was closed.")
        return connection

    def _release(self, connection: _Connection) -> None:
        """A connection whose response is complete: to a waiting request, or idle."""
        if self._closed:
            connection.abort()
            return
        self._pass_on(connection)

    def _pass_on(self, connection: _Connection | None) -> None:
        """Give a free connection (or, with None, a free slot) to the first live waiter."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                if connection is None:
                    self._reserved += 1
                waiter.set_result(connection)
                return
        if connection is None:
            return
        now = time.monotonic()
        connection.idle_since = now
        connection.idle = True
        idle = self._idle
        idle.append(connection)
        # Amortised clean-up: the oldest idle connections first, in O(1) per release.
        while idle and now - idle[0].idle_since >= self._keepalive_expiry:
            expired = idle.popleft()
            expired.idle = False
            expired.abort()

    def _lost(self, connection: _Connection) -> None:
        """The connection closed (either side)."""
        self._forget(connection)
        if connection.idle:
            connection.idle = False
            self._idle.remove(connection)  # SGLang closed an idle connection: rare

    def _forget(self, connection: _Connection) -> None:
        """The connection no longer holds a slot; a waiting request may open its own."""
        if connection in self._connections:
            self._connections.discard(connection)
            if self._waiters:
                self._pass_on(None)
