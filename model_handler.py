"""The SGLang client: build the upstream request, send it, stream it back, map its errors.

`ModelHandler` is the serving layer between the HTTP face (`app.py`) and SGLang. For a chat
completion it checks the model name (SGLang does not), fits the conversation to Gemma 3n
(`conversation.py`), applies the token limits, forwards an allow-list of fields only, and then:

- non-streaming: returns OpenAI's JSON body as bytes;
- streaming: reads SGLang's first event before returning, so that everything that can fail before
  the first token (validation, context overflow, media, overload) is still an HTTP error with the
  right status; after that, failures travel inside the stream as an error event and `[DONE]`.

Transport failures are translated here, most specific first (`_map_transport_error`). One retry
covers a pooled connection that SGLang closed as the request was written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import orjson

from conversation import Conversation, normalise_conversation
from errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    UnsupportedContent,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from media import MediaPreparer
from metrics import Metrics
from request_context import request_facts_var
from schemas import ChatCompletionRequest
from settings import Settings
from sglang_format import (
    ChunkRewriter,
    error_for_status,
    iter_sse_data,
    rewrite_completion,
    stream_error_frame,
)

logger = logging.getLogger("gateway.model_handler")

CHAT_PATH = "/v1/chat/completions"

# OpenAI fields and safe SGLang extras forwarded as the client sent them. Everything else a client
# sends is either rebuilt below (messages, model, max_tokens, stream) or never leaves the gateway.
FORWARDED_FIELDS = (
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "n",
    "presence_penalty",
    "seed",
    "stop",
    "temperature",
    "top_logprobs",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "min_tokens",
    "regex",
    "ebnf",
    "stop_token_ids",
    "ignore_eos",
    "skip_special_tokens",
)

DONE_FRAME = b"data: [DONE]\n\n"

# Errors raised while sending that mean the bytes may never have reached SGLang: typically a
# keep-alive connection SGLang closed just as it was reused, which fails at once.
STALE_CONNECTION_WINDOW_SECONDS = 1.0
_RETRYABLE_SEND_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def build_upstream_client(settings: Settings) -> httpx.AsyncClient:
    """The one pooled client to SGLang, with keep-alive shorter than SGLang's own 5 s."""
    headers = {"Accept-Encoding": "identity"}
    if settings.sglang_api_key is not None:
        headers["Authorization"] = f"Bearer {settings.sglang_api_key.get_secret_value()}"
    return httpx.AsyncClient(
        base_url=settings.sglang_url,
        headers=headers,
        timeout=httpx.Timeout(
            connect=settings.upstream_connect_timeout,
            read=settings.upstream_read_timeout,
            write=settings.upstream_connect_timeout,
            pool=settings.upstream_connect_timeout,
        ),
        limits=httpx.Limits(
            max_connections=settings.upstream_max_connections,
            max_keepalive_connections=settings.upstream_max_connections,
            keepalive_expiry=settings.upstream_keepalive_expiry,
        ),
        trust_env=False,
    )


class ChatStream:
    """An SGLang stream whose first event is already read; iterate it for OpenAI's SSE frames.

    Iteration ends with `data: [DONE]`, after an error event if SGLang failed mid-stream or the
    gateway ended the stream for shutdown (`end_for_shutdown`), and closes the upstream response
    however it ends (completion, error, cancellation by a disconnect). `aclose` may be called any
    number of times, also before iteration starts.
    """

    def __init__(
        self,
        response: httpx.Response,
        events: AsyncIterator[bytes],
        first_frame: bytes,
        rewriter: ChunkRewriter,
        handler: ModelHandler,
    ) -> None:
        self._response = response
        self._events = events
        self._first_frame = first_frame
        self._rewriter = rewriter
        self._handler = handler
        self._ending = False
        self._closed = False
        handler.open_streams.add(self)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            yield self._first_frame
            rewrite = self._rewriter.rewrite
            error: GatewayError | None = None
            try:
                async for data in self._events:
                    frame = rewrite(data)
                    if frame is not None:
                        yield b"data: " + frame + b"\n\n"
            except GatewayError as exc:
                error = exc
            except Exception as exc:
                # While ending for shutdown, whatever the closed connection raised is expected.
                if not self._ending:
                    if not isinstance(exc, httpx.HTTPError):
                        raise
                    error = _map_transport_error(exc)
            if self._ending:
                error = UpstreamUnavailable(
                    "The gateway is shutting down; the response was cut short.", retry_after=1
                )
            if error is not None:
                self._handler.record_error(error)
                yield stream_error_frame(error)
            yield DONE_FRAME
        finally:
            await self.aclose()

    async def end_for_shutdown(self) -> None:
        """Cut the stream short: its iteration ends with an error event and `[DONE]`."""
        self._ending = True
        await self.aclose()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._handler.open_streams.discard(self)
            self._handler.record_usage(self._rewriter.usage)
        # Shielded: on a client disconnect this runs inside a cancelled scope, and closing the
        # upstream connection is exactly what makes SGLang stop generating.
        with anyio.CancelScope(shield=True):
            await self._response.aclose()


