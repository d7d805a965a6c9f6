"""Liveness answers at once from the cached state; readiness follows SGLang's; SGLang's costly
generation probe (/health, /health_generate) is never called."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from conftest import ServerThread
from fake_sglang import FakeSGLang


def _wait_for(http: httpx.Client, path: str, status: int, timeout: float = 3.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(path)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def test_liveness_and_readiness_follow_sglang(http: httpx.Client, fake: FakeSGLang) -> None:
    ready = _wait_for(http, "/health/ready", 200)
    assert ready.status_code == 200
    assert ready.json()["backend"]["ready"] is True

    fake.state = "loading"
    not_ready = _wait_for(http, "/health/ready", 503)
    assert not_ready.status_code == 503
    assert not_ready.headers["retry-after"]
    assert set(not_ready.json()["error"]) == {"message", "type", "param", "code"}
    live = http.get("/health")
    assert live.status_code == 200
    assert live.json()["backend"] == {**live.json()["backend"], "reachable": True, "ready": False}

    fake.stop()
    try:
        assert _wait_for(http, "/health/ready", 503).status_code == 503
        down = http.get("/health")
        assert down.status_code == 200
        assert down.json()["backend"]["reachable"] is False
    finally:
        fake.start()
    fake.state = "ready"
    assert _wait_for(http, "/health/ready", 200).status_code == 200
    assert fake.health_generate_calls == 0


def test_liveness_is_immediate_even_when_sglang_hangs(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang
) -> None:
    fake.stop()
    try:
        server = make_gateway(health_poll_interval=60)
        with httpx.Client(base_url=server.url, timeout=5) as http:
            started = time.monotonic()
            response = http.get("/health")
            assert time.monotonic() - started < 0.5
            assert response.status_code == 200
            assert response.json()["status"] == "ok"
    finally:
        fake.start()


def test_readiness_checks_again_when_not_ready(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang
) -> None:
    fake.state = "loading"
    server = make_gateway(health_poll_interval=60)  # no poll will come to the rescue
    with httpx.Client(base_url=server.url, timeout=5) as http:
        assert http.get("/health/ready").status_code == 503
        fake.state = "ready"
        assert http.get("/health/ready").status_code == 200


def test_readiness_waits_for_the_worker_processes(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang
) -> None:
    server = make_gateway(media_prestart=True)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        first = http.get("/health/ready")
        if first.status_code == 503:  # still starting its workers: says so
            assert "worker processes" in first.json()["error"]["message"]
        deadline = time.monotonic() + 20
        while http.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.05)
    assert server.app.state.warm.is_set()
    # Both pools are up: the image decoders and the JSON worker for large bodies.
    parser = server.app.state.json_parser
    assert parser._pool is not None and len(parser._pool._processes) == 1
