"""Tests for `upstream`, the HTTP/1.1 client to SGLang, against real sockets on 127.0.0.1.

Every test runs a small asyncio server (`Server`) scripted by a handler coroutine that reads the
client's requests and writes whatever raw bytes the test needs: Content-Length or chunked bodies
split into arbitrary writes, `Connection: close`, bodies ended by the close, garbage, silence,
abrupt closes. The server records what it received, how many connections it accepted and whether
the client closed each one, so the tests check the bytes on the wire and the pool's behaviour
rather than mocks. Every wait is bounded (`BOUND`): a regression fails a test, it never hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import select
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from gateway.sglang import upstream
from gateway.sglang.upstream import (
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    PoolTimeout,
    ProtocolError,
    ReadTimeout,
    TransportError,
    UpstreamClient,
    UpstreamResponse,
)

pytestmark = pytest.mark.anyio

T = TypeVar("T")

BOUND = 3.0  # seconds: the longest any single wait in this module may take
CHUNKED = ("Transfer-Encoding", "chunked")
LAST_CHUNK = b"0\r\n\r\n"


# --- the bytes a server sends -----------------------------------------------------------------


def head(
    status: int = 200, headers: Iterable[tuple[str, str]] = (), version: str = "HTTP/1.1"
) -> bytes:
    """A status line and header block."""
    lines = [f"{version} {status} Whatever"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def http_response(body: bytes, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """A whole 200 response with a Content-Length body."""
    return head(headers=[("Content-Length", str(len(body))), *headers]) + body


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (`data` must not be empty: that is the last chunk)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def chunked_response(*pieces: bytes) -> bytes:
    """A whole 200 response with a chunked body, one chunk per piece."""
    return head(headers=[CHUNKED]) + b"".join(map(chunk, pieces)) + LAST_CHUNK


def split_randomly(data: bytes, rng: random.Random, most: int) -> list[bytes]:
    """`data` cut into consecutive pieces of 1 to `most` bytes."""
    pieces, start = [], 0
    while start < len(data):
        end = start + rng.randint(1, most)
        pieces.append(data[start:end])
        start = end
    return pieces


# --- the scripted server ----------------------------------------------------------------------


@dataclass
class Request:
    """One request as the server read it off the wire."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]  # in order, names as sent
    body: bytes = b""

    @property
    def line(self) -> str:
        return f"{self.method} {self.target} {self.version}"

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def parse_head(raw: bytes) -> Request:
    line, *fields = raw[:-4].decode("latin-1").split("\r\n")
    method, target, version = line.split(" ")
    headers = [(name, value) for name, _, value in (f.partition(": ") for f in fields)]
    return Request(method, target, version, headers)


class Peer:
    """The server's side of one accepted connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.requests: list[Request] = []
        self.sent = 0  # bytes written and drained
        self.client_gone = asyncio.Event()  # EOF or reset from the client

    async def next_request(self) -> Request | None:
        """The next request on this connection, or None once the client has closed it."""
        try:
            request = parse_head(await self.reader.readuntil(b"\r\n\r\n"))
            request.body = await self.reader.readexactly(int(request.header("Content-Length") or 0))
        except (asyncio.IncompleteReadError, ConnectionError):
            self.client_gone.set()
            return None
        self.requests.append(request)
        return request

    async def send(self, *pieces: bytes, pause: float = 0.0) -> None:
        """Write the pieces one by one, each drained, `pause` seconds apart."""
        for index, piece in enumerate(pieces):
            if index and pause:
                await asyncio.sleep(pause)
            self.writer.write(piece)
            await self.writer.drain()
            self.sent += len(piece)

    async def wait_client_gone(self) -> None:
        """Read (and drop) whatever comes until the client closes the connection."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass
        self.client_gone.set()

    def shutdown_write(self) -> None:
        """Send FIN now, synchronously (a StreamWriter would close on the next loop turn)."""
        self.writer.get_extra_info("socket").shutdown(socket.SHUT_WR)


Handler = Callable[[Peer], Awaitable[None]]
Reply = Callable[[Peer, Request], Awaitable[None]]


