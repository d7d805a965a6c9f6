"""The front door: keys on every route, body size and time, in-flight bound, per-key rate, CORS,
and draining on SIGTERM (a real signal to a real gateway process)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from conftest import MODEL, ServerThread, wait_for_log
from fake_sglang import FakeSGLang

CHAT = "/v1/chat/completions"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
KEY = "sk-test-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[3]  # the repository: tests/gateway/server/ -> /


def _error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code:
        assert error["code"] == code
    return error


@pytest.mark.parametrize("protect", [False, True])
def test_keys_cover_every_route(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang, protect: bool
) -> None:
    server = make_gateway(api_keys=f"{KEY}, other-key", protect_health_and_metrics=protect)
    routes = [
        ("POST", CHAT, BODY),
        ("GET", "/v1/models", None),
        ("GET", f"/v1/models/{MODEL}", None),
        ("POST", "/v1/audio/transcriptions", None),
        ("GET", "/flush_cache", None),
    ]
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for method, path, body in routes:
            missing = http.request(method, path, json=body)
            _error(missing, 401, "invalid_api_key")
            assert missing.headers["www-authenticate"] == "Bearer"
            same_length = "x" * len(KEY)
            wrong = http.request(
                method, path, json=body, headers={"Authorization": f"Bearer {same_length}"}
            )
            _error(wrong, 401, "invalid_api_key")
        ok = {"Authorization": f"Bearer {KEY}"}
        assert http.post(CHAT, json=BODY, headers=ok).status_code == 200
        assert (
            http.post(CHAT, json=BODY, headers={"Authorization": "Bearer other-key"}).status_code
            == 200
        )
        assert http.get("/v1/models", headers=ok).status_code == 200
        assert http.get("/flush_cache", headers=ok).status_code == 404
        assert http.get("/health").status_code == 200  # liveness is always open
        ready = http.get("/health/ready")
        assert ready.status_code == (401 if protect else 200)
        assert http.get("/health/ready", headers=ok).status_code == 200


def test_sdk_sees_authentication_error(make_gateway: Callable[..., ServerThread]) -> None:
    server = make_gateway(api_keys=KEY)
    with (
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0) as sdk,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        sdk.models.list()
    assert caught.value.code == "invalid_api_key"


def test_keys_file_and_never_logging_the_key(
    make_gateway: Callable[..., ServerThread], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# team A\n{KEY}\n\nsecond-key  # team B\n")
    server = make_gateway(api_keys_file=str(keys))
    caplog.set_level(logging.DEBUG)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert (
            http.post(CHAT, json=BODY, headers={"Authorization": f"Bearer {KEY}"}).status_code
            == 200
        )
        assert (
            http.get("/v1/models", headers={"Authorization": "Bearer second-key"}).status_code
            == 200
        )
        http.get("/v1/models", headers={"Authorization": "Bearer not-a-key"})
    wait_for_log(caplog, lambda r: "GET /v1/models 401" in r.getMessage())
    text = "\n".join(record.getMessage() for record in caplog.records)
    for secret in (KEY, "second-key", "not-a-key"):
        assert secret not in text
    assert "key=" in text  # the access line names a key id instead


def test_declared_oversize_body_is_refused_before_reading(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang
) -> None:
    server = make_gateway(max_body_bytes=4096)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 104857600\r\n\r\n"
        )
        answer = sock.recv(65536)  # no body was sent: the answer cannot have waited for it
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"payload_too_large" in answer


def test_body_growing_past_the_limit_is_413(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang
) -> None:
    server = make_gateway(max_body_bytes=4096)

    def chunks():  # no Content-Length: chunked, so only the reading can catch it
        yield b'{"model": "x", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"a" * 1000
        yield b'"}]}'

    with httpx.Client(base_url=server.url, timeout=10) as http:
        response = http.post(CHAT, content=chunks(), headers={"Content-Type": "application/json"})
    _error(response, 413, "payload_too_large")


def test_slow_loris_body_is_408(make_gateway: Callable[..., ServerThread]) -> None:
    server = make_gateway(body_read_timeout=0.5)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"model"'
        )
        started = time.monotonic()
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 3


def test_in_flight_bound_is_429_with_retry_after(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang
) -> None:
    server = make_gateway(max_in_flight=1)
    fake.generation_time = 1.0
    with httpx.Client(base_url=server.url, timeout=10) as http:
        slow = threading.Thread(target=http.post, args=(CHAT,), kwargs={"json": BODY})
        slow.start()
        deadline = time.monotonic() + 2
        while not fake.active_chat_requests and time.monotonic() < deadline:
            time.sleep(0.01)
        with httpx.Client(base_url=server.url, timeout=10) as other:
            refused = other.post(CHAT, json=BODY)
            _error(refused, 429, "rate_limit_exceeded")
            assert refused.headers["retry-after"] == "1"
            assert other.get("/health").status_code == 200  # probes are not counted
            slow.join()
            fake.generation_time = 0
            assert other.post(CHAT, json=BODY).status_code == 200


def test_per_key_rate_limit(make_gateway: Callable[..., ServerThread]) -> None:
    server = make_gateway(api_keys="a-key,b-key", rate_limit_per_minute=2)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        a = {"Authorization": "Bearer a-key"}
        assert [http.get("/v1/models", headers=a).status_code for _ in range(2)] == [200, 200]
        limited = http.get("/v1/models", headers=a)
        _error(limited, 429, "rate_limit_exceeded")
        assert int(limited.headers["retry-after"]) >= 1
        assert http.get("/v1/models", headers={"Authorization": "Bearer b-key"}).status_code == 200


def test_request_count_limits(make_gateway: Callable[..., ServerThread]) -> None:
    server = make_gateway(max_n=2, max_messages_per_request=3)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert _error(http.post(CHAT, json={**BODY, "n": 3}), 400)["param"] == "n"
        many = {**BODY, "messages": [{"role": "user", "content": "x"}] * 4}
        assert _error(http.post(CHAT, json=many), 400)["param"] == "messages"


def test_cors(make_gateway: Callable[..., ServerThread], http: httpx.Client) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in http.options(CHAT, headers=preflight).headers
    server = make_gateway(cors_origins=["https://app.example"], api_keys=KEY)
    with httpx.Client(base_url=server.url, timeout=10) as cors:
        allowed = cors.options(
            CHAT, headers={**preflight, "Access-Control-Request-Headers": "authorization"}
        )
        assert allowed.status_code == 200  # a preflight needs no key
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = cors.options(CHAT, headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_draining_refuses_new_work(make_gateway: Callable[..., ServerThread]) -> None:
    server = make_gateway()
    server.app.state.draining.active = True
    with httpx.Client(base_url=server.url, timeout=10) as http:
        _error(http.post(CHAT, json=BODY), 503)
        _error(http.get("/health/ready"), 503)
        assert http.get("/health").status_code == 200


def test_sigterm_lets_short_streams_finish_and_ends_long_ones_cleanly(fake: FakeSGLang) -> None:
    fake.token_delay = 0.1
    fake.reply_tokens = ["tok "] * 100  # 10 s: longer than the 1 s grace
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "SGLANG_URL": fake.url,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "SHUTDOWN_GRACE_SECONDS": "1",
        "LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.05)
        body = {**BODY, "stream": True}
        short_lines: list[str] = []

        def read_short_stream(client: httpx.Client) -> None:
            # 5 tokens at 0.1 s: done well inside the 1 s grace, so it must end normally.
            with client.stream("POST", CHAT, json={**body, "max_tokens": 5}) as short:
                short_lines.extend(line for line in short.iter_lines() if line)

        with (
            httpx.Client(base_url=base, timeout=20) as http,
            httpx.Client(base_url=base, timeout=20) as second,
            http.stream("POST", CHAT, json=body) as stream,
        ):
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")  # the long stream is under way
            short_reader = threading.Thread(target=read_short_stream, args=(second,))
            short_reader.start()
            time.sleep(0.2)  # the short stream has started too
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            time.sleep(0.2)
            # Draining: the port is still open, and a new request hears why it cannot be served.
            with httpx.Client(base_url=base, timeout=5) as newcomer:
                refused = newcomer.post(CHAT, json=BODY)
                not_ready = newcomer.get("/health/ready")
            _error(refused, 503)
            assert refused.headers["retry-after"].isdigit()
            _error(not_ready, 503)
            rest = [line for line in lines if line]
            short_reader.join(timeout=10)
        assert rest[-1] == "data: [DONE]"
        error = orjson.loads(rest[-2].removeprefix("data: "))["error"]
        assert "shutting down" in error["message"]
        assert 0.5 < time.monotonic() - started < 8
        assert short_lines[-1] == "data: [DONE]"
        assert not any('"error"' in line for line in short_lines)
        assert '"finish_reason":"length"' in short_lines[-2]
        # uvicorn re-raises the SIGTERM it caught once shutdown is complete.
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
