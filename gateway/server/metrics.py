"""The gateway's Prometheus metrics: what is counted, under which names, and the ASGI middleware
that counts every HTTP request.

`Metrics` owns one `CollectorRegistry` per app (never prometheus_client's global one: the tests
build many apps in one process, and a second registration in the global registry would fail).
Every series is named `gateway_*`::

    gateway_requests_total{route,method,status}     every HTTP request, counted when it ends
    gateway_request_duration_seconds{route}         until the last body byte (streams included)
    gateway_requests_in_flight                      requests being handled now
    gateway_client_disconnects_total                clients gone before their response was complete
    gateway_time_to_first_token_seconds             request received -> first token from SGLang
    gateway_prompt_tokens_total, gateway_completion_tokens_total
    gateway_images_total, gateway_image_preparation_seconds
    gateway_audio_parts_total, gateway_audio_seconds_total, gateway_audio_preparation_seconds
    gateway_upstream_errors_total{kind}             kind: the errors.* class name
    process_*                                       memory, CPU and file descriptors (Linux)

With `WORKERS` > 1 the supervisor gives its workers one fresh folder (`PROMETHEUS_MULTIPROC_DIR`,
made on start and removed on exit), prometheus_client's multiprocess mode: every worker writes
its values there, and whichever worker a scrape reaches answers for the whole gateway (counters
and histograms summed over the workers, `gateway_requests_in_flight` summed over the live ones).
`process_*` are then left out: prometheus_client cannot merge them, and one worker's memory
would pass for the gateway's.

Label values never come from clients unchecked: `MetricsMiddleware` maps any path that is not
one of the app's routes to "other" and any unusual method to "other", so a scanner cannot grow
the number of series. `MetricsMiddleware` is pure ASGI (see STYLE.md, habit 7): it neither
buffers a stream nor hides its disconnect, and does no metrics work per streamed chunk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

OTHER = "other"
CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away before the response"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UPSTREAM_ERROR_KINDS = (
    "UpstreamUnavailable",
    "UpstreamTimeout",
    "UpstreamBadResponse",
    "UpstreamFailed",
    "UpstreamRejected",
    "RateLimited",
)

# 1 ms (a health check) .. 10 min (a long transcription or a slow stream of many tokens).
REQUEST_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
# 10 ms (warm prefix cache) .. 2 min (a long multimodal prompt queued behind others).
FIRST_TOKEN_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
# Decoding, fetching and resizing: 1 ms (a small inline image) .. 1 min (a slow URL, long audio).
PREPARATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable


def multiprocess() -> bool:
    """Whether this process is one of several workers sharing their metrics."""
    return bool(os.environ.get(MULTIPROCESS_DIR))


class Metrics:
    """All of the gateway's Prometheus metrics, in their own `CollectorRegistry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self._multiprocess = multiprocess()
        if not self._multiprocess:
            # process_* (resident memory, CPU, open fds), read from /proc at scrape time only:
            # the numbers to watch for memory that grows per request.
            ProcessCollector(registry=registry)
        self._requests = Counter(
            "gateway_requests",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
            registry=registry,
        )
        self._request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from receiving a request to sending the last byte of its response.",
            ("route",),
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight",
            "HTTP requests being handled.",
            registry=registry,
            multiprocess_mode="livesum",  # with WORKERS: summed over the workers alive
        )
        self._client_disconnects = Counter(
            "gateway_client_disconnects",
            "Requests whose client went away before the response was complete.",
            registry=registry,
        )
        self._time_to_first_token = Histogram(
            "gateway_time_to_first_token_seconds",
            "Time from receiving a chat request to the first generated token.",
            buckets=FIRST_TOKEN_BUCKETS,
            registry=registry,
        )
        self._prompt_tokens = Counter(
            "gateway_prompt_tokens", "Prompt tokens, as SGLang counted them.", registry=registry
        )
        self._completion_tokens = Counter(
            "gateway_completion_tokens", "Generated tokens.", registry=registry
        )
        self._images = Counter(
            "gateway_images", "Images prepared for the model.", registry=registry
        )
        self._image_preparation = Histogram(
            "gateway_image_preparation_seconds",
            "Time to fetch, decode and resize all the images of one request.",
            buckets=PREPARATION_BUCKETS,
            registry=registry,
        )
        self._audio_parts = Counter(
            "gateway_audio_parts", "Audio inputs prepared for the model.", registry=registry
        )
        self._audio_seconds = Counter(
            "gateway_audio_seconds", "Seconds of audio prepared for the model.", registry=registry
        )
        self._audio_preparation = Histogram(
            "gateway_audio_preparation_seconds",
            "Time to fetch, decode and resample all the audio of one request.",
            buckets=PREPARATION_BUCKETS,
            registry=registry,
        )
        self._upstream_errors = Counter(
            "gateway_upstream_errors",
            "Failures of or refusals by SGLang, and overload refusals, by error class.",
            ("kind",),
            registry=registry,
        )
        # `.labels()` validates and hashes its arguments on every call: look each child up once.
        self._request_counters: dict[tuple[str, str, int], Counter] = {}
        self._request_durations: dict[str, Histogram] = {}
        # Created up front so that every kind is exported as 0 and rate() works from the start.
        self._upstream_error_counters = {
            kind: self._upstream_errors.labels(kind) for kind in UPSTREAM_ERROR_KINDS
        }

    def render(self) -> tuple[bytes, str]:
        """The exposition text of every metric, and the content type to serve it with."""
        if self._multiprocess:
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]  # every worker's files
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def request_finished(self, route: str, method: str, status: int, seconds: float) -> None:
        """Counts one request and observes its duration.

        `route` and `method` must already be bounded (route templates, known methods or "other"):
        every distinct value is a new series, kept for the life of the process.
        """
        key = (route, method, status)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self._requests.labels(route, method, str(status))
            self._request_counters[key] = counter
        counter.inc()
        duration = self._request_durations.get(route)
        if duration is None:
            duration = self._request_duration.labels(route)
            self._request_durations[route] = duration
        duration.observe(seconds)

    def time_to_first_token(self, seconds: float) -> None:
        self._time_to_first_token.observe(seconds)

    def tokens(self, prompt: int, completion: int) -> None:
        """Adds one response's usage; call it once per response, streamed or not."""
        self._prompt_tokens.inc(prompt)
        self._completion_tokens.inc(completion)

    def images_prepared(self, count: int, seconds: float) -> None:
        """One request's images: how many, and the time to prepare all of them (if any)."""
        if count:
            self._images.inc(count)
            self._image_preparation.observe(seconds)

    def audio_prepared(self, count: int, seconds: float, audio_seconds: float) -> None:
        """One request's audio: how many parts, the time to prepare them and their length."""
        if count:
            self._audio_parts.inc(count)
            self._audio_seconds.inc(audio_seconds)
            self._audio_preparation.observe(seconds)

    def upstream_error(self, kind: str) -> None:
        """Counts one upstream failure; `kind` is the errors.* class name (a bounded set)."""
        counter = self._upstream_error_counters.get(kind)
        if counter is None:
            counter = self._upstream_errors.labels(kind)
            self._upstream_error_counters[kind] = counter
        counter.inc()

    def client_disconnected(self) -> None:
        self._client_disconnects.inc()


