"""A real HTTP server on 127.0.0.1 in a thread, and a trap socket that records connections.

Used by tests/gateway/media/test_fetch.py and test_images.py: fetching is tested against real
sockets (redirects, timeouts, endless bodies), never against a mock transport, because the guards
live where sockets are opened.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Route = Callable[["Handler"], None]


@dataclass
class ServerState:
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (path, headers)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)


class Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        state = self.server.state
        state.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        route = state.routes.get(self.path.split("?")[0])
        if route is None:
            self.reply(404, b"not found", "text/plain")
            return
        with contextlib.suppress(ConnectionError):
            route(self)

    def reply(self, status: int, body: bytes, content_type: str | None, **headers: str) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str, status: int = 302) -> None:
        self.reply(status, b"", None, Location=location)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


@contextlib.contextmanager
def serve() -> Iterator[tuple[str, ServerState]]:
    """A server on 127.0.0.1; yields its base URL and the state whose routes the test fills."""
    server = _Server(("127.0.0.1", 0), Handler)
    server.state = ServerState()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.state
    finally:
        server.state.stop.set()
        server.shutdown()
        server.server_close()
        thread.join()


# -- routes ---------------------------------------------------------------------------------


def static(body: bytes, content_type: str | None, **headers: str) -> Route:
    return lambda handler: handler.reply(200, body, content_type, **headers)


def status(code: int) -> Route:
    return lambda handler: handler.reply(code, b"nope", "text/plain")


def redirect(location: str, code: int = 302) -> Route:
    return lambda handler: handler.redirect(location, code)


def gzipped(body: bytes, content_type: str) -> Route:
    """Compressed although the client asked for identity (some servers do)."""
    packed = gzip.compress(body)
    return lambda handler: handler.reply(200, packed, content_type, Content_Encoding="gzip")


def slow_headers(seconds: float) -> Route:
    def route(handler: Handler) -> None:
        handler.server.state.stop.wait(seconds)
        handler.reply(200, b"late", "text/plain")

    return route


def trickle(chunk: bytes, interval: float) -> Route:
    """Headers at once, then a small chunk every `interval` seconds, for ever."""

    def route(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.end_headers()
        while not handler.server.state.stop.wait(interval):
            handler.wfile.write(chunk)
            handler.wfile.flush()

    return route


def endless(name: str, chunk_size: int = 65536) -> Route:
    """A body that never ends, no Content-Length; counts what it managed to send."""

    def route(handler: Handler) -> None:
        state = handler.server.state
        state.bytes_sent[name] = 0
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.end_headers()
        chunk = b"\xff" * chunk_size
        deadline = time.monotonic() + 10  # a bound even if the client never hangs up
        try:
            while not state.stop.is_set() and time.monotonic() < deadline:
                handler.wfile.write(chunk)
                state.bytes_sent[name] += len(chunk)
        except OSError:
            pass  # the client hung up: what the test wants

    return route


def declared_length(length: int) -> Route:
    def route(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", str(length))
        handler.end_headers()
        handler.wfile.write(b"\x89PNG")

    return route


# -- a socket that only counts ----------------------------------------------------------------


class Trap:
    """A listening socket that records every connection made to it (and accepts nothing else)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    def connections(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1

    def close(self) -> None:
        self.sock.close()


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True
