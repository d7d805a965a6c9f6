"""A fake SGLang 0.5 OpenAI server for benchmarks, cheap enough never to be the bottleneck.

Checked against real SGLang 0.5.21 (tests/real_sglang; tests/fixtures/real_sglang_0.5.21.json):
chunks in 0.5.21's compact sse_utils form (null role/content left out, no "usage" key outside the
usage chunk), `metadata.weight_versions`, SSE headers without cache-control.

Owns the backend side of `benchmarks/run.py`: a raw asyncio HTTP/1.1 server (httptools parser,
uvloop when importable, keep-alive and pipelining) that answers chat completions in SGLang 0.5's
exact shapes without any model. Every answer is "tok " repeated N times (N = the request's
`max_completion_tokens` or `max_tokens`, else the configured default), finish_reason "length".

Streams are SSE in chunked transfer encoding, one HTTP chunk and one `transport.write` per event.
With a token delay, all open streams get their next token on one shared clock tick, like SGLang's
batched decode steps: with 256 streams at 20 ms, the proxy sees 256 chunks every 20 ms.

Routes: `POST /v1/chat/completions`, `GET /health`, `/health_generate`, `/ready`, `/model_info`,
`/get_model_info`, `/v1/models`; for the harness only, `POST /fake/config` (JSON
`{"delay_ms": .., "tokens": ..}`) and `GET /fake/stats` (request counts).

    .venv/bin/python benchmarks/fake_backend.py --port 30000 [--delay-ms 20] [--tokens 64]

or, imported: `backend = FakeBackend(); port = await backend.start("127.0.0.1", 0)`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from typing import Any, cast

import httptools
import orjson

try:
    import uvloop
except ImportError:  # pragma: no cover - the fake runs on plain asyncio too
    uvloop = None  # type: ignore[assignment]

DEFAULT_MODEL = "fake-model"
DEFAULT_TOKENS = 64
WORD = "tok "  # the text of every generated token
LISTEN_BACKLOG = 4096  # a thousand clients connect at once in scenario e1000
MODEL_INFO = {
    "model_path": "google/gemma-3n-E4B-it",
    "is_generation": True,
    "has_image_understanding": True,
    "has_audio_understanding": True,
}
SSE_HEADERS = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"vary: Origin\r\ntransfer-encoding: chunked\r\n\r\n"
)
DONE_CHUNK = b"e\r\ndata: [DONE]\n\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


@dataclass
class Config:
    """What the harness can change between scenarios (`POST /fake/config`)."""

    delay_ms: float = 0.0  # between tokens; > 0: one shared clock tick for every stream
    tokens: int = DEFAULT_TOKENS  # when the request sets neither max_tokens field


@dataclass
class Stats:
    """Request counts since start (`GET /fake/stats`)."""

    requests: int = 0
    chat_completions: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_aborted: int = 0
    bad_requests: int = 0
    connections_opened: int = 0
    connections_open: int = 0


@dataclass
class Request:
    """One parsed HTTP request."""

    method: bytes
    path: bytes
    body: bytes
    keep_alive: bool


def sse_chunk(event: dict[str, Any]) -> bytes:
    """One SSE event as one HTTP chunk."""
    data = b"data: " + orjson.dumps(event) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def json_response(status: int, body: object, keep_alive: bool = True) -> bytes:
    """A whole JSON response, headers and body."""
    data = orjson.dumps(body)
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        status,
        HTTPStatus(status).phrase.encode(),
        len(data),
    )
    return head + _end_of_head(keep_alive) + data


def _end_of_head(keep_alive: bool) -> bytes:
    return b"\r\n" if keep_alive else b"connection: close\r\n\r\n"


def error_response(status: int, message: str, keep_alive: bool = True) -> bytes:
    """SGLang's error body: `{"object": "error", "message", "type", "param", "code"}`."""
    body = {
        "object": "error",
        "message": message,
        "type": HTTPStatus(status).phrase.replace(" ", ""),
        "param": None,
        "code": status,
    }
    return json_response(status, body, keep_alive)


@dataclass
class Chat:
    """What the fake needs from a chat completion request."""

    model: str
    stream: bool
    include_usage: bool
    completion_tokens: int
    prompt_tokens: int

    @classmethod
    def parse(cls, body: bytes, default_tokens: int) -> Chat:
        """Raises ValueError when the body is not a chat completion request."""
        data = orjson.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
            raise ValueError("'messages' is required")
        tokens = data.get("max_completion_tokens")
        tokens = data.get("max_tokens") if tokens is None else tokens
        tokens = default_tokens if tokens is None else tokens
        if not isinstance(tokens, int) or tokens < 0:
            raise ValueError("max_tokens must be a non-negative integer")
        options = data.get("stream_options")
        return cls(
            model=str(data.get("model", DEFAULT_MODEL)),
            stream=data.get("stream") is True,
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
            completion_tokens=tokens,
            prompt_tokens=4 + sum(len(str(m)) // 4 for m in data["messages"]),
        )

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "completion_tokens": self.completion_tokens,
            "prompt_tokens_details": None,
            "reasoning_tokens": 0,
        }

    def completion(self) -> dict[str, Any]:
        """The non-streaming answer, keys in SGLang's order."""
        message = {
            "role": "assistant",
            "content": WORD * self.completion_tokens,
            "reasoning_content": None,
            "tool_calls": None,
        }
        choice = {"index": 0, "message": message, "logprobs": None}
        choice |= {"finish_reason": "length", "matched_stop": None}
        return {
            **_head(self.model, "chat.completion"),
            "choices": [choice],
            "usage": self.usage(),
            "metadata": {
                "weight_version": "default",
                "weight_versions": [
                    {"version": "default", "start": 0, "end": self.completion_tokens}
                ],
            },
        }


