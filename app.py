"""The gateway's HTTP face: `create_app(settings)`, its lifespan, routes and error handlers.

Routes only parse, call one `ModelHandler` method and turn the result into a response; every
failure is a `GatewayError` answered in OpenAI's shape by one handler here. A request whose client
goes away is cancelled at once, which closes its upstream connection so SGLang stops generating.
The browser playground (`gateway/playground`) adds its page's routes unless `PLAYGROUND=false`.

Run with `python app.py` (settings from the environment): `main()` adds what a bare
`uvicorn app:app` lacks: logging with request ids, uvloop and httptools with head limits
(`http_limits.py`), the drain on SIGTERM (`GatewayServer`), `gc.freeze()` and `WORKERS`.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any, TypeVar

import anyio
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from gateway.api.json_worker import JsonParser
from gateway.api.openapi import install_openapi
from gateway.api.schemas import ChatCompletionRequest
from gateway.api.streaming import EventStreamResponse
from gateway.api.validation import read_body
from gateway.chat.budget import check_budget
from gateway.chat.media import MediaPreparer
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    UpstreamError,
    UpstreamUnavailable,
    error_body,
)
from gateway.media.audio import AudioDecoder
from gateway.media.fetch import MediaFetcher
from gateway.media.images import ImagePreparer
from gateway.media.memory import media_budget
from gateway.playground.assets import Playground
from gateway.responses.openapi import responses_openapi
from gateway.responses.schemas import ResponsesRequest
from gateway.responses.service import ResponsesService
from gateway.responses.store import SQLiteResponseStore
from gateway.server.guards import Draining, FrontDoor, load_api_keys
from gateway.server.http_limits import limited_protocol
from gateway.server.metrics import Metrics, MetricsMiddleware
from gateway.server.request_context import RequestIdMiddleware, configure_logging
from gateway.server.workers import is_worker, shared_socket, supervise
from gateway.settings import Settings
from gateway.sglang.health import BackendMonitor
from gateway.speech.formats import Task
from gateway.speech.transcription import TranscriptionService, parse_transcription_form
from gateway.speech.whisper_asr import WhisperTranscriber
from model_handler import ModelHandler, build_upstream_client, end_streams_for_shutdown

logger = logging.getLogger("gateway")

T = TypeVar("T")

MODEL_OWNER = "google"
UPLOAD_FORM_OVERHEAD = 1 << 20  # multipart framing and the text fields around the file
CLIENT_CLOSED_REQUEST = 499
SHUTDOWN_MARGIN_SECONDS = 5.0  # nginx's status for "the client went away"; nobody receives it


class ClientDisconnected(Exception):
    """The client closed its connection before the answer was ready."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway for `settings`."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = build_upstream_client(settings)
        app.state.monitor = monitor = BackendMonitor(settings, client)
        fetcher = MediaFetcher(settings)
        images = ImagePreparer(settings, fetcher)
        whisper = WhisperTranscriber(settings) if WhisperTranscriber.is_installed() else None
        decoder = AudioDecoder(settings)
        budget = media_budget(settings)  # one for chat media and transcriptions together
        media = MediaPreparer(
            settings,
            fetcher=fetcher,
            images=images,
            audio=decoder,
            whisper=whisper,
            capabilities=lambda: monitor.capabilities,
            metrics=metrics,
            budget=budget,
        )
        app.state.handler = handler = ModelHandler(settings, client, media, metrics)
        _warn_if_open(settings)
        app.state.transcription = TranscriptionService(
            settings, decoder, whisper, handler.transcribe_clip, budget=budget
        )
        app.state.media_budget = budget
        store = SQLiteResponseStore(
            settings.responses_store_path,
            max_age_seconds=settings.responses_store_max_age_seconds,
            max_bytes=settings.responses_store_max_bytes,
        )
        app.state.responses = responses = ResponsesService(handler, store)
        app.state.json_parser = parser = JsonParser()
        app.state.chat_budget = functools.partial(check_budget, settings=settings)
        app.state.warm = warm = anyio.Event()
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_warm_up, images, parser, settings, warm)
                tasks.start_soon(monitor.run)
                tasks.start_soon(_drain_on_exit, app.state.draining, handler, settings)
                yield
                tasks.cancel_scope.cancel()
        finally:
            await responses.aclose()
            store.close()
            images.close()
            parser.close()
            await fetcher.aclose()
            await client.aclose()

    app = FastAPI(
        title="Gemma 3n OpenAI-compatible gateway",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # The gateway's metrics are Prometheus (metrics.py). FastAPI's OpenTelemetry hooks, idle
        # as they are without a provider, still cost ~3 % of a request checking for one.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # /v1/chat/completions/ is a 404 as at OpenAI, not a redirect whose Location Starlette
        # would build from the client's Host header.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.started_at = int(time.time())
    app.state.draining = draining = Draining()
    app.state.metrics = metrics = Metrics()
    _add_error_handlers(app)
    _add_routes(app)
    playground = Playground() if settings.playground else None
    if playground is not None:
        app.router.routes.extend(playground.routes())
    install_openapi(app, responses_openapi)
    # Added innermost first. Outermost to innermost: CORS (preflights need no key), request id
    # and access line, metrics (they count what the front door refuses too), front door, app.
    app.add_middleware(
        FrontDoor,
        settings=settings,
        draining=draining,
        open_paths=playground.open_paths if playground is not None else (),
    )
    app.add_middleware(
        MetricsMiddleware,
        metrics=metrics,
        routes=[route.path for route in app.routes if isinstance(route, Route)],
    )
    app.add_middleware(RequestIdMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "X-Request-ID",
                "OpenAI-*",
                "X-Stainless-*",
            ],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    return app


def _json(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


def _add_routes(app: FastAPI) -> None:
    async def chat_completions(request: Request) -> Response:
        body = await read_body(request)
        parser: JsonParser = request.app.state.json_parser
        content_type = request.headers.get("content-type")
        within_budget = request.app.state.chat_budget
        chat = await parser.parse(ChatCompletionRequest, body, content_type, within_budget)
        handler: ModelHandler = request.app.state.handler
        if chat.stream:
            stream = await _until_disconnect(request, handler.stream_chat_completion(chat))
            return EventStreamResponse(stream)
        completion = await _until_disconnect(request, handler.create_chat_completion(chat))
        return Response(completion, media_type="application/json")

    # A plain Starlette route: the body is parsed by hand anyway, and FastAPI's dependency
    # machinery around an endpoint cost ~10 % of a chat request's CPU (issue 7).
    # First in the router, which tries routes in order.
    app.router.routes.insert(0, Route("/v1/chat/completions", chat_completions, methods=["POST"]))

    @app.post("/v1/responses")
    async def create_response(request: Request) -> Response:
        body = await read_body(request)
        parser: JsonParser = request.app.state.json_parser
        parsed = await parser.parse(ResponsesRequest, body, request.headers.get("content-type"))
        service: ResponsesService = request.app.state.responses
        result = await _until_disconnect(request, service.create(parsed))
        if isinstance(result, bytes):
            return Response(result, media_type="application/json")
        return EventStreamResponse(result)

    @app.get("/v1/responses/{response_id}")
    async def retrieve_response(request: Request, response_id: str) -> Response:
        service: ResponsesService = request.app.state.responses
        return Response(await service.retrieve(response_id), media_type="application/json")

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(request: Request, response_id: str) -> Response:
        service: ResponsesService = request.app.state.responses
        return Response(await service.delete(response_id), media_type="application/json")

    @app.get("/v1/responses/{response_id}/input_items")
    async def list_input_items(request: Request, response_id: str) -> Response:
        service: ResponsesService = request.app.state.responses
        query = request.query_params
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest(
                "Invalid value for 'order': expected 'asc' or 'desc'.", param="order"
            )
        limit = query.get("limit", "20")
        if not limit.isdigit() or not 1 <= int(limit) <= 100:
            raise InvalidRequest(
                "Invalid value for 'limit': expected an integer from 1 to 100.", param="limit"
            )
        body = await service.input_items(
            response_id, limit=int(limit), order=order, after=query.get("after")
        )
        return Response(body, media_type="application/json")

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        return await _transcribe(request, "transcribe")

    @app.post("/v1/audio/translations")
    async def translations(request: Request) -> Response:
        return await _transcribe(request, "translate")

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        return _json({"object": "list", "data": [_model_card(request.app)]})

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(request: Request, model_id: str) -> Response:
        if model_id != request.app.state.settings.model_name:
            raise ModelNotFound(model_id, param=None)
        return _json(_model_card(request.app))

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus metrics (behind a key when PROTECT_HEALTH_AND_METRICS is set)."""
        body, content_type = request.app.state.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/health")
    async def health(request: Request) -> Response:
        """Liveness: answers at once with the last known state of SGLang."""
        monitor: BackendMonitor = request.app.state.monitor
        return _json({"status": "ok", "backend": monitor.state.as_json()})

    @app.get("/health/ready")
    async def ready(request: Request) -> Response:
        """Readiness: 200 only while SGLang is ready to generate."""
        monitor: BackendMonitor = request.app.state.monitor
        settings: Settings = request.app.state.settings
        if request.app.state.draining.active:
            raise UpstreamUnavailable(
                "The gateway is shutting down.", retry_after=settings.retry_after_seconds
            )
        if not request.app.state.warm.is_set():
            raise UpstreamUnavailable(
                "The gateway is starting its worker processes.", retry_after=1
            )
        state = monitor.state if monitor.state.ready else await monitor.check()
        if state.ready:
            return _json({"status": "ready", "backend": state.as_json()})
        raise UpstreamUnavailable(
            f"The model server is not ready: {state.detail}.",
            retry_after=settings.retry_after_seconds,
        )


async def _warm_up(
    images: ImagePreparer, parser: JsonParser, settings: Settings, warm: anyio.Event
) -> None:
    """The worker processes (images, large JSON bodies) started before the gateway says it is
    ready (MEDIA_PRESTART)."""
    if settings.media_prestart:
        started = time.perf_counter()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(images.warm)
            tasks.start_soon(parser.warm, ChatCompletionRequest, ResponsesRequest)
        logger.info("worker processes ready in %.2fs", time.perf_counter() - started)
    warm.set()


async def _drain_on_exit(draining: Draining, handler: ModelHandler, settings: Settings) -> None:
    """On SIGTERM: refuse new work at once, let streams finish within the grace, then end them.

    `GatewayServer` (`python app.py`) sets `draining.requested` from its signal handler, where
    nothing async may run; a cheap poll of that flag is the signal. Under the uvicorn CLI the
    flag is never set and uvicorn's own shutdown waits for open streams instead.
    """
    while not draining.requested:  # noqa: ASYNC110 - set from a signal handler, no event
        await anyio.sleep(0.1)
    draining.active = True
    logger.info("shutting down: draining for up to %gs", settings.shutdown_grace_seconds)
    with anyio.move_on_after(settings.shutdown_grace_seconds):
        while handler.open_streams:  # noqa: ASYNC110 - streams end on their own schedule
            await anyio.sleep(0.1)
    if handler.open_streams:
        logger.warning("ending %d streams still open after the grace", len(handler.open_streams))
        end_streams_for_shutdown(handler)
    draining.done = True  # GatewayServer stops listening now


def _warn_if_open(settings: Settings) -> None:
    if not load_api_keys(settings) and settings.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "no API keys are configured and the gateway listens on %s: anyone who can reach "
            "it can use the model (set API_KEYS or API_KEYS_FILE)",
            settings.host,
        )


async def _transcribe(request: Request, task: Task) -> Response:
    """OpenAI's multipart transcription/translation request, answered in the asked format."""
    settings: Settings = request.app.state.settings
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "multipart/form-data":
        raise InvalidRequest(
            "Send the audio as multipart/form-data with a 'file' field.",
            code="invalid_content_type",
        )
    # The form parser spools the upload without a size cap of its own: refuse a declared
    # oversize body before reading any of it (the service checks the file's real size).
    limit = settings.max_audio_bytes + UPLOAD_FORM_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"The upload is larger than the {settings.max_audio_bytes}-byte limit.", param="file"
        )
    async with request.form(max_files=1, max_fields=20) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("Missing required parameter: 'file'.", param="file")
        fields: dict[str, str | list[str]] = {}
        for name, value in form.multi_items():
            if isinstance(value, str):
                previous = fields.get(name)
                fields[name] = value if previous is None else [*_as_list(previous), value]
        transcription_request = parse_transcription_form(fields, task=task)
        audio = await upload.read()
        filename = upload.filename
    service: TranscriptionService = request.app.state.transcription
    body, body_type = await _until_disconnect(
        request, service.transcribe(audio, filename, transcription_request)
    )
    return Response(body, media_type=body_type)


def _as_list(value: str | list[str]) -> list[str]:
    return value if isinstance(value, list) else [value]


def _model_card(app: FastAPI) -> dict[str, Any]:
    return {
        "id": app.state.settings.model_name,
        "object": "model",
        "created": app.state.started_at,
        "owned_by": MODEL_OWNER,
    }


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it the moment the client disconnects.

    The request body has been read, so the next ASGI message can only be the disconnect. Without
    this, a non-streaming request (or a stream still waiting for its first token) would keep
    SGLang generating for nobody until it finished. One plain task watches and cancels this one
    (as `asyncio.timeout` does): an anyio task group here cost ~13 % of a request's CPU.
    """
    task = asyncio.current_task()
    assert task is not None
    disconnected = False

    async def watch() -> None:
        nonlocal disconnected
        while (await request.receive())["type"] != "http.disconnect":
            pass
        disconnected = True
        task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        # Ours only if nothing else cancelled the task too (server shutdown, say).
        if disconnected and task.uncancel() == 0:
            raise ClientDisconnected from None
        raise
    finally:
        watcher.cancel()


def _add_error_handlers(app: FastAPI) -> None:
    async def gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        if isinstance(exc, UpstreamError):
            request.app.state.metrics.upstream_error(type(exc).__name__)
        level = logging.WARNING if exc.status_code >= 500 else logging.INFO
        logger.log(level, "%d %s: %s", exc.status_code, exc.error_type, exc.message)
        return _json(exc.body(), exc.status_code, exc.headers)

    async def client_disconnected(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ClientDisconnect):  # Starlette's: gone while its body was read
            logger.info("client disconnected while sending its request")
        else:
            logger.info("client disconnected; upstream request closed")
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed for {request.url.path}"
        else:
            message = str(exc.detail)
        return _json(error_body(message, "invalid_request_error"), exc.status_code, exc.headers)

    async def request_validation_error(request: Request, exc: Exception) -> Response:
        return await gateway_error(request, InvalidRequest(f"Invalid request: {exc}"))

    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(ClientDisconnected, client_disconnected)
    app.add_exception_handler(ClientDisconnect, client_disconnected)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, request_validation_error)
    # Anything else is answered by RequestIdMiddleware, so that a 500 carries the request id.


class GatewayServer(uvicorn.Server):
    """uvicorn's server, draining before it stops listening when SIGTERM/SIGINT arrives.

    uvicorn stops accepting at the first signal, so the 503 a draining gateway promises new
    requests was never seen (their connections were refused). Here the first signal only asks
    the app to drain (`_drain_on_exit`): the port stays open, new requests get 503 with
    Retry-After from the front door, and streams in flight finish within the grace; then
    uvicorn's own shutdown runs. A second signal stops at once.
    """

    def __init__(self, config: uvicorn.Config, draining: Draining) -> None:
        super().__init__(config)
        self._draining = draining

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining.requested:
            super().handle_exit(sig, frame)
            return
        self._draining.requested = True
        self._captured_signals.append(sig)  # re-raised once shut down, as uvicorn does

    async def on_tick(self, counter: int) -> bool:
        if self._draining.done:
            self.should_exit = True
        return await super().on_tick(counter)


def main() -> None:
    """`python app.py`: serve with the settings from the environment."""
    settings = Settings()
    configure_logging(settings.log_level)
    grace = settings.shutdown_grace_seconds + 2 * SHUTDOWN_MARGIN_SECONDS
    if settings.workers > 1 and not is_worker():
        raise SystemExit(supervise(settings, os.path.abspath(__file__), drain_seconds=grace + 5))
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,  # RequestIdMiddleware writes the access line, with the request id
        # Streams get SHUTDOWN_GRACE_SECONDS, then an error event; uvicorn must wait for that.
        timeout_graceful_shutdown=int(grace),
        loop="uvloop",
        http=limited_protocol(
            settings.max_header_bytes, settings.header_read_timeout, settings.max_connections
        ),
    )
    # Everything built so far lives as long as the process: keep it out of the cyclic garbage
    # collector's full passes, each of which otherwise walks ~70,000 objects (34 ms here, a
    # stall every stream would feel). https://docs.python.org/3/library/gc.html#gc.freeze
    gc.collect()
    gc.freeze()
    sockets = [shared_socket(settings)] if is_worker() else None
    GatewayServer(config, app.state.draining).run(sockets=sockets)


if __name__ == "__main__":
    main()
else:
    app = create_app()