class Server:
    """An asyncio TCP server on an ephemeral 127.0.0.1 port running `handler` per connection."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.peers: list[Peer] = []  # in the order they were accepted
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def accepted(self) -> int:
        return len(self.peers)

    @property
    def requests(self) -> list[Request]:
        return [request for peer in self.peers for request in peer.requests]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for peer in self.peers:
            peer.writer.close()
            with contextlib.suppress(ConnectionError):
                await peer.writer.wait_closed()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(reader, writer)
        self.peers.append(peer)
        try:
            await self._handler(peer)
        except ConnectionError:
            peer.client_gone.set()
        except asyncio.CancelledError:
            pass  # stop() ends the handler: a cancelled task here makes asyncio 3.11 log an error
        finally:
            writer.close()


def serve(reply: Reply) -> Handler:
    """Answer every request of a connection with `reply`, until the client closes it."""

    async def handler(peer: Peer) -> None:
        while (request := await peer.next_request()) is not None:
            await reply(peer, request)

    return handler


def answer(*pieces: bytes, pause: float = 0.0) -> Reply:
    """A reply writing `pieces`, `pause` seconds apart."""

    async def reply(peer: Peer, request: Request) -> None:
        await peer.send(*pieces, pause=pause)

    return reply


OK = serve(answer(http_response(b"ok")))
PARTIAL = head(headers=[("Content-Length", "10")]) + b"12345"  # and then nothing


async def partial_or_ok(peer: Peer, request: Request) -> None:
    """PARTIAL to a request for /partial, else a whole "ok"."""
    await peer.send(PARTIAL if request.target == "/partial" else http_response(b"ok"))


def answer_then(data: bytes, then: Callable[[Peer], Awaitable[None]]) -> Handler:
    """Read one request, write `data`, then do `then` (its end closes the connection)."""

    async def handler(peer: Peer) -> None:
        if await peer.next_request() is not None:
            await peer.send(data)
            await then(peer)

    return handler


async def close_now(peer: Peer) -> None:
    peer.writer.close()


async def stay_silent(peer: Peer) -> None:
    await peer.wait_client_gone()


@contextlib.asynccontextmanager
async def running(
    handler: Handler, *, base_path: str = "", **options: Any
) -> AsyncIterator[tuple[Server, UpstreamClient]]:
    """A server running `handler` and a client for it (short timeouts unless overridden)."""
    server = Server(handler)
    await server.start()
    settings: dict[str, Any] = {
        "connect_timeout": BOUND,
        "read_timeout": BOUND,
        "pool_timeout": BOUND,
        **options,
    }
    client = UpstreamClient(server.url + base_path, **settings)
    try:
        yield server, client
    finally:
        await client.aclose()
        await server.stop()


# --- small client-side helpers ----------------------------------------------------------------


async def fetch(
    client: UpstreamClient, path: str = "/", method: str = "GET", body: bytes = b"", **kw: Any
) -> tuple[UpstreamResponse, bytes]:
    """One whole exchange: the (closed) response and its body."""
    response = await bounded(client.request(method, path, body, **kw))
    try:
        return response, await bounded(response.read())
    finally:
        response.close()


async def bounded(awaitable: Awaitable[T], seconds: float = BOUND) -> T:
    """`awaitable`, within `seconds` (in the current task: cancellation reaches it directly)."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def eventually(condition: Callable[[], bool], seconds: float = BOUND) -> None:
    """Poll `condition` every 5 ms until it holds; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.005)


async def spin_until(condition: Callable[[], bool], turns: int = 100) -> None:
    """Yield to the loop one turn at a time until `condition` holds (for races to the turn)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition did not hold in time")


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def slow_connect(monkeypatch: pytest.MonkeyPatch, delay: float) -> None:
    """Make the running loop's create_connection wait `delay` seconds first."""
    loop = asyncio.get_running_loop()
    original = loop.create_connection

    async def create_connection(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(delay)
        return await original(*args, **kwargs)

    monkeypatch.setattr(loop, "create_connection", create_connection)


# --- round trips ------------------------------------------------------------------------------


async def test_get_sends_the_expected_request_and_reads_the_response() -> None:
    reply = answer(http_response(b"hello", headers=[("X-Answer", "42")]))
    async with running(
        serve(reply), base_path="/prefix/", headers={"Authorization": "Bearer secret"}
    ) as (server, client):
        response = await bounded(client.request("GET", "/v1/models"))
        try:
            assert response.status == 200
            assert response.header("x-answer") == response.header("X-ANSWER") == "42"
            assert response.header("Content-Length") == "5"
            assert response.header("missing") is None
            assert response.has_length
            assert await bounded(response.read()) == b"hello"
            assert response.complete
        finally:
            response.close()
        assert await bounded(client.get("/health")) == (200, b"hello")
    first, second = server.requests
    assert first.line == "GET /prefix/v1/models HTTP/1.1"
    assert first.headers == [  # exactly these: no Content-Length on a GET without a body
        ("Host", f"127.0.0.1:{server.port}"),
        ("Accept-Encoding", "identity"),
        ("Authorization", "Bearer secret"),
    ]
    assert first.body == b""
    assert second.line == "GET /prefix/health HTTP/1.1"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b'{"messages": []}', id="small"),
        pytest.param(random.Random(1).randbytes(4 << 20), id="larger-than-the-write-buffer"),
    ],
)
async def test_post_sends_its_body_and_reads_the_response_piece_by_piece(body: bytes) -> None:
    pieces = [b"first ", b"second ", b"third"]
    reply = answer(head(headers=[CHUNKED]), *map(chunk, pieces), LAST_CHUNK, pause=0.02)
    async with running(serve(reply)) as (server, client):
        response = await bounded(
            client.request("POST", "/v1/chat", body, headers=[("Content-Type", "text/plain")])
        )
        try:
            assert not response.complete
            received = []
            while data := await bounded(response.read_some()):
                received.append(data)
            assert response.complete
            assert await bounded(response.read_some()) == b""  # and stays at the end
        finally:
            response.close()
    assert len(received) > 1  # the pieces came as they were written, not all at the end
    assert b"".join(received) == b"".join(pieces)
    [request] = server.requests
    assert request.line == "POST /v1/chat HTTP/1.1"
    assert request.header("Content-Type") == "text/plain"
    assert request.header("Content-Length") == str(len(body))
    assert request.body == body


