"""The benchmark's load generator: closed-loop HTTP/1.1 clients on raw asyncio sockets.

Owns what is measured at the client: one keep-alive connection per concurrent client, each sending
its next request as soon as the previous answer ends, for a warm-up and then a measured window.
Responses are parsed by httptools (status, Content-Length or chunked bodies, keep-alive), so an
SSE event split across reads or chunks is still seen whole. Streams are not parsed as JSON: tokens
are counted as occurrences of `"tok ` (the content token, JSON-encoded) in the decoded body, and a
stream is complete when `data: [DONE]` arrives with exactly the tokens asked for.

Used by `benchmarks/run.py`; `fetch()` is its small one-shot client for health and control calls.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, cast

import httptools

TOKEN_MARK = b'"tok '
DONE_MARK = b"data: [DONE]"
CONNECT_TIMEOUT = 10.0
RETRY_PAUSE = 0.05  # after a failed connect, so a dead server does not spin the client core


class RequestFailed(Exception):
    """The request got no complete HTTP answer; `reason` is a short label for the report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Window:
    """The measured interval, in `time.perf_counter()` seconds."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Load:
    """One closed-loop load: who sends what, for how long, and how long answers may take."""

    connections: int
    request: bytes  # the whole HTTP request, sent as is every time
    expected_tokens: int | None  # a stream of this many tokens; None: not a stream
    warmup: float
    duration: float
    timeout: float  # per request
    drain: float  # after the window, how long requests in flight may still finish


def http_request(
    method: str,
    path: str,
    host: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> bytes:
    """An HTTP/1.1 keep-alive request, ready to write."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Recorder:
    """Everything the clients of one load observe; only what ends in the window is timed."""

    window: Window
    expected_tokens: int | None
    latencies: list[float] = field(default_factory=list)  # request written -> last byte
    ttfts: list[float] = field(default_factory=list)  # request written -> first token
    gaps: list[float] = field(default_factory=list)  # between successive tokens of a stream
    tokens: int = 0  # tokens received in the window
    completed: int = 0  # complete answers that ended in the window
    completed_total: int = 0
    sent: int = 0
    incomplete: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def record(self, conn: Connection) -> None:
        """File the answer `conn` just finished reading."""
        if conn.status != 200:
            self.errors[f"http_{conn.status}"] += 1
            return
        if self.expected_tokens is not None:
            if not conn.done:
                self.incomplete["no_done"] += 1
                return
            if conn.tokens != self.expected_tokens:
                self.incomplete["wrong_token_count"] += 1
                return
        self.completed_total += 1
        if self.window.start <= conn.ended_at < self.window.end:
            self.completed += 1
            self.latencies.append(conn.ended_at - conn.sent_at)
            if self.expected_tokens:
                self.ttfts.append(conn.first_token_at - conn.sent_at)

    def failed(self, conn: Connection, reason: str) -> None:
        """An answer that broke off: incomplete if it had started well, else an error."""
        (self.incomplete if conn.status == 200 else self.errors)[reason] += 1

    def summary(self, stall_after: float | None = None) -> dict[str, Any]:
        """Flat figures (ms, per second, counts) for the report and the JSON."""
        seconds = self.window.seconds
        figures: dict[str, Any] = {
            "sent": self.sent,
            "completed_in_window": self.completed,
            "completed": self.completed_total,
            "incomplete": sum(self.incomplete.values()),
            "errors": sum(self.errors.values()),
            "incomplete_reasons": dict(self.incomplete),
            "error_reasons": dict(self.errors),
            "requests_per_s": self.completed / seconds,
        }
        figures |= percentiles_ms("latency", self.latencies, (50, 90, 99))
        if self.expected_tokens is not None:
            figures |= percentiles_ms("ttft", self.ttfts, (50, 99))
            figures |= percentiles_ms("gap", self.gaps, (50, 99, 99.9))
            figures["tokens"] = self.tokens
            figures["tokens_per_s"] = self.tokens / seconds
        if stall_after is not None:
            stalls = sum(1 for gap in self.gaps if gap > stall_after)
            figures["stall_pct"] = 100 * stalls / len(self.gaps) if self.gaps else None
        return figures


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted `values`; None when there are none."""
    if not values:
        return None
    return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]


def percentiles_ms(name: str, seconds: list[float], qs: Sequence[float]) -> dict[str, Any]:
    """`{name}_p{q}_ms` for each q (p99.9 is written p999)."""
    ordered = sorted(seconds)
    figures: dict[str, Any] = {}
    for q in qs:
        value = percentile(ordered, q)
        label = f"{q:g}".replace(".", "")
        figures[f"{name}_p{label}_ms"] = None if value is None else value * 1000
    return figures


class Connection(asyncio.Protocol):
    """One keep-alive client connection carrying one request at a time."""

    def __init__(self, recorder: Recorder | None = None, keep_body: bool = False) -> None:
        self._recorder = recorder
        self._count_tokens = recorder is not None and recorder.expected_tokens is not None
        self._keep_body = keep_body
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._body: list[bytes] = []
        self.closed = False
        self.in_flight = False  # a request was written and its answer has not ended
        self.status = 0
        self.keep_alive = True
        self.done = False
        self.tokens = 0
        self.sent_at = self.first_token_at = self.last_token_at = self.ended_at = 0.0

    @property
    def body(self) -> bytes:
        return b"".join(self._body)

    def send(self, request: bytes, timeout: float) -> asyncio.Future[None]:
        """Write `request`; the future ends with the answer, or fails with RequestFailed."""
        assert self._transport is not None
        assert not self.in_flight
        self._parser = httptools.HttpResponseParser(self)
        self._tail = b""
        self._body = []
        self.status = self.tokens = 0
        self.done = False
        self.first_token_at = 0.0
        self.in_flight = True
        self._waiter = self._loop.create_future()
        self._timer = self._loop.call_later(timeout, self._fail, "timeout")
        if self._recorder is not None:
            self._recorder.sent += 1
        self.sent_at = perf_counter()
        self._transport.write(request)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _fail(self, reason: str) -> None:
        self.in_flight = False
        if self._timer is not None:
            self._timer.cancel()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(RequestFailed(reason))
        self.close()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("connection_lost")

    def data_received(self, data: bytes) -> None:
        if self._parser is None or not self.in_flight:
            self._fail("unexpected_data")
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail("bad_http")

    # -- httptools callbacks ------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self._keep_body:
            self._body.append(body)
        if not self._count_tokens:
            return
        # The tail carries the last bytes over, so a mark split between two pieces is seen;
        # it is shorter than two marks, and a mark wholly inside it was counted already.
        seen = self._tail + body
        tokens = seen.count(TOKEN_MARK) - self._tail.count(TOKEN_MARK)
        self._tail = seen[-(len(DONE_MARK) - 1) :]
        if DONE_MARK in seen:
            self.done = True
        if tokens:
            self._on_tokens(tokens)

    def _on_tokens(self, count: int) -> None:
        now = perf_counter()
        recorder = self._recorder
        assert recorder is not None
        in_window = recorder.window.start <= now < recorder.window.end
        if not self.first_token_at:
            self.first_token_at = now
        elif in_window:
            recorder.gaps.append(now - self.last_token_at)
        if in_window:
            recorder.tokens += count
            if count > 1:  # several tokens in one read: they arrived together
                recorder.gaps.extend([0.0] * (count - 1))
        self.last_token_at = now
        self.tokens += count

    def on_message_complete(self) -> None:
        assert self._parser is not None
        self.ended_at = perf_counter()
        self.in_flight = False
        self.keep_alive = self._parser.should_keep_alive()
        if self._timer is not None:
            self._timer.cancel()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


async def connect(
    host: str, port: int, recorder: Recorder | None = None, keep_body: bool = False
) -> Connection:
    """A new connection; OSError or TimeoutError when it cannot be made."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(CONNECT_TIMEOUT):
        _, conn = await loop.create_connection(lambda: Connection(recorder, keep_body), host, port)
    return conn


