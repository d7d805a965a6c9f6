"""Request heads are bounded in size and time, on the gateway exactly as `python app.py` runs it."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import orjson
import pytest
from fake_sglang import FakeSGLang
from test_load import GatewayProcess, gateway_process

HEAD_LIMIT = 32 * 1024
HEAD_TIMEOUT = 0.5
MAX_CONNECTIONS = 24


@pytest.fixture(scope="module")
def limited(fake_server: FakeSGLang) -> Iterator[GatewayProcess]:
    limits = {
        "MAX_HEADER_BYTES": str(HEAD_LIMIT),
        "HEADER_READ_TIMEOUT": str(HEAD_TIMEOUT),
        "MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    with gateway_process(fake_server, **limits) as gateway:
        yield gateway


def _connect(gateway: GatewayProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length (the gateway's /health answer)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _status_and_error(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return int(head.split()[1]), error


def test_a_head_over_the_limit_is_431_and_closed(limited: GatewayProcess) -> None:
    with _connect(limited) as sock:
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * HEAD_LIMIT + b"\r\n\r\n"
        )
        status, error = _status_and_error(_read_until_closed(sock))
    assert status == 431
    assert str(HEAD_LIMIT) in str(error["message"])


def test_a_long_url_counts_too(limited: GatewayProcess) -> None:
    with _connect(limited) as sock:
        sock.sendall(b"GET /health?" + b"q" * HEAD_LIMIT + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _status_and_error(_read_until_closed(sock))[0] == 431


def test_a_head_under_the_limit_is_served(limited: GatewayProcess) -> None:
    with _connect(limited) as sock:
        big = b"a" * (HEAD_LIMIT // 2)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + big + b"\r\n\r\n")
        assert _read_response(sock).startswith(b"HTTP/1.1 200 ")


def test_a_slow_head_is_408_and_closed(limited: GatewayProcess) -> None:
    with _connect(limited) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and no more
        status, _ = _status_and_error(_read_until_closed(sock))
        waited = time.monotonic() - started
    assert status == 408
    assert HEAD_TIMEOUT * 0.8 < waited < HEAD_TIMEOUT + 3


def test_a_head_sent_slowly_in_pieces_is_408(limited: GatewayProcess) -> None:
    # Each piece arrives well within the timeout, but the whole head does not.
    with _connect(limited) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        answer = b""
        for _ in range(int(3 * HEAD_TIMEOUT / 0.1)):
            time.sleep(0.1)
            try:
                sock.sendall(b"X-A: b\r\n")
            except OSError:  # closed by the gateway
                break
        answer = _read_until_closed(sock)
    assert _status_and_error(answer)[0] == 408


def test_a_silent_connection_is_closed_without_an_answer(limited: GatewayProcess) -> None:
    with _connect(limited) as sock:
        started = time.monotonic()
        assert _read_until_closed(sock) == b""
    assert time.monotonic() - started < HEAD_TIMEOUT + 3


def test_keep_alive_requests_each_get_the_full_time(limited: GatewayProcess) -> None:
    # The timer runs only while a head is awaited: a served request does not use up the next
    # request's time, and the connection stays usable.
    with _connect(limited) as sock:
        for _ in range(3):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(sock).startswith(b"HTTP/1.1 200 ")
            time.sleep(HEAD_TIMEOUT * 0.6)


def test_a_header_that_never_ends_is_431_as_soon_as_it_passes_the_limit(
    limited: GatewayProcess,
) -> None:
    # No line end ever comes: httptools would hold the partial value until the time limit.
    with _connect(limited) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        started = time.monotonic()
        try:
            while sent < 20_000_000:
                sock.sendall(b"a" * 4096)
                sent += 4096
        except OSError:  # the gateway answered and closed
            pass
        answer = _read_until_closed(sock)
    assert _status_and_error(answer)[0] == 431  # not 408 after buffering until the time limit
    assert sent < 20_000_000  # cut off: the gateway closed long before (the rest is in buffers)
    assert time.monotonic() - started < HEAD_TIMEOUT


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"\r\nzz\r\n",
        b"GET /he alth HTTP/1.1\r\n\r\n",
    ],
    ids=["CL and TE", "negative length", "bad chunk", "bad request line"],
)
def test_malformed_http_is_an_openai_400(limited: GatewayProcess, request_bytes: bytes) -> None:
    with _connect(limited) as sock:
        sock.sendall(request_bytes)
        answer = _read_until_closed(sock)
    status, error = _status_and_error(answer)
    assert status == 400
    assert error["type"] == "invalid_request_error"


def test_connections_over_the_limit_are_503_and_closed(limited: GatewayProcess) -> None:
    held = [_connect(limited) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        with _connect(limited) as extra:
            status, error = _status_and_error(_read_until_closed(extra))
        assert status == 503 and "connections" in str(error["message"])
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    with _connect(limited) as sock:  # room again once they are gone
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(sock).startswith(b"HTTP/1.1 200 ")