async def test_a_no_content_response_is_complete_at_once() -> None:
    async with running(serve(answer(head(204)))) as (server, client):
        for _ in range(2):
            response, body = await fetch(client, method="DELETE")
            assert (response.status, body, response.complete) == (204, b"", True)
    assert server.accepted == 1


def test_a_base_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="not an http"):
        UpstreamClient("ftp://127.0.0.1/")


# --- body framing -----------------------------------------------------------------------------

SPLIT_RESPONSE = (
    head(headers=[CHUNKED, ("X-After", "chunks")])
    + chunk(b"Hello, ")
    + b"6;name=value\r\nworld!\r\n"  # a chunk extension, ignored
    + chunk(b"\r\n\x00\xff" * 3)
    + LAST_CHUNK
)
SPLIT_BODY = b"Hello, world!" + b"\r\n\x00\xff" * 3


async def test_a_chunked_response_split_at_every_byte_boundary_is_reassembled() -> None:
    async def reply(peer: Peer, request: Request) -> None:
        cut = int(request.target[1:])
        await peer.send(SPLIT_RESPONSE[:cut], SPLIT_RESPONSE[cut:], pause=0.002)

    async with running(serve(reply)) as (server, client):
        for cut in range(1, len(SPLIT_RESPONSE)):
            response, body = await fetch(client, f"/{cut}")
            assert (response.status, response.header("X-After"), body) == (
                200,
                "chunks",
                SPLIT_BODY,
            ), cut
    assert server.accepted == 1  # and the parser carried over cleanly from one response to the next


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_random_chunks_and_random_writes_reassemble_exactly(framing: str) -> None:
    rng = random.Random(framing)
    bodies = [rng.randbytes(rng.randint(0, 20_000)) for _ in range(20)]

    async def reply(peer: Peer, request: Request) -> None:
        body = bodies[int(request.target[1:])]
        if framing == "chunked":
            raw = chunked_response(*split_randomly(body, rng, 3000))
        else:
            raw = http_response(body)
        await peer.send(*split_randomly(raw, rng, 2000), pause=0.001)

    async with running(serve(reply)) as (server, client):
        for index, expected in enumerate(bodies):
            assert (await fetch(client, f"/{index}"))[1] == expected, index
    assert server.accepted == 1


async def test_read_some_returns_every_buffered_piece_joined_in_one_call() -> None:
    pieces = [b"a" * 10, b"b" * 20, b"c" * 30]
    reply = answer(head(headers=[CHUNKED]), *map(chunk, pieces), LAST_CHUNK, pause=0.01)
    async with running(serve(reply)) as (_, client):
        response = await bounded(client.request("GET", "/"))
        try:
            await eventually(lambda: response.complete)  # complete, though nothing read yet
            assert len(response._chunks) == len(pieces)  # arrived as separate pieces
            assert await bounded(response.read_some()) == b"".join(pieces)
            assert await bounded(response.read_some()) == b""
        finally:
            response.close()