class ModelHandler:
    """Chat completions against SGLang for the one model this gateway serves."""

    def __init__(
        self,
        settings: Settings,
        client: httpx.AsyncClient,
        media: MediaPreparer | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._client = client
        self._media = media
        self._metrics = metrics
        self.open_streams: set[ChatStream] = set()

    @property
    def model_name(self) -> str:
        return self._settings.model_name

    def check_model(self, model: str) -> None:
        """SGLang answers for any model name; the gateway serves exactly one."""
        if model != self._settings.model_name:
            raise ModelNotFound(model)

    async def create_chat_completion(self, request: ChatCompletionRequest) -> bytes:
        """OpenAI's `chat.completion` body for a non-streaming request."""
        payload = await self._upstream_payload(request, stream=False)
        body, usage = rewrite_completion(await self._complete(payload), request.model)
        self.record_usage(usage)
        return body

    async def transcribe_clip(
        self, clip_url: str, language: str | None, instruction: str, temperature: float
    ) -> str:
        """Gemma 3n's transcript of one audio clip of at most 30 s (a WAV `data:` URL).

        `language` is already part of `instruction`; the transcription service passes it for
        the log only.
        """
        logger.debug("transcribing a clip with Gemma (language hint: %s)", language)
        payload = {
            "model": self._settings.model_name,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": instruction},
                        {"type": "audio_url", "audio_url": {"url": clip_url}},
                    ],
                }
            ],
            "max_tokens": self._settings.default_max_tokens,
            "temperature": temperature,
        }
        body, usage = rewrite_completion(
            await self._complete(orjson.dumps(payload)), self.model_name
        )
        self.record_usage(usage)
        completion = orjson.loads(body)
        return str(completion["choices"][0]["message"].get("content") or "")

    async def _complete(self, payload: bytes) -> bytes:
        """SGLang's whole non-streaming response body."""
        response = await self._send(payload)
        try:
            return await response.aread()
        except httpx.HTTPError as exc:
            raise _map_transport_error(exc) from exc
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    async def stream_chat_completion(self, request: ChatCompletionRequest) -> ChatStream:
        """A stream positioned after its first event, or the error SGLang answered instead."""
        started = time.perf_counter()
        payload = await self._upstream_payload(request, stream=True)
        response = await self._send(payload)
        options = request.stream_options
        rewriter = ChunkRewriter(
            request.model, forward_usage=bool(options is not None and options.include_usage)
        )
        try:
            events = iter_sse_data(response.aiter_raw())
            first_frame = b""
            while not first_frame:  # the first chunk the client is meant to see
                first_frame = _frame(rewriter.rewrite(await anext(events)))
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await response.aclose()
            if isinstance(exc, httpx.HTTPError):
                raise _map_transport_error(exc) from exc
            if isinstance(exc, StopAsyncIteration):
                raise UpstreamBadResponse("The model server's stream was empty.") from None
            raise
        self._record_ttft(time.perf_counter() - started)
        return ChatStream(response, events, first_frame, rewriter, self)

    # --- what the gateway learns: metrics and the access line ---------------------------------

    def record_usage(self, usage: dict[str, Any] | None) -> None:
        if usage is None:
            return
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            if self._metrics is not None:
                self._metrics.tokens(prompt, completion)
            facts = request_facts_var.get(None)
            if facts is not None:
                facts["tokens"] = f"{prompt}/{completion}"

    def record_error(self, error: GatewayError) -> None:
        if self._metrics is not None and isinstance(error, UpstreamError):
            self._metrics.upstream_error(type(error).__name__)

    def _record_ttft(self, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.time_to_first_token(seconds)
        facts = request_facts_var.get(None)
        if facts is not None:
            facts["ttft_ms"] = f"{seconds * 1000:.1f}"

    # --- building the upstream request --------------------------------------------------------

    async def _upstream_payload(self, request: ChatCompletionRequest, *, stream: bool) -> bytes:
        self.check_model(request.model)
        _refuse_tool_choice(request)
        self._check_counts(request)
        max_tokens = self._max_tokens(request)
        conversation = await self._conversation(request)
        payload: dict[str, Any] = {
            "model": self._settings.model_name,
            "messages": conversation.messages,
            "max_tokens": max_tokens,
        }
        for name in FORWARDED_FIELDS:
            value = getattr(request, name)
            if value is not None:
                payload[name] = value
        if request.response_format is not None:
            payload["response_format"] = request.response_format.model_dump(
                by_alias=True, exclude_none=True
            )
        if stream:
            payload["stream"] = True
            # Always: the usage chunk feeds the metrics; ChunkRewriter drops it unless asked.
            payload["stream_options"] = {"include_usage": True}
        facts = request_facts_var.get(None)
        if facts is not None:
            facts["model"] = request.model
        return orjson.dumps(payload)

    async def _conversation(self, request: ChatCompletionRequest) -> Conversation:
        """Gemma-ready messages, with images and audio prepared (cheap checks come first)."""
        if self._media is None:
            return normalise_conversation(request.messages)
        conversation = normalise_conversation(request.messages, self._media.accepted_kinds)
        await self._media.prepare(conversation)
        return conversation

    def _check_counts(self, request: ChatCompletionRequest) -> None:
        limit = self._settings.max_messages_per_request
        if len(request.messages) > limit:
            raise InvalidRequest(
                f"Too many messages: {len(request.messages)}. At most {limit} are accepted.",
                param="messages",
            )
        if request.n is not None and request.n > self._settings.max_n:
            raise InvalidRequest(
                f"n is too large: {request.n}. This gateway allows at most {self._settings.max_n}.",
                param="n",
            )

    def _max_tokens(self, request: ChatCompletionRequest) -> int:
        # OpenAI's newer name wins, as it does in SGLang.
        if request.max_completion_tokens is not None:
            name, asked = "max_completion_tokens", request.max_completion_tokens
        elif request.max_tokens is not None:
            name, asked = "max_tokens", request.max_tokens
        else:
            return self._settings.default_max_tokens
        limit = self._settings.max_tokens_limit
        if asked > limit:
            raise InvalidRequest(
                f"{name} is too large: {asked}. This gateway allows at most {limit} completion "
                "tokens per request.",
                param=name,
                code="max_tokens_too_large",
            )
        return asked

    # --- sending ------------------------------------------------------------------------------

    async def _send(self, payload: bytes) -> httpx.Response:
        """SGLang's 200 response with its body unread, or the mapped error of any other answer."""
        request = self._client.build_request(
            "POST", CHAT_PATH, content=payload, headers={"Content-Type": "application/json"}
        )
        try:
            sent_at = time.perf_counter()
            try:
                response = await self._client.send(request, stream=True)
            except _RETRYABLE_SEND_ERRORS:
                # Only a failure right after sending is a stale keep-alive connection; one after
                # SGLang has been working for a while (a proxy cutting a long generation) is not,
                # and retrying it would run the whole generation again.
                if time.perf_counter() - sent_at > STALE_CONNECTION_WINDOW_SECONDS:
                    raise
                logger.info("upstream connection closed before an answer; retrying once")
                response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _map_transport_error(exc, retry_after=self._settings.retry_after_seconds) from exc
        if response.status_code == 200:
            return response
        try:
            body = await response.aread()
        except httpx.HTTPError as exc:
            raise _map_transport_error(exc) from exc
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()
        raise error_for_status(
            response.status_code, body, retry_after=self._settings.retry_after_seconds
        )


def _frame(chunk: bytes | None) -> bytes:
    return b"data: " + chunk + b"\n\n" if chunk is not None else b""


def _refuse_tool_choice(request: ChatCompletionRequest) -> None:
    """Tools are accepted and ignored ("auto": the model chose to answer in text); requiring a
    call cannot be honoured, since SGLang has no tool-call parser for Gemma 3n."""
    choice = request.tool_choice
    if choice is None or choice in ("auto", "none"):
        return
    raise UnsupportedContent(
        "tool_choice "
        + (f"'{choice}'" if isinstance(choice, str) else "naming a function")
        + " cannot be honoured: Gemma 3n on this gateway has no tool calling.",
        param="tool_choice",
    )


async def end_streams_for_shutdown(handler: ModelHandler) -> None:
    """End every open stream with an error event and `[DONE]` (the shutdown grace is over)."""
    for stream in list(handler.open_streams):
        await stream.end_for_shutdown()


def _map_transport_error(exc: httpx.HTTPError, *, retry_after: int = 5) -> UpstreamError:
    """httpx's exceptions as the gateway's, the most specific first."""
    if isinstance(exc, httpx.PoolTimeout):
        return UpstreamUnavailable(
            "Too many requests are waiting for the model server; retry later.",
            retry_after=retry_after,
        )
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return UpstreamUnavailable(
            "The model server is not reachable; it may still be starting.",
            retry_after=retry_after,
        )
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout("The model server did not answer in time.")
    logger.warning("upstream transport error: %r", exc)
    return UpstreamBadResponse("The connection to the model server failed mid-response.")