class MetricsMiddleware:
    """Counts every HTTP request by route, method and status, observes its duration until the
    last body byte is sent (streams included), counts clients that leave before that, and keeps
    `in_flight` right also when the app raises or the client disconnects.

    The request is counted the moment its last byte is sent (so a client that scrapes right
    after its own response sees it), or, when no last byte is ever sent, once the app returns:
    with the status it started, else 499 if the client left, else 500 (the app raised; Starlette's
    ServerErrorMiddleware, outside this one, answers 500). `in_flight` drops when the app returns,
    after background tasks, because until then the request still holds resources.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Collection[str]) -> None:
        """`routes`: the app's path templates ("/v1/models/{model_id:path}" as written in the
        route); a path matching none of them is labelled "other"."""
        self.app = app
        self.metrics = metrics
        self._exact = {route: route for route in routes if "{" not in route}
        self._templates = [(compile_path(route)[0], route) for route in routes if "{" in route]

    def route_of(self, path: str) -> str:
        """The route template that `path` belongs to, or "other"."""
        route = self._exact.get(path)
        if route is not None:
            return route
        for pattern, template in self._templates:
            if pattern.match(path):
                return template
        return OTHER

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        metrics = self.metrics
        route = self.route_of(scope["path"])
        method = scope["method"] if scope["method"] in KNOWN_METHODS else OTHER
        status = 0
        complete = False  # the last body message has been handed to the server
        counted = False
        disconnected = False

        async def receive_and_watch() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect" and not complete:
                disconnected = True
            return message

        async def send_and_watch(message: Message) -> None:
            nonlocal status, complete, counted, disconnected
            # The only per-chunk cost: two lookups. Metrics work happens once, at the end.
            try:
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    # Set before the send: the server may report the disconnect that follows a
                    # complete response while finishing it; that is not a client leaving early.
                    complete = True
                    await send(message)
                    metrics.request_finished(route, method, status, time.perf_counter() - started)
                    counted = True
                    return
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)
            except OSError:  # ASGI spec 2.4: a send to a client that has gone raises OSError
                disconnected = True
                raise

        metrics.in_flight.inc()
        try:
            await self.app(scope, receive_and_watch, send_and_watch)
        finally:
            metrics.in_flight.dec()
            if disconnected:
                metrics.client_disconnected()
            if not counted:
                if not status:
                    status = CLIENT_CLOSED_REQUEST if disconnected else 500
                metrics.request_finished(route, method, status, time.perf_counter() - started)