async def test_a_body_without_length_ends_when_the_server_closes() -> None:
    async def then(peer: Peer) -> None:
        await peer.send(b"first,", b"second", pause=0.01)
        peer.writer.close()

    async with running(answer_then(head(), then)) as (server, client):
        response, body = await fetch(client)
        assert (response.has_length, response.complete, body) == (False, True, b"first,second")
        assert (await fetch(client))[1] == b"first,second"  # on a fresh connection
    assert server.accepted == 2


# --- keep-alive -------------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection() -> None:
    async with running(OK) as (server, client):
        for _ in range(3):
            assert (await fetch(client))[1] == b"ok"
        assert (client.open_connections, client.idle_connections) == (1, 1)
    assert (server.accepted, len(server.requests)) == (1, 3)


async def test_closing_a_response_before_its_end_closes_its_connection() -> None:
    async with running(serve(partial_or_ok)) as (server, client):
        response = await bounded(client.request("GET", "/partial"))
        assert await bounded(response.read_some()) == b"12345"
        assert not response.complete
        response.close()
        await bounded(server.peers[0].client_gone.wait())  # SGLang learns the request is over
        assert (await fetch(client))[1] == b"ok"
        assert client.open_connections == 1
    assert server.accepted == 2


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            http_response(b"ok", headers=[("Connection", "close")]), id="connection-close"
        ),
        pytest.param(head(headers=[("Content-Length", "2")], version="HTTP/1.0") + b"ok", id="1.0"),
    ],
)
async def test_a_response_that_ends_the_connection_is_not_reused(raw: bytes) -> None:
    async with running(serve(answer(raw))) as (server, client):
        assert (await fetch(client))[1] == b"ok"
        # The server keeps its side open: the client must close the connection itself.
        await bounded(server.peers[0].client_gone.wait())
        assert (await fetch(client))[1] == b"ok"
    assert server.accepted == 2


async def test_the_most_recently_released_idle_connection_is_reused_first() -> None:
    async with running(OK) as (server, client):
        older, newer = [await bounded(client.request("GET", "/")) for _ in range(2)]
        older.close()
        newer.close()
        await fetch(client, "/next")
    assert [len(peer.requests) for peer in server.peers] == [1, 2]


async def test_an_idle_connection_older_than_keepalive_expiry_is_not_reused() -> None:
    async with running(OK, keepalive_expiry=0.1) as (server, client):
        await fetch(client)
        await fetch(client)
        assert server.accepted == 1  # within the expiry: reused
        await asyncio.sleep(0.15)
        await fetch(client)
        assert server.accepted == 2
        await bounded(server.peers[0].client_gone.wait())  # and the expired one was closed


async def test_unsolicited_bytes_on_an_idle_connection_close_it() -> None:
    async def reply(peer: Peer, request: Request) -> None:
        await peer.send(http_response(b"ok"), b"HTTP/1.1 200 OK\r\n", pause=0.02)

    async with running(serve(reply)) as (server, client):
        await fetch(client)
        await bounded(server.peers[0].client_gone.wait())
        assert (client.open_connections, client.idle_connections) == (0, 0)
        assert (await fetch(client))[1] == b"ok"
    assert server.accepted == 2


# --- a server closing idle keep-alive connections ---------------------------------------------


def closes_idle_after(seconds: float) -> Handler:
    """Answer "ok" to each request; close the connection once it has been idle `seconds`."""

    async def handler(peer: Peer) -> None:
        request = await peer.next_request()
        while request is not None:
            await peer.send(http_response(b"ok"))
            try:
                request = await asyncio.wait_for(peer.next_request(), seconds)
            except TimeoutError:
                return

    return handler


async def test_an_idle_connection_the_server_closed_is_dropped_from_the_pool() -> None:
    async with running(closes_idle_after(0.05)) as (server, client):
        await fetch(client)
        await eventually(lambda: client.open_connections == 0)  # the close was noticed
        assert client.idle_connections == 0
        assert (await fetch(client))[1] == b"ok"
    assert server.accepted == 2


async def test_a_close_racing_the_request_raises_connection_closed_before_response() -> None:
    async with running(OK) as (server, client):
        await fetch(client)
        # The server drops the idle connection; the client cannot have noticed when it writes.
        server.peers[0].writer.transport.abort()
        with pytest.raises(ConnectionClosed) as caught:
            await fetch(client)
        assert caught.value.before_response  # so the request may safely be retried
        assert (await fetch(client))[1] == b"ok"
    assert server.accepted == 2