async def fetch(host: str, port: int, request: bytes, within: float = 5.0) -> tuple[int, bytes]:
    """One request on a new connection: (status, body); OSError, TimeoutError or RequestFailed."""
    conn = await connect(host, port, keep_body=True)
    try:
        await conn.send(request, within)
        return conn.status, conn.body
    finally:
        conn.close()


def window_for(load: Load) -> Window:
    """The measured window of `load` if it starts now."""
    start = perf_counter() + load.warmup
    return Window(start, start + load.duration)


async def run_load(host: str, port: int, load: Load, window: Window | None = None) -> Recorder:
    """Put `load` on host:port; returns what the clients saw. Never takes longer than
    warm-up + duration + drain (+ the time to cancel)."""
    recorder = Recorder(window or window_for(load), load.expected_tokens)
    tasks = [
        asyncio.create_task(_client(host, port, load, recorder)) for _ in range(load.connections)
    ]
    try:
        await asyncio.wait(tasks, timeout=load.warmup + load.duration + load.drain)
    finally:
        for task in tasks:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, Exception):  # a bug in the client, not a failed request
            raise outcome
    return recorder


async def _client(host: str, port: int, load: Load, recorder: Recorder) -> None:
    """One closed-loop client: request after request until the window ends."""
    conn: Connection | None = None
    try:
        while perf_counter() < recorder.window.end:
            if conn is None or conn.closed:
                conn = await _connect_or_count(host, port, recorder)
                continue
            try:
                await conn.send(load.request, load.timeout)
            except RequestFailed as exc:
                recorder.failed(conn, exc.reason)
                continue
            recorder.record(conn)
            if not conn.keep_alive:
                conn.close()
    except asyncio.CancelledError:
        if conn is not None and conn.in_flight:
            recorder.incomplete["cut_after_drain"] += 1
        raise
    finally:
        if conn is not None:
            conn.close()


async def _connect_or_count(host: str, port: int, recorder: Recorder) -> Connection | None:
    try:
        return await connect(host, port, recorder)
    except TimeoutError:
        recorder.errors["connect_timeout"] += 1
    except OSError as exc:
        recorder.errors[f"connect_{type(exc).__name__}"] += 1
    await asyncio.sleep(RETRY_PAUSE)
    return None