def _head(model: str, kind: str) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "object": kind, "created": int(time.time()), "model": model}


class Stream:
    """One open SSE answer: its pre-encoded chunks and how many tokens are still to send."""

    __slots__ = ("_done", "_transport", "finish", "remaining", "token")

    def __init__(
        self, chat: Chat, transport: asyncio.Transport, done: Callable[[bool], None]
    ) -> None:
        """Writes the headers and the role chunk; `done(completed)` is called at the end."""
        head = _head(chat.model, "chat.completion.chunk")
        self._transport = transport
        self._done = done
        self.remaining = chat.completion_tokens
        self.token = sse_chunk(self._event(head, {"content": WORD}))
        self.finish = [sse_chunk(self._event(head, {}, "length"))]
        if chat.include_usage:
            self.finish.append(sse_chunk({**head, "choices": [], "usage": chat.usage()}))
        transport.write(SSE_HEADERS)
        transport.write(sse_chunk(self._event(head, {"role": "assistant", "content": ""})))

    @staticmethod
    def _event(
        head: dict[str, Any], delta: dict[str, Any], finish: str | None = None
    ) -> dict[str, Any]:
        """A chunk as SGLang 0.5.21 serialises it (sse_utils): null role/content left out."""
        choice = {"index": 0, "delta": {"reasoning_content": None} | delta, "logprobs": None}
        choice |= {"finish_reason": finish, "matched_stop": None}
        return {**head, "choices": [choice]}

    def step(self) -> bool:
        """Send the next token (or the end); False once the stream is over."""
        if self._transport.is_closing():
            self._done(False)
            return False
        if self.remaining:
            self._transport.write(self.token)
            self.remaining -= 1
            if self.remaining:
                return True
        for chunk in (*self.finish, DONE_CHUNK, LAST_CHUNK):
            self._transport.write(chunk)
        self._done(True)
        return False


class Ticker:
    """The shared decode clock: every `delay` seconds, each open stream gets one token."""

    def __init__(self) -> None:
        self.delay = 0.0
        self._streams: dict[Stream, None] = {}  # insertion-ordered set
        self._handle: asyncio.Handle | None = None
        self._epoch = 0.0
        self._last_tick = 0  # grid index of the last tick

    def set_delay(self, delay: float) -> None:
        self.delay = delay
        self._epoch = asyncio.get_running_loop().time()
        self._last_tick = 0

    def add(self, stream: Stream) -> None:
        self._streams[stream] = None
        if self._handle is None:
            self._schedule()

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        if self.delay <= 0:  # the delay was set to 0 with streams open: finish them now
            self._handle = loop.call_soon(self._tick)
            return
        # The next point of the grid: ticks never drift, a late tick is not caught up on, and a
        # timer that fires a little early does not make the same tick twice.
        index = math.floor((loop.time() - self._epoch) / self.delay) + 1
        self._last_tick = max(index, self._last_tick + 1)
        self._handle = loop.call_at(self._epoch + self._last_tick * self.delay, self._tick)

    def _tick(self) -> None:
        self._handle = None
        # A finished stream's connection may start its next stream (add) during this loop.
        for stream in list(self._streams):
            if not stream.step():
                del self._streams[stream]
        if self._streams and self._handle is None:
            self._schedule()