async def test_requests_around_the_server_idle_close_never_hang() -> None:
    async with running(closes_idle_after(0.03)) as (_, client):
        for delay in (0.02, 0.025, 0.028, 0.03, 0.032, 0.035, 0.04, 0.05):
            await fetch(client)
            await asyncio.sleep(delay)
            try:
                outcome = (await fetch(client))[1]  # reused in time, or a fresh connection
            except ConnectionClosed as exc:
                outcome = b"retry" if exc.before_response else b"unsafe to retry"
            assert outcome in (b"ok", b"retry"), delay  # "retry": lost the race to the close


async def test_a_connection_closed_while_handed_to_a_waiter_fails_fast_for_a_retry() -> None:
    async with running(OK, max_connections=1, read_timeout=1) as (server, client):
        held = await bounded(client.request("GET", "/held"))
        await bounded(held.read())
        waiting = asyncio.create_task(fetch(client, "/waiting"))
        await spin_until(lambda: len(client._waiters) == 1)
        # The server closes the connection; its FIN is in the client's socket before the loop's
        # next turn, which reads it (the connection starts closing) and then, from a timer,
        # releases the connection to the waiter: the waiter only runs once it is closed.
        server.peers[0].shutdown_write()
        assert held._connection is not None and held._connection.transport is not None
        select.select([held._connection.transport.get_extra_info("socket")], [], [], BOUND)
        asyncio.get_running_loop().call_later(0, held.close)
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as caught:
            await bounded(waiting)
        assert caught.value.before_response
        assert time.monotonic() - started < 0.5  # not after the read timeout
        assert (await fetch(client))[1] == b"ok"
        assert client.open_connections == 1


# --- the pool limit ---------------------------------------------------------------------------


async def test_a_request_over_max_connections_waits_for_a_released_connection() -> None:
    async with running(OK, max_connections=2) as (server, client):
        first = await bounded(client.request("GET", "/1"))
        second = await bounded(client.request("GET", "/2"))
        third = asyncio.create_task(fetch(client, "/3"))
        await asyncio.sleep(0.1)
        assert not third.done()
        assert (server.accepted, client.open_connections) == (2, 2)
        assert await bounded(first.read()) == b"ok"
        first.close()
        assert (await bounded(third))[1] == b"ok"
        second.close()
        assert client.open_connections == 2
    assert server.accepted == 2


async def test_waiting_requests_get_connections_in_arrival_order() -> None:
    async with running(OK, max_connections=1) as (server, client):
        held = await bounded(client.request("GET", "/held"))
        waiting = []
        for name in ("a", "b", "c"):
            waiting.append(asyncio.create_task(fetch(client, f"/{name}")))
            await spin_until(lambda: len(client._waiters) == len(waiting))
        await bounded(held.read())
        held.close()
        await bounded(asyncio.gather(*waiting))
    assert [request.target for request in server.requests] == ["/held", "/a", "/b", "/c"]


async def test_a_request_waiting_longer_than_pool_timeout_raises_pool_timeout() -> None:
    async with running(OK, max_connections=1, pool_timeout=0.1) as (_, client):
        held = await bounded(client.request("GET", "/held"))
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            await bounded(client.request("GET", "/waiting"))
        assert 0.09 <= time.monotonic() - started < 1.0
        held.close()
        assert (await fetch(client))[1] == b"ok"


@pytest.mark.parametrize("moment", ["waiting", "handed-a-connection", "handed-a-slot"])
async def test_a_cancelled_waiter_does_not_leak_its_slot(moment: str) -> None:
    async with running(serve(partial_or_ok), max_connections=1) as (_, client):
        held = await bounded(
            client.request("GET", "/partial" if moment == "handed-a-slot" else "/")
        )
        waiting = asyncio.create_task(fetch(client, "/cancelled"))
        await spin_until(lambda: len(client._waiters) == 1)
        waiter = client._waiters[0]
        if moment == "handed-a-connection":
            await bounded(held.read())
            held.close()  # the connection goes to the waiter, whose task has not run yet
            assert waiter.done()
        elif moment == "handed-a-slot":
            held.close()  # unread: the connection is closed, and its slot handed on once gone
            await spin_until(waiter.done)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        held.close()
        assert client._reserved == 0
        assert client.open_connections <= 1
        assert (await fetch(client))[1] == b"ok"
        assert client.open_connections == 1


