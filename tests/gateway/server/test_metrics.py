"""metrics.py: the metrics themselves, and the middleware around small Starlette and raw ASGI
apps, in process (httpx.ASGITransport) and on a real socket (uvicorn) for disconnects."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from conftest import ServerThread, eventually
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from gateway.server.metrics import UPSTREAM_ERROR_KINDS, Metrics, MetricsMiddleware

ROUTES = ("/ok", "/stream", "/boom", "/in-flight", "/late-work", "/v1/models/{model_id:path}")


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def requests(metrics: Metrics, route: str, status: int, method: str = "GET") -> float:
    return value(metrics, "gateway_requests_total", route=route, method=method, status=str(status))


def duration_sum(metrics: Metrics, route: str) -> float:
    return value(metrics, "gateway_request_duration_seconds_sum", route=route)


# -- the metrics -----------------------------------------------------------------------------


def test_render_is_valid_exposition_text_with_every_metric() -> None:
    metrics = Metrics()
    metrics.request_finished("/ok", "GET", 200, 0.01)
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    families = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    assert families["process_resident_memory_bytes"] == "gauge"
    ours = {
        name: kind
        for name, kind in families.items()
        if name.startswith("gateway_") and not name.endswith("_created")
    }
    assert ours == {
        "gateway_requests": "counter",
        "gateway_request_duration_seconds": "histogram",
        "gateway_requests_in_flight": "gauge",
        "gateway_client_disconnects": "counter",
        "gateway_time_to_first_token_seconds": "histogram",
        "gateway_prompt_tokens": "counter",
        "gateway_completion_tokens": "counter",
        "gateway_images": "counter",
        "gateway_image_preparation_seconds": "histogram",
        "gateway_audio_parts": "counter",
        "gateway_audio_seconds": "counter",
        "gateway_audio_preparation_seconds": "histogram",
        "gateway_upstream_errors": "counter",
    }
    text = body.decode()
    assert 'gateway_requests_total{method="GET",route="/ok",status="200"} 1.0' in text
    assert 'gateway_request_duration_seconds_bucket{le="0.001",route="/ok"} 0.0' in text
    assert 'gateway_request_duration_seconds_bucket{le="600.0",route="/ok"} 1.0' in text
    for kind in UPSTREAM_ERROR_KINDS:  # exported as 0 before the first error
        assert f'gateway_upstream_errors_total{{kind="{kind}"}} 0.0' in text


def test_counters_move_as_called() -> None:
    metrics = Metrics()
    metrics.request_finished("/ok", "GET", 200, 0.5)
    metrics.request_finished("/ok", "GET", 200, 1.5)
    metrics.request_finished("/ok", "GET", 404, 0.1)
    metrics.time_to_first_token(0.2)
    metrics.tokens(prompt=12, completion=30)
    metrics.tokens(prompt=3, completion=0)
    metrics.images_prepared(2, 0.05)
    metrics.images_prepared(0, 0.0)  # a request without images observes nothing
    metrics.audio_prepared(1, 0.3, audio_seconds=12.5)
    metrics.audio_prepared(0, 0.0, audio_seconds=0.0)
    metrics.upstream_error("UpstreamTimeout")
    metrics.upstream_error("UpstreamTimeout")
    metrics.upstream_error("SomethingNew")
    metrics.client_disconnected()
    metrics.in_flight.inc()

    assert requests(metrics, "/ok", 200) == 2
    assert requests(metrics, "/ok", 404) == 1
    assert value(metrics, "gateway_request_duration_seconds_count", route="/ok") == 3
    assert duration_sum(metrics, "/ok") == pytest.approx(2.1)
    assert value(metrics, "gateway_time_to_first_token_seconds_count") == 1
    assert value(metrics, "gateway_time_to_first_token_seconds_bucket", le="0.25") == 1
    assert value(metrics, "gateway_prompt_tokens_total") == 15
    assert value(metrics, "gateway_completion_tokens_total") == 30
    assert value(metrics, "gateway_images_total") == 2
    assert value(metrics, "gateway_image_preparation_seconds_count") == 1
    assert value(metrics, "gateway_audio_parts_total") == 1
    assert value(metrics, "gateway_audio_seconds_total") == 12.5
    assert value(metrics, "gateway_audio_preparation_seconds_count") == 1
    assert value(metrics, "gateway_upstream_errors_total", kind="UpstreamTimeout") == 2
    assert value(metrics, "gateway_upstream_errors_total", kind="SomethingNew") == 1
    assert value(metrics, "gateway_upstream_errors_total", kind="UpstreamFailed") == 0
    assert value(metrics, "gateway_client_disconnects_total") == 1
    assert value(metrics, "gateway_requests_in_flight") == 1


def test_each_instance_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.client_disconnected()
    assert value(first, "gateway_client_disconnects_total") == 1
    assert value(second, "gateway_client_disconnects_total") == 0


def test_route_of_maps_unknown_paths_to_other() -> None:
    middleware = MetricsMiddleware(PlainTextResponse("x"), Metrics(), [*ROUTES, "/v1/models"])
    assert middleware.route_of("/ok") == "/ok"
    assert middleware.route_of("/v1/models") == "/v1/models"
    assert middleware.route_of("/v1/models/google/gemma-3n-E4B-it") == "/v1/models/{model_id:path}"
    assert middleware.route_of("/v1/modelsX") == "other"
    assert middleware.route_of("/OK") == "other"
    assert middleware.route_of("/ok/") == "other"
    assert middleware.route_of("/admin/flush_cache") == "other"


# -- the middleware in process ---------------------------------------------------------------


def build_app(metrics: Metrics) -> Starlette:
    async def ok(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                await asyncio.sleep(0.05)
                yield b"chunk\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    async def boom(request: Request) -> Response:
        raise RuntimeError("the app failed")

    async def in_flight(request: Request) -> Response:
        return PlainTextResponse(str(value(metrics, "gateway_requests_in_flight")))

    async def late_work(request: Request) -> Response:
        # Work after the last byte (like closing the upstream stream) is not response time.
        return PlainTextResponse("done", background=BackgroundTask(asyncio.sleep, 0.2))

    async def model(request: Request) -> Response:
        return PlainTextResponse(request.path_params["model_id"])

    return Starlette(
        routes=[
            Route("/ok", ok),
            Route("/stream", stream),
            Route("/boom", boom),
            Route("/in-flight", in_flight),
            Route("/late-work", late_work),
            Route("/v1/models/{model_id:path}", model),
        ],
        middleware=[Middleware(MetricsMiddleware, metrics=metrics, routes=ROUTES)],
    )


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def client(metrics: Metrics) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(metrics), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        yield http


@pytest.mark.anyio
async def test_counts_a_request_and_its_duration(
    client: httpx.AsyncClient, metrics: Metrics
) -> None:
    assert (await client.get("/ok")).text == "ok"
    assert (await client.get("/ok")).text == "ok"
    assert requests(metrics, "/ok", 200) == 2
    assert value(metrics, "gateway_request_duration_seconds_count", route="/ok") == 2
    assert 0 < duration_sum(metrics, "/ok") < 0.5
    assert value(metrics, "gateway_requests_in_flight") == 0


@pytest.mark.anyio
async def test_in_flight_counts_the_request_being_handled(
    client: httpx.AsyncClient, metrics: Metrics
) -> None:
    assert (await client.get("/in-flight")).text == "1.0"
    assert value(metrics, "gateway_requests_in_flight") == 0


@pytest.mark.anyio
async def test_duration_covers_the_whole_stream(
    client: httpx.AsyncClient, metrics: Metrics
) -> None:
    response = await client.get("/stream")
    assert response.text == "chunk\n" * 3
    assert requests(metrics, "/stream", 200) == 1
    assert duration_sum(metrics, "/stream") >= 0.15
    assert value(metrics, "gateway_requests_in_flight") == 0


@pytest.mark.anyio
async def test_duration_ends_at_the_last_byte_not_after_background_work(
    client: httpx.AsyncClient, metrics: Metrics
) -> None:
    started = time.perf_counter()
    assert (await client.get("/late-work")).text == "done"
    assert time.perf_counter() - started >= 0.2  # ASGITransport waits for the background task
    assert requests(metrics, "/late-work", 200) == 1
    assert duration_sum(metrics, "/late-work") < 0.15
    assert value(metrics, "gateway_requests_in_flight") == 0


@pytest.mark.anyio
async def test_an_app_that_raises_is_counted_as_500(
    client: httpx.AsyncClient, metrics: Metrics
) -> None:
    assert (await client.get("/boom")).status_code == 500
    assert requests(metrics, "/boom", 500) == 1
    assert value(metrics, "gateway_requests_in_flight") == 0
    assert value(metrics, "gateway_client_disconnects_total") == 0


@pytest.mark.anyio
async def test_unknown_paths_and_methods_are_labelled_other(
    client: httpx.AsyncClient, metrics: Metrics
) -> None:
    for path in ("/admin/flush_cache", "/random/1", "/random/2"):
        assert (await client.get(path)).status_code == 404
    assert (await client.request("BREW", "/ok")).status_code == 405
    assert requests(metrics, "other", 404) == 3
    assert requests(metrics, "/ok", 405, method="other") == 1
    assert "/random" not in metrics.render()[0].decode()
    assert value(metrics, "gateway_requests_in_flight") == 0


@pytest.mark.anyio
async def test_a_templated_route_is_labelled_with_its_template(
    client: httpx.AsyncClient, metrics: Metrics
) -> None:
    assert (await client.get("/v1/models/google/gemma-3n-E4B-it")).text == (
        "google/gemma-3n-E4B-it"
    )
    assert requests(metrics, "/v1/models/{model_id:path}", 200) == 1


# -- the middleware driven by hand: what a server does when the client goes away --------------


async def call(app: MetricsMiddleware, messages: list[Message], send: Send) -> None:
    scope: Scope = {"type": "http", "method": "POST", "path": "/ok", "headers": []}
    pending = list(messages)

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    await app(scope, receive, send)


async def ignore(message: Message) -> None:
    pass


@pytest.mark.anyio
async def test_a_client_gone_before_the_response_is_counted_as_499() -> None:
    async def waits_for_the_disconnect(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass  # then returns without answering: nobody is listening

    metrics = Metrics()
    app = MetricsMiddleware(waits_for_the_disconnect, metrics, ROUTES)
    await call(app, [{"type": "http.request", "body": b"{}"}], ignore)
    assert requests(metrics, "/ok", 499, method="POST") == 1
    assert value(metrics, "gateway_client_disconnects_total") == 1
    assert value(metrics, "gateway_requests_in_flight") == 0


@pytest.mark.anyio
async def test_a_send_that_raises_oserror_is_a_disconnect() -> None:
    async def streams(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b", "more_body": True})

    async def gone_after_the_headers(message: Message) -> None:
        if message["type"] == "http.response.body":
            raise OSError("the client has gone")  # ASGI spec 2.4

    metrics = Metrics()
    app = MetricsMiddleware(streams, metrics, ROUTES)
    with pytest.raises(OSError, match="gone"):
        await call(app, [], gone_after_the_headers)
    assert requests(metrics, "/ok", 200, method="POST") == 1
    assert value(metrics, "gateway_client_disconnects_total") == 1
    assert value(metrics, "gateway_requests_in_flight") == 0


@pytest.mark.anyio
async def test_the_disconnect_after_a_complete_response_is_not_counted() -> None:
    async def answers_then_listens(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        assert (await receive())["type"] == "http.disconnect"

    metrics = Metrics()
    await call(MetricsMiddleware(answers_then_listens, metrics, ROUTES), [], ignore)
    assert requests(metrics, "/ok", 200, method="POST") == 1
    assert value(metrics, "gateway_client_disconnects_total") == 0


@pytest.mark.anyio
async def test_lifespan_passes_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    metrics = Metrics()
    await MetricsMiddleware(app, metrics, ROUTES)({"type": "lifespan"}, ignore_receive, ignore)
    assert seen == ["lifespan"]
    assert "gateway_requests_total{" not in metrics.render()[0].decode()


async def ignore_receive() -> Message:
    return {"type": "lifespan.startup"}


# -- a real server and a client that hangs up mid-stream -------------------------------------


def test_a_client_gone_mid_stream_leaves_nothing_in_flight() -> None:
    metrics = Metrics()

    async def endless(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            while True:
                yield b"data: token\n\n"
                await asyncio.sleep(0.01)

        return StreamingResponse(chunks(), media_type="text/event-stream")

    app = Starlette(
        routes=[Route("/stream", endless)],
        middleware=[Middleware(MetricsMiddleware, metrics=metrics, routes=["/stream"])],
    )
    server = ServerThread(app)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while received.count(b"data: ") < 3:
                received += sock.recv(65536)
            assert b"200 OK" in received
            assert value(metrics, "gateway_requests_in_flight") == 1
        assert eventually(lambda: value(metrics, "gateway_requests_in_flight") == 0)
        assert value(metrics, "gateway_client_disconnects_total") == 1
        assert requests(metrics, "/stream", 200) == 1
        assert duration_sum(metrics, "/stream") > 0.02
    finally:
        server.stop()
