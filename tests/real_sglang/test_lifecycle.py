"""Start-up, crash and scale-out with the real processes: a gateway started before SGLang, SGLang
killed mid-stream, and sglang-router 0.3.2 in front of two real SGLang workers.

One extra SGLang ("second") serves this module: the gateway is started before it, so its
loading is seen through the gateway; the router then runs over the main and the second worker;
finally the second is killed (SIGKILL) in the middle of a stream, and the router keeps serving
from the main one. Two workers fit on 2 cores because both sleep while idle (`--sleep-on-idle`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import MODEL, SGLANG_API_KEY
from .procs import Gateway, Router, SGLangServer, free_port, running

_clients: list[openai.OpenAI] = []


def sdk(url: str) -> openai.OpenAI:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


@pytest.fixture(scope="module")
def second_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def early_gateway(logs: Path, second_port: int) -> Iterator[Gateway]:
    """A gateway started while nothing listens on SGLang's port yet."""
    gw = Gateway(
        logs / "gateway-early.log",
        f"http://127.0.0.1:{second_port}",
        SGLANG_API_KEY=SGLANG_API_KEY,
        HEALTH_POLL_INTERVAL="0.2",
    )
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def second(
    sglang_python: Path, tiny_model: Path, logs: Path, second_port: int
) -> Iterator[SGLangServer]:
    server = SGLangServer(
        sglang_python,
        tiny_model,
        logs / "sglang-second.log",
        api_key=SGLANG_API_KEY,
        port=second_port,
    )
    try:
        yield server
    finally:
        server.stop()


def test_gateway_started_before_sglang_waits_for_it(
    early_gateway: Gateway, second: SGLangServer
) -> None:
    not_up = httpx.get(f"{early_gateway.url}/health/ready")
    assert not_up.status_code == 503 and "Retry-After" in not_up.headers
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(early_gateway.url).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert caught.value.status_code == 503

    second.start()
    seen: set[tuple[int, str]] = set()  # (status of /health/ready, what /health says)
    deadline = time.monotonic() + 300
    while True:
        assert second.exited() is None, second.exited()
        assert time.monotonic() < deadline, f"not ready after 300 s; seen {seen}"
        ready = httpx.get(f"{early_gateway.url}/health/ready", timeout=10)
        detail = httpx.get(f"{early_gateway.url}/health").json()["backend"]["detail"]
        seen.add((ready.status_code, detail))
        if ready.status_code == 200:
            break
        assert "Retry-After" in ready.headers
        time.sleep(0.2)
    # While weights load the port is closed; then SGLang answers 503 until its warm-up is done.
    assert (503, "not reachable") in seen
    assert (503, "starting, paused or shutting down") in seen, seen
    reply = sdk(early_gateway.url).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.choices[0].finish_reason == "length"


@pytest.fixture(scope="module")
def router(
    sglang_python: Path, logs: Path, sglang: SGLangServer, second: SGLangServer
) -> Iterator[Router]:
    workers = [sglang.url, second.url]
    args = ("--api-key", SGLANG_API_KEY, "--policy", "round_robin")
    with running(Router(sglang_python, logs / "router.log", workers, *args)) as rt:
        yield rt


@pytest.fixture(scope="module")
def routed_gateway(router: Router, logs: Path) -> Iterator[Gateway]:
    gw = Gateway(logs / "gateway-routed.log", router.url, SGLANG_API_KEY=SGLANG_API_KEY)
    with running(gw):
        yield gw


def test_router_health_and_stream_through_the_gateway(
    router: Router, routed_gateway: Gateway
) -> None:
    assert httpx.get(f"{router.url}/health", timeout=30).status_code == 200
    models = httpx.get(f"{router.url}/v1/models", timeout=30).json()
    assert [card["id"] for card in models["data"]] == [MODEL]
    for _ in range(2):  # round robin: both workers serve one
        chunks = list(
            sdk(routed_gateway.url).chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=3,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_sglang_killed_mid_stream_and_the_router_keeps_serving(
    early_gateway: Gateway, second: SGLangServer, routed_gateway: Gateway
) -> None:
    stream = sdk(early_gateway.url).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "a long story"}],
        max_tokens=4000,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    received = 0
    with pytest.raises(openai.APIError) as caught:
        for _chunk in stream:
            received += 1
            if received == 5:
                second.kill()
    assert received >= 5
    assert "model server" in str(caught.value.message)
    # Readiness answers from the last background check (every 0.2 s here): it turns 503 at the
    # next one, and stays there.
    deadline = time.monotonic() + 5
    while httpx.get(f"{early_gateway.url}/health/ready", timeout=10).status_code != 503:
        assert time.monotonic() < deadline, "readiness still 200 five seconds after the kill"
        time.sleep(0.1)
    gone = httpx.get(f"{early_gateway.url}/health/ready", timeout=10)
    assert gone.status_code == 503 and "Retry-After" in gone.headers

    # The router, with one of its two workers dead, still answers every request.
    failures: list[str] = []
    for _ in range(6):
        try:
            reply = sdk(routed_gateway.url).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            assert reply.choices[0].finish_reason == "length"
        except openai.APIError as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
    assert failures == []