async def test_a_pool_timeout_racing_a_release_does_not_leak_the_connection() -> None:
    async with running(OK, max_connections=1, pool_timeout=0.2) as (_, client):
        held = await bounded(client.request("GET", "/held"))
        await bounded(held.read())
        waiting = asyncio.create_task(fetch(client, "/waiting"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        # The release is due before the waiter's pool deadline, but the loop is blocked past
        # both: they then run in the same turn, the release first, then the timeout.
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, held.close)
        loop.call_soon(time.sleep, 0.3)
        [outcome] = await bounded(asyncio.gather(waiting, return_exceptions=True))
        assert isinstance(outcome, (tuple, PoolTimeout)), outcome
        assert client._reserved == 0
        assert client.open_connections == 1
        assert (await fetch(client))[1] == b"ok"  # the connection is back in the pool


async def test_many_concurrent_requests_share_max_connections() -> None:
    async def reply(peer: Peer, request: Request) -> None:
        await asyncio.sleep(0.002)
        await peer.send(http_response(request.target.encode()))

    async with running(serve(reply), max_connections=50) as (server, client):
        most_open = 0

        async def one(index: int) -> bytes:
            nonlocal most_open
            response = await client.request("GET", f"/{index}")
            most_open = max(most_open, client.open_connections)
            try:
                return await response.read()
            finally:
                response.close()

        bodies = await bounded(asyncio.gather(*(one(index) for index in range(200))), 10)
        assert bodies == [f"/{index}".encode() for index in range(200)]
        assert most_open == 50
        assert (client.open_connections, client.idle_connections) == (50, 50)
    assert server.accepted == 50


# --- timeouts and failures --------------------------------------------------------------------


async def test_a_server_that_stalls_mid_body_raises_read_timeout() -> None:
    async with running(answer_then(PARTIAL, stay_silent), read_timeout=0.2) as (server, client):
        response = await bounded(client.request("GET", "/"))
        try:
            assert await bounded(response.read_some()) == b"12345"
            started = time.monotonic()
            with pytest.raises(ReadTimeout):
                await bounded(response.read_some())
            assert 0.15 <= time.monotonic() - started < 1.0
        finally:
            response.close()
        await bounded(server.peers[0].client_gone.wait())
        await eventually(lambda: client.open_connections == 0)


async def test_a_server_that_never_answers_raises_read_timeout_from_request() -> None:
    async with running(answer_then(b"", stay_silent), read_timeout=0.2) as (server, client):
        started = time.monotonic()
        with pytest.raises(ReadTimeout):
            await bounded(client.request("GET", "/"))
        assert 0.15 <= time.monotonic() - started < 1.0
        await bounded(server.peers[0].client_gone.wait())
        await eventually(lambda: client.open_connections == 0)


async def test_a_slow_but_steady_body_does_not_time_out() -> None:
    pieces = [bytes([byte]) for byte in b"steadily"]  # 0.4 s in all, a byte every 0.05 s
    reply = answer(head(headers=[CHUNKED]), *map(chunk, pieces), LAST_CHUNK, pause=0.05)
    async with running(serve(reply), read_timeout=0.2) as (_, client):
        assert (await fetch(client))[1] == b"steadily"


async def test_a_finished_exchange_is_not_subject_to_the_read_timeout() -> None:
    async with running(OK, read_timeout=0.1) as (server, client):
        response = await bounded(client.request("GET", "/"))
        await eventually(lambda: response.complete)
        await asyncio.sleep(0.25)  # complete but not closed yet, longer than the read timeout
        assert await bounded(response.read()) == b"ok"
        response.close()
        await asyncio.sleep(0.25)  # idle, longer than the read timeout
        assert client.idle_connections == 1
        await fetch(client)
    assert server.accepted == 1


async def test_a_refused_connection_raises_connect_error_and_frees_its_slot() -> None:
    client = UpstreamClient(f"http://127.0.0.1:{free_port()}", max_connections=1, pool_timeout=1)
    try:
        for _ in range(2):  # a leaked slot would make the second attempt a PoolTimeout
            with pytest.raises(ConnectError) as caught:
                await bounded(client.request("GET", "/"))
            assert isinstance(caught.value.__cause__, OSError)
        assert client.open_connections == 0
    finally:
        await client.aclose()


async def test_a_slow_connect_raises_connect_timeout_and_frees_its_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options: dict[str, Any] = {"max_connections": 1, "connect_timeout": 0.1, "pool_timeout": 1}
    async with running(OK, **options) as (server, client):
        slow_connect(monkeypatch, BOUND)
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(ConnectTimeout):
                await bounded(client.request("GET", "/"))
            assert time.monotonic() - started < 1.0
        assert client.open_connections == 0
        monkeypatch.undo()
        assert (await fetch(client))[1] == b"ok"
    assert server.accepted == 1


async def test_a_request_cancelled_while_connecting_frees_its_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running(OK, max_connections=1) as (server, client):
        slow_connect(monkeypatch, 0.05)
        connecting = asyncio.create_task(fetch(client))
        await asyncio.sleep(0.01)
        assert client.open_connections == 1  # holds its slot while connecting
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
        assert client.open_connections == 0
        assert (await fetch(client))[1] == b"ok"
    assert server.accepted == 1


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"hello there\r\n\r\n", id="not-http"),
        pytest.param(b"HTTP/1.1 abc OK\r\n\r\n", id="bad-status"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", id="bad-length"),
        pytest.param(head(headers=[CHUNKED]) + b"zz\r\nhello\r\n", id="bad-chunk-size"),
        pytest.param(head(headers=[("X-Big", "a" * (64 * 1024))]), id="too-many-header-bytes"),
    ],
)
async def test_invalid_http_raises_protocol_error_and_closes_the_connection(raw: bytes) -> None:
    async with running(answer_then(raw, stay_silent)) as (server, client):
        with pytest.raises(ProtocolError):
            await fetch(client)  # from request() or from reading the body, as the bytes go
        await bounded(server.peers[0].client_gone.wait())
        await eventually(lambda: client.open_connections == 0)