@dataclass
class FakeBackend:
    """The server: shared config, stats and decode clock; one `Connection` per client."""

    model: str = DEFAULT_MODEL
    config: Config = field(default_factory=Config)
    stats: Stats = field(default_factory=Stats)
    ticker: Ticker = field(default_factory=Ticker)
    _server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen; returns the port (useful with port 0)."""
        self.ticker.set_delay(self.config.delay_ms / 1000)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self), host, port, backlog=LISTEN_BACKLOG
        )
        port_bound: int = self._server.sockets[0].getsockname()[1]
        return port_bound

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def set_config(self, body: bytes) -> dict[str, Any]:
        """Apply `{"delay_ms": .., "tokens": ..}` (both optional); ValueError if malformed."""
        data = orjson.loads(body or b"{}")
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        delay = data.get("delay_ms", self.config.delay_ms)
        tokens = data.get("tokens", self.config.tokens)
        if not isinstance(delay, int | float) or delay < 0:
            raise ValueError("delay_ms must be a number >= 0")
        if not isinstance(tokens, int) or tokens < 0:
            raise ValueError("tokens must be an integer >= 0")
        self.config = Config(float(delay), tokens)
        self.ticker.set_delay(self.config.delay_ms / 1000)
        return asdict(self.config)

    def stream_done(self, completed: bool) -> None:
        if completed:
            self.stats.streams_completed += 1
        else:
            self.stats.streams_aborted += 1

    def models(self) -> dict[str, Any]:
        card = {"id": self.model, "object": "model", "created": int(time.time())}
        card |= {"owned_by": "sglang", "root": self.model, "max_model_len": 32768}
        return {"object": "list", "data": [card]}


class Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them strictly in order."""

    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._body: list[bytes] = []
        self._queue: deque[Request] = deque()  # pipelined requests behind a pending answer
        self._busy = False  # an answer (a stream or a delayed completion) is still being sent
        self._routes: dict[tuple[bytes, bytes], Callable[[Request], None]] = {
            (b"POST", b"/v1/chat/completions"): self._chat,
            (b"POST", b"/fake/config"): self._config,
            (b"GET", b"/fake/stats"): lambda r: self._reply(r, asdict(self.backend.stats)),
            (b"GET", b"/v1/models"): lambda r: self._reply(r, self.backend.models()),
            (b"GET", b"/model_info"): lambda r: self._reply(r, MODEL_INFO),
            (b"GET", b"/get_model_info"): lambda r: self._reply(r, MODEL_INFO),
            (b"GET", b"/health"): self._empty,
            (b"GET", b"/health_generate"): self._empty,
            (b"GET", b"/ready"): self._empty,
        }

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.backend.stats.connections_opened += 1
        self.backend.stats.connections_open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.backend.stats.connections_open -= 1
        self._queue.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.backend.stats.bad_requests += 1
            self._write(error_response(400, "Malformed HTTP request.", keep_alive=False))
            self._close()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        path = self._url.split(b"?", 1)[0]
        method = self.parser.get_method()
        request = Request(method, path, b"".join(self._body), self.parser.should_keep_alive())
        if self._busy:
            self._queue.append(request)
        else:
            self._handle(request)

    # -- answers ------------------------------------------------------------------------------

    def _handle(self, request: Request) -> None:
        self.backend.stats.requests += 1
        route = self._routes.get((request.method, request.path))
        if route is not None:
            route(request)
        elif any(path == request.path for _, path in self._routes):
            self._finish(request, error_response(405, "Method Not Allowed", request.keep_alive))
        else:
            self._finish(request, error_response(404, "Not Found", request.keep_alive))

    def _chat(self, request: Request) -> None:
        stats = self.backend.stats
        stats.chat_completions += 1
        try:
            chat = Chat.parse(request.body, self.backend.config.tokens)
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            stats.bad_requests += 1
            self._finish(request, error_response(400, str(exc), request.keep_alive))
            return
        delay = self.backend.config.delay_ms / 1000
        if not chat.stream:
            answer = json_response(200, chat.completion(), request.keep_alive)
            if delay > 0:
                self._busy = True
                loop = asyncio.get_running_loop()
                loop.call_later(delay * chat.completion_tokens, self._finish, request, answer)
            else:
                self._finish(request, answer)
            return
        assert self.transport is not None
        stats.streams_started += 1
        self._busy = True

        def done(completed: bool) -> None:
            self.backend.stream_done(completed)
            self._finish(request, b"")

        stream = Stream(chat, self.transport, done)
        if delay > 0 and chat.completion_tokens:
            self.backend.ticker.add(stream)
        else:
            while stream.step():
                pass

    def _config(self, request: Request) -> None:
        try:
            config = self.backend.set_config(request.body)
        except ValueError as exc:
            self._finish(request, error_response(400, str(exc), request.keep_alive))
            return
        self._reply(request, config)

    def _reply(self, request: Request, body: object) -> None:
        self._finish(request, json_response(200, body, request.keep_alive))

    def _empty(self, request: Request) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"
        self._finish(request, head + _end_of_head(request.keep_alive))

    def _finish(self, request: Request, data: bytes) -> None:
        """Send the rest of the answer, then the next pipelined request's, or close."""
        self._busy = False
        if data:
            self._write(data)
        if self.transport is None or self.transport.is_closing():
            return
        if not request.keep_alive:
            self._close()
        elif self._queue:
            self._handle(self._queue.popleft())

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(host: str, port: int, model: str, config: Config) -> None:
    """Serve until SIGTERM or SIGINT."""
    backend = FakeBackend(model=model, config=config)
    bound = await backend.start(host, port)
    print(f"fake backend listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await backend.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000, help="0: any free port (printed)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the id /v1/models lists")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="between tokens")
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="without max_tokens")
    args = parser.parse_args(argv)
    config = Config(args.delay_ms, args.tokens)
    run = uvloop.run if uvloop is not None else asyncio.run
    run(serve(args.host, args.port, args.model, config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
