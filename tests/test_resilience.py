"""Proof under SGLang's faults and clients' disconnects, on real sockets both ways.

Every test drives the real gateway (uvicorn, real port) in front of `FakeSGLang` and checks what a
client sees (status, OpenAI error body, `[DONE]`, how long it took) and what SGLang saw (requests
received, connections closed). `test_errors.py` covers the faults answered before the first token
on a gateway that started with SGLang up; `test_disconnect.py` one disconnect at a time. Here:
SGLang down when the gateway starts, killed or silent or garbled mid-stream, slow to answer, a
pooled connection reset under the gateway's feet, and many clients leaving at once.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from conftest import MODEL, ServerThread, eventually
from fake_sglang import FakeSGLang

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hi"}]
TOKENS = [f"t{i} " for i in range(400)]  # distinct, so order and gaps show


def _chat(stream: bool = False) -> dict[str, Any]:
    return {"model": MODEL, "messages": HELLO, "stream": stream}


def _assert_error(body: Any, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object, with no trace of SGLang's internals."""
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def _assert_error_response(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    _assert_error(response.json(), code)
    if status == 503:
        assert int(response.headers["retry-after"]) > 0


def _iter_events(lines: Iterator[str]) -> Iterator[str]:
    """The data of each SSE event, as it arrives."""
    return (line.removeprefix("data: ") for line in lines if line.startswith("data: "))


def _events(lines: Iterator[str]) -> list[str]:
    """The data of each SSE event still to come."""
    return list(_iter_events(lines))


def _content(event: str) -> str | None:
    content: str | None = orjson.loads(event)["choices"][0]["delta"].get("content")
    return content


def _stream_ends_with_error(events: list[str], code: str) -> list[str | None]:
    """Checks the stream ended with an error event then `[DONE]`; returns the contents before."""
    assert events[-1] == "[DONE]", events[-3:]
    _assert_error(orjson.loads(events[-2]), code)
    return [_content(event) for event in events[:-2]]


# --- SGLang down, killed, hanging, garbled --------------------------------------------------


def test_sglang_down_at_start_then_the_gateway_recovers_by_itself(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang
) -> None:
    fake.stop()
    server = make_gateway(health_poll_interval=0.2)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        _assert_error_response(http.get("/health/ready"), 503, "service_unavailable")
        live = http.get("/health")
        assert live.status_code == 200
        assert live.json()["backend"]["reachable"] is False
        for stream in (False, True):
            _assert_error_response(http.post(CHAT, json=_chat(stream)), 503, "service_unavailable")

        fake.start()
        # No readiness probe and no request: the background poll alone must see SGLang come up
        # (liveness only reports the cached state).
        assert eventually(lambda: http.get("/health").json()["backend"]["ready"], timeout=3)
        assert http.get("/health/ready").status_code == 200
        completion = http.post(CHAT, json=_chat())
        assert completion.status_code == 200
        message = completion.json()["choices"][0]["message"]
        assert message["content"] == "Hello from the fake SGLang."
        with http.stream("POST", CHAT, json=_chat(stream=True)) as response:
            assert response.status_code == 200
            events = _events(response.iter_lines())
        assert events[-1] == "[DONE]"
        assert "".join(_content(e) or "" for e in events[:-2]) == "Hello from the fake SGLang."
    # What the model can take is learned once it is up, not left unknown from the failed start.
    assert any(r.path in ("/model_info", "/get_model_info") for r in fake.requests)


def test_sglang_killed_mid_stream_ends_the_stream_with_an_error_then_done(
    http: httpx.Client, fake: FakeSGLang
) -> None:
    fake.reply_tokens, fake.token_delay = TOKENS, 0.05
    with http.stream("POST", CHAT, json=_chat(stream=True), timeout=5) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        events = _iter_events(lines)
        seen = [next(events) for _ in range(4)]  # the role chunk and three tokens
        started = time.monotonic()
        fake.stop()  # every connection dropped, the port closed: SGLang died
        rest = list(events)
        elapsed = time.monotonic() - started
    assert elapsed < 2.0  # no hang waiting for a token that will never come
    contents = [_content(e) for e in seen] + _stream_ends_with_error(rest, "bad_gateway")
    assert contents == ["", *TOKENS[: len(contents) - 1]]  # in order, nothing lost or repeated

    # A non-streaming request in progress when SGLang dies: an error at once, not a hang. The
    # gateway retries a connection that closed before any answer, which then finds nobody
    # listening (503); a 502 would be as right.
    fake.start()
    fake.generation_time = 10
    result: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: result.append(http.post(CHAT, json=_chat())))
    worker.start()
    assert eventually(lambda: fake.active_chat_requests == 1, timeout=3)
    started = time.monotonic()
    fake.stop()
    worker.join(timeout=5)
    assert time.monotonic() - started < 2.0
    assert result[0].status_code in (502, 503)
    _assert_error(result[0].json())