async def test_a_protocol_switch_ends_the_response_and_its_connection() -> None:
    raw = head(101, [("Upgrade", "websocket"), ("Connection", "Upgrade")]) + b"\x81\x00"
    async with running(answer_then(raw, stay_silent)) as (server, client):
        # What happens today: a 101 is a complete response without a body (the ProtocolError
        # for an upgrade is dropped because the message is already complete); never reused.
        response, body = await fetch(client)
        assert (response.status, body) == (101, b"")
        await bounded(server.peers[0].client_gone.wait())
        await eventually(lambda: client.open_connections == 0)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(head(headers=[("Content-Length", "100")]) + b"x" * 10, id="content-length"),
        pytest.param(head(headers=[CHUNKED]) + chunk(b"x" * 10), id="chunked"),
        pytest.param(
            head(headers=[("Transfer-Encoding", "Chunked")]) + chunk(b"x" * 10),
            id="chunked-capitalised",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Le", id="in-the-head"),
    ],
)
async def test_a_server_dying_mid_response_raises_connection_closed_after_response(
    raw: bytes,
) -> None:
    async with running(answer_then(raw, close_now)) as (_, client):
        with pytest.raises(ConnectionClosed) as caught:
            await fetch(client)
        assert not caught.value.before_response  # part of an answer came: not safe to retry


async def test_a_server_closing_unanswered_raises_connection_closed_before_response() -> None:
    async with running(answer_then(b"", close_now)) as (_, client):
        with pytest.raises(ConnectionClosed) as caught:
            await fetch(client)
        assert caught.value.before_response


# --- back-pressure ----------------------------------------------------------------------------


async def test_a_large_body_read_slowly_pauses_the_server_and_arrives_intact() -> None:
    body = random.Random(2).randbytes(8 << 20)
    writes = [body[start : start + 65536] for start in range(0, len(body), 65536)]
    reply = answer(head(headers=[("Content-Length", str(len(body)))]), *writes)
    async with running(serve(reply)) as (server, client):
        response = await bounded(client.request("GET", "/"))
        try:
            await eventually(lambda: response._paused)
            await asyncio.sleep(0.1)
            stalled_at = server.peers[0].sent
            await asyncio.sleep(0.1)
            assert server.peers[0].sent == stalled_at < len(body)  # the server is held back
            parts, paused = [], 0
            while True:
                paused += response._paused
                data = await bounded(response.read_some())
                if not data:
                    break
                assert not response._paused  # reading resumed
                parts.append(data)
                await asyncio.sleep(0.001)  # a slow reader
        finally:
            response.close()
        assert paused > 2  # reading paused and resumed again and again
        assert max(map(len, parts)) <= 2 * upstream._PAUSE_READING_BYTES  # memory stays bounded
        assert hashlib.sha256(b"".join(parts)).digest() == hashlib.sha256(body).digest()
        assert len((await fetch(client))[1]) == len(body)  # the connection was clean: reused
    assert server.accepted == 1


