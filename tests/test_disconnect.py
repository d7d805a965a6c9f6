"""A client that goes away must stop SGLang's work at once: the gateway closes the upstream
connection, streaming or not, and whether or not the first token has arrived."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

import orjson
import pytest
from conftest import MODEL, ServerThread, wait_for_log
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


def test_a_client_gone_while_sending_its_body_is_an_info_line_and_a_499(
    gateway: ServerThread, fake: FakeSGLang, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    upload_start = (
        b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF'
    )
    for path, content_type, start in (
        ("/v1/chat/completions", b"application/json", b'{"model": '),
        ("/v1/responses", b"application/json", b'{"model": '),
        ("/v1/audio/transcriptions", b"multipart/form-data; boundary=x", upload_start),
    ):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
            sock.sendall(
                b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n"
                b"Content-Length: 10000\r\n\r\n%s" % (path.encode(), content_type, start)
            )
            time.sleep(0.1)
        access = wait_for_log(caplog, _access_line_of(path))
        assert access and " 499 " in access[-1].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    ]
    assert not fake.chat_requests


def _access_line_of(path: str) -> Callable[[logging.LogRecord], bool]:
    return lambda record: record.name == "gateway.access" and path in record.getMessage()