def test_sglang_hanging_is_504_after_the_read_timeout_and_the_upstream_is_closed(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang
) -> None:
    timeout = 0.5
    server = make_gateway(upstream_read_timeout=timeout)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        fake.fault = "hang"  # accepts the request, never answers
        for stream in (False, True):
            started = time.monotonic()
            response = http.post(CHAT, json=_chat(stream))
            elapsed = time.monotonic() - started
            _assert_error_response(response, 504, "timeout")
            assert timeout <= elapsed < timeout + 1.0
            # SGLang is told to stop: the gateway closed the connection it gave up on.
            assert eventually(lambda: fake.active_chat_requests == 0, timeout=1)
        assert fake.disconnects == 2

        # Silent mid-stream: the tokens stop coming; the stream ends with a timeout event.
        fake.fault, fake.token_delay = None, 5.0
        started = time.monotonic()
        with http.stream("POST", CHAT, json=_chat(stream=True)) as response:
            assert response.status_code == 200
            events = _events(response.iter_lines())
        assert time.monotonic() - started < timeout + 1.0
        assert _stream_ends_with_error(events, "timeout") == ["", "Hello"]
        assert eventually(lambda: fake.active_chat_requests == 0, timeout=1)
        assert fake.disconnects == 3


@pytest.mark.parametrize("fault", ["garbage_mid_stream", "truncated_mid_stream"])
def test_garbled_or_truncated_stream_is_a_502_event_then_done(
    http: httpx.Client, fake: FakeSGLang, fault: str
) -> None:
    fake.fault, fake.fault_after_tokens = fault, 2
    with http.stream("POST", CHAT, json=_chat(stream=True), timeout=5) as response:
        assert response.status_code == 200
        events = _events(response.iter_lines())
    # Nothing after the bad event is relayed, even though the garbled stream carries on.
    assert _stream_ends_with_error(events, "bad_gateway") == ["", "Hello", " from"]
    assert eventually(lambda: fake.active_chat_requests == 0, timeout=1)
    fake.fault = None  # the pool is not left holding a broken connection
    assert http.post(CHAT, json=_chat()).status_code == 200


def test_sglang_slow_to_send_headers_still_streams(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang
) -> None:
    # SGLang sends its status line only with the first token (queue + prefill): 1.5 s here,
    # within the read timeout, which must cover that wait.
    fake.ttft = 1.5
    server = make_gateway(upstream_read_timeout=3.0)
    results: dict[str, Any] = {}

    def stream() -> None:
        started = time.monotonic()
        with (
            httpx.Client(base_url=server.url, timeout=10) as http,
            http.stream("POST", CHAT, json=_chat(stream=True)) as response,
        ):
            results["stream_status"] = response.status_code
            results["events"] = _events(response.iter_lines())
        results["stream_time"] = time.monotonic() - started

    def complete() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            results["completion"] = http.post(CHAT, json=_chat())

    workers = [threading.Thread(target=stream), threading.Thread(target=complete)]
    for worker in workers:
        worker.start()
    assert eventually(lambda: fake.active_chat_requests == 2, timeout=3)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        started = time.monotonic()
        assert http.get("/health").status_code == 200  # the wait blocks nobody else
        assert time.monotonic() - started < 0.5
    for worker in workers:
        worker.join(timeout=10)

    assert results["stream_status"] == 200
    assert 1.5 <= results["stream_time"] < 3.0
    events = results["events"]
    assert events[-1] == "[DONE]"
    assert "".join(_content(e) or "" for e in events[:-2]) == "Hello from the fake SGLang."
    assert results["completion"].status_code == 200


