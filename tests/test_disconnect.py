"""A client that goes away must stop SGLang's work at once: the gateway closes the upstream
connection, streaming or not, and whether or not the first token has arrived."""

from __future__ import annotations

import socket
import time

import orjson
from conftest import MODEL, ServerThread
from fake_sglang import FakeSGLang


def _post_raw(gateway: ServerThread, body: dict[str, object]) -> socket.socket:
    payload = orjson.dumps(body)
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    return sock


def _wait_idle(fake: FakeSGLang, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while fake.active_chat_requests and time.monotonic() < deadline:
        time.sleep(0.01)
    return fake.active_chat_requests == 0


def test_disconnect_mid_stream_closes_upstream(gateway: ServerThread, fake: FakeSGLang) -> None:
    fake.reply_tokens = ["tok "] * 500
    fake.token_delay = 0.02
    sock = _post_raw(
        gateway, {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    received = b""
    while received.count(b"data: ") < 3:
        received += sock.recv(65536)
    assert b"200 OK" in received
    started = time.monotonic()
    sock.close()
    assert fake.wait_for_disconnect(timeout=2.0)
    assert time.monotonic() - started < 1.0
    assert _wait_idle(fake)


def test_disconnect_before_first_token_closes_upstream(
    gateway: ServerThread, fake: FakeSGLang
) -> None:
    fake.ttft = 5.0
    sock = _post_raw(
        gateway, {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    deadline = time.monotonic() + 2
    while not fake.active_chat_requests and time.monotonic() < deadline:
        time.sleep(0.01)
    sock.close()
    assert fake.wait_for_disconnect(timeout=1.0)
    assert _wait_idle(fake)


def test_disconnect_during_non_streaming_request_closes_upstream(
    gateway: ServerThread, fake: FakeSGLang
) -> None:
    fake.generation_time = 5.0
    sock = _post_raw(gateway, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    deadline = time.monotonic() + 2
    while not fake.active_chat_requests and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    sock.close()
    assert fake.wait_for_disconnect(timeout=1.0)
    assert time.monotonic() - started < 1.0
    assert _wait_idle(fake)