def pauses_with_an_empty_socket(resume: asyncio.Event) -> Handler:
    """Send exactly enough body to pause the client's reading, then the rest only once the
    test sets `resume` (plus 0.1 s): while paused, nothing more waits in the socket."""
    threshold = upstream._PAUSE_READING_BYTES
    size = threshold + 1 + 4

    async def then(peer: Peer) -> None:
        await peer.send(b"x", pause=0.05)  # one byte over the threshold: reading pauses
        await resume.wait()
        await asyncio.sleep(0.1)
        await peer.send(b"rest")
        await peer.wait_client_gone()

    data = head(headers=[("Content-Length", str(size))]) + b"x" * threshold
    return answer_then(data, then)


async def test_a_long_pause_does_not_poll_the_read_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = 0
    check_silence = upstream._Connection._check_silence

    def counting(connection: upstream._Connection) -> None:
        nonlocal checks
        checks += 1
        check_silence(connection)

    monkeypatch.setattr(upstream._Connection, "_check_silence", counting)
    resume = asyncio.Event()
    async with running(pauses_with_an_empty_socket(resume), read_timeout=0.2) as (_, client):
        response = await bounded(client.request("GET", "/"))
        try:
            await eventually(lambda: response._paused)
            await asyncio.sleep(0.5)
            assert checks < 10  # a few re-arms of the 0.2 s timer, not one every millisecond
        finally:
            response.close()


async def test_the_read_timeout_counts_from_when_reading_resumes() -> None:
    resume = asyncio.Event()
    async with running(pauses_with_an_empty_socket(resume), read_timeout=0.2) as (_, client):
        response = await bounded(client.request("GET", "/"))
        try:
            await eventually(lambda: response._paused)
            await asyncio.sleep(0.5)  # longer than the read timeout, our fault, not SGLang's
            assert len(await bounded(response.read_some())) == upstream._PAUSE_READING_BYTES + 1
            resume.set()  # SGLang answers 0.1 s after we read again: within the read timeout
            assert await bounded(response.read()) == b"rest"
        finally:
            response.close()


# --- closing ----------------------------------------------------------------------------------


async def test_closing_a_response_twice_releases_its_connection_once() -> None:
    async with running(OK) as (server, client):
        response = await bounded(client.request("GET", "/"))
        assert await bounded(response.read()) == b"ok"
        assert response.complete
        response.close()
        response.close()
        assert (client.open_connections, client.idle_connections) == (1, 1)
        assert (await fetch(client))[1] == b"ok"
    assert server.accepted == 1


async def test_a_closed_unfinished_response_cannot_be_read() -> None:
    async with running(answer_then(PARTIAL, stay_silent)) as (server, client):
        response = await bounded(client.request("GET", "/"))
        await eventually(lambda: bool(response._chunks))
        assert not response.complete
        response.close()
        response.close()
        with pytest.raises(ConnectionClosed):
            await bounded(response.read())
        assert not response.complete
        await bounded(server.peers[0].client_gone.wait())


async def test_aclose_closes_idle_connections_and_refuses_new_requests() -> None:
    async with running(OK) as (server, client):
        await fetch(client)
        await client.aclose()
        await bounded(server.peers[0].client_gone.wait())
        assert client.idle_connections == 0
        await eventually(lambda: client.open_connections == 0)
        with pytest.raises(ConnectError):
            await fetch(client)
    assert server.accepted == 1


async def test_aclose_fails_responses_in_progress_and_waiting_requests() -> None:
    async with running(answer_then(PARTIAL, stay_silent), max_connections=2) as (server, client):
        busy = [await bounded(client.request("GET", "/")) for _ in range(2)]
        waiting = asyncio.create_task(fetch(client))
        await spin_until(lambda: len(client._waiters) == 1)
        await client.aclose()
        with pytest.raises(ConnectError):
            await bounded(waiting)
        for response in busy:
            with pytest.raises(ConnectionClosed):
                await bounded(response.read())
            response.close()
        for peer in server.peers:
            await bounded(peer.client_gone.wait())
        await eventually(lambda: client.open_connections == 0)
    assert server.accepted == 2


async def test_aclose_while_connecting_closes_that_connection_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running(OK) as (server, client):
        slow_connect(monkeypatch, 0.05)
        connecting = asyncio.create_task(fetch(client))
        await asyncio.sleep(0.01)
        await client.aclose()
        with pytest.raises(TransportError):
            await bounded(connecting)
        await eventually(lambda: server.accepted == 1)
        await bounded(server.peers[0].client_gone.wait())  # not left open
        assert client.open_connections == 0