@pytest.mark.parametrize("stream", [False, True], ids=["completion", "stream"])
def test_pooled_connection_reset_is_retried_once_transparently(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang, stream: bool
) -> None:
    # Slow health polling: the pooled connection the chat request reuses is the warm-up's own.
    server = make_gateway(health_poll_interval=60)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.post(CHAT, json=_chat()).status_code == 200  # leaves a connection in the pool
        before = len(fake.chat_requests)
        fake.reset_reused_connections = 1
        started = time.monotonic()
        with http.stream("POST", CHAT, json=_chat(stream)) as response:
            assert response.status_code == 200
            body = response.read()
        assert time.monotonic() - started < 1.0
    assert fake.connection_resets == 1  # the pooled connection really was reset
    sent = fake.chat_requests[before:]
    assert len(sent) == 2 and sent[0] == sent[1]  # SGLang received it, then the one retry
    if stream:
        assert body.endswith(b"data: [DONE]\n\n")
        assert b'"error"' not in body
    else:
        assert orjson.loads(body)["choices"][0]["message"]["content"]


# --- many clients leaving at once -------------------------------------------------------------


def _open_request(port: int, stream: bool) -> socket.socket:
    """A raw chat request (cheap enough to open dozens at once); the answer ends at EOF."""
    payload = orjson.dumps(_chat(stream))
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    return sock


def _read_to_end(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _read_until(sock: socket.socket, marker: bytes) -> None:
    received = b""
    while marker not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk


def test_many_concurrent_disconnects_leave_nothing_running(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang
) -> None:
    per_kind = 20
    in_flight = 2 * per_kind
    # MAX_IN_FLIGHT exactly as large as each wave: a slot leaked by one disconnect would turn
    # the last request of the next wave into a 429.
    server = make_gateway(max_in_flight=in_flight)
    waves: list[tuple[dict[str, Any], bytes | None]] = [
        # (what the fake does, what each stream's client waits for before leaving)
        ({"reply_tokens": TOKENS, "token_delay": 0.05, "generation_time": 30}, b"t1 "),
        ({"ttft": 30.0}, None),  # streams still waiting for their first token
    ]
    for knobs, marker in waves:
        fake.reset()
        for name, value in knobs.items():
            setattr(fake, name, value)
        socks = [_open_request(server.port, stream=i < per_kind) for i in range(in_flight)]
        try:
            assert eventually(lambda: fake.active_chat_requests == in_flight, timeout=5)
            if marker is not None:
                for sock in socks[:per_kind]:
                    _read_until(sock, marker)  # mid-stream
        finally:
            for sock in socks:
                sock.close()
        assert eventually(lambda: fake.active_chat_requests == 0, timeout=2)
        assert fake.disconnects == in_flight

    # Every slot was given back: a full wave at once is admitted (a 429 would never reach
    # SGLang) and answered.
    fake.reset()
    fake.token_delay, fake.generation_time = 0.1, 0.5
    socks = [_open_request(server.port, stream=i < per_kind) for i in range(in_flight)]
    try:
        assert eventually(lambda: fake.active_chat_requests == in_flight, timeout=5)
        answers = [_read_to_end(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers)
    assert all(answer.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n") for answer in answers[:per_kind])


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to see sockets")
def test_streams_return_their_upstream_connection_to_the_pool(
    http: httpx.Client, fake: FakeSGLang
) -> None:
    # A stream read only up to [DONE] leaves the chunked terminator unread, and httpcore then
    # closes the connection instead of pooling it: one new TCP connection (and one TIME-WAIT
    # socket) per stream. Read to the end, the same connection serves them all.
    def time_wait() -> int:
        out = subprocess.run(
            ["ss", "-tan", f"( dport = :{fake.port} or sport = :{fake.port} )"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return sum("TIME-WAIT" in line for line in out.splitlines())

    before = time_wait()
    for _ in range(10):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            response.read()
    assert time_wait() - before <= 1
