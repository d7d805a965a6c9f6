"""The SGLang client: build the upstream request, send it, stream it back, map its errors.

`ModelHandler` is the serving layer between the HTTP face (`app.py`) and SGLang. For a chat
completion it checks the model name (SGLang does not), fits the conversation to Gemma 3n
(`conversation.py`), applies the token limits, forwards an allow-list of fields only, and then:

- non-streaming: returns OpenAI's JSON body as bytes;
- streaming: reads SGLang's first event before returning, so that everything that can fail before
  the first token (validation, context overflow, media, overload) is still an HTTP error with the
  right status; after that, failures travel inside the stream as an error event and `[DONE]`.

Tools (`gateway.chat.tools`) are rendered into the conversation, never forwarded: SGLang has no
tool parser for Gemma 3n. When the model must call, decoding is constrained to calls; the output
is read for calls (`gateway.chat.tool_output`) before it reaches the client. The Responses API
(`gateway.responses`) runs on the same steps: `prepare_chat`, then `complete` or `open_stream`.

The stream itself is relayed by `chat_stream.ChatStream`. Transport failures are translated by
`translate.error_for_transport`; one retry covers a pooled connection that SGLang closed as
the request was written.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.api.schemas import ChatCompletionRequest
from gateway.chat.budget import check_budget
from gateway.chat.conversation import Conversation, normalise_conversation
from gateway.chat.media import MediaPreparer
from gateway.chat.tool_output import ToolCallChunks, apply_to_completion
from gateway.chat.tools import ToolPlan, plan_tools
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    UnsupportedContent,
    UpstreamError,
)
from gateway.server.metrics import Metrics
from gateway.server.request_context import request_facts_var
from gateway.settings import Settings
from gateway.sglang.chat_stream import ChatStream, StreamTranslator
from gateway.sglang.translate import (
    ChunkRewriter,
    SSEDecoder,
    completion_usage,
    error_for_status,
    error_for_transport,
    read_completion,
)
from gateway.sglang.upstream import (
    ConnectionClosed,
    TransportError,
    UpstreamClient,
    UpstreamResponse,
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

_JSON_HEADERS = (("Content-Type", "application/json"),)

# A reused keep-alive connection that SGLang closed just as the request was written fails at once
# and before any answer: that, and only that, is retried.
STALE_CONNECTION_WINDOW_SECONDS = 1.0


def build_upstream_client(settings: Settings) -> UpstreamClient:
    """The one pooled client to SGLang, with keep-alive shorter than SGLang's own 5 s."""
    headers = {}
    if settings.sglang_api_key is not None:
        headers["Authorization"] = f"Bearer {settings.sglang_api_key.get_secret_value()}"
    return UpstreamClient(
        settings.sglang_url,
        headers=headers,
        max_connections=settings.upstream_max_connections,
        connect_timeout=settings.upstream_connect_timeout,
        read_timeout=settings.upstream_read_timeout,
        pool_timeout=settings.upstream_connect_timeout,
        keepalive_expiry=settings.upstream_keepalive_expiry,
    )


@dataclass(frozen=True)
class PreparedChat:
    """A chat request made ready for SGLang: the upstream body and what shapes the answer."""

    payload: bytes
    model: str  # the name the client asked for, echoed in the answer
    tools: ToolPlan | None
    conversation: Conversation  # as sent; its media parts say what they were prepared into
    include_usage: bool  # a stream's client asked for the usage chunk


class ModelHandler:
    """Chat completions against SGLang for the one model this gateway serves."""

    def __init__(
        self,
        settings: Settings,
        client: UpstreamClient,
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
        return orjson.dumps(await self.complete(await self.prepare_chat(request, stream=False)))

    async def complete(self, prepared: PreparedChat) -> dict[str, Any]:
        """OpenAI's `chat.completion` for a prepared non-streaming request, decoded."""
        completion = read_completion(await self._complete(prepared.payload), prepared.model)
        if prepared.tools is not None and prepared.tools.offered:
            apply_to_completion(completion, prepared.tools)
        self.record_usage(completion_usage(completion))
        return completion

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
        completion = read_completion(await self._complete(orjson.dumps(payload)), self.model_name)
        self.record_usage(completion_usage(completion))
        return str(completion["choices"][0]["message"].get("content") or "")

    async def _complete(self, payload: bytes) -> bytes:
        """SGLang's whole non-streaming response body."""
        response = await self._send(payload)
        try:
            return await response.read()
        except TransportError as exc:
            raise error_for_transport(exc) from exc
        finally:
            response.close()  # a cancelled read (the client left) closes the connection

    async def stream_chat_completion(self, request: ChatCompletionRequest) -> ChatStream:
        """A stream positioned after its first event, or the error SGLang answered instead."""
        prepared = await self.prepare_chat(request, stream=True)
        return await self.open_stream(prepared, self.chat_chunks(prepared))

    def chat_chunks(self, prepared: PreparedChat) -> ChunkRewriter:
        """The translator of a chat stream: OpenAI's chunks, calls read from the text."""
        tools = prepared.tools
        return ChunkRewriter(
            prepared.model,
            forward_usage=prepared.include_usage,
            transform=ToolCallChunks(tools) if tools is not None and tools.offered else None,
        )

    async def open_stream(self, prepared: PreparedChat, translator: StreamTranslator) -> ChatStream:
        """SGLang's stream for `prepared`, read up to its first frame for the client."""
        started = time.perf_counter()
        response = await self._send(prepared.payload)
        stream = ChatStream(response, SSEDecoder(), translator, self)
        try:
            await stream.read_first()
        except BaseException as exc:
            stream.aclose()
            if isinstance(exc, TransportError):
                raise error_for_transport(exc) from exc
            raise
        self._record_ttft(time.perf_counter() - started)
        return stream

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

    async def prepare_chat(
        self, request: ChatCompletionRequest, *, stream: bool, prepared_messages: int = 0
    ) -> PreparedChat:
        """Check `request`, fit its conversation, prepare its media and build SGLang's body.

        The first `prepared_messages` messages were prepared by the gateway before (a stored
        conversation continued): their media are sent as they are.
        """
        self.check_model(request.model)
        _refuse_audio_output(request)
        check_budget(request, self._settings)
        tools = plan_tools(request)
        max_tokens = self._max_tokens(request)
        constraint = _constraint(request, tools)
        conversation = await self._conversation(request, tools, prepared_messages)
        payload: dict[str, Any] = {
            "model": self._settings.model_name,
            "messages": conversation.messages,
            "max_tokens": max_tokens,
        }
        for name in FORWARDED_FIELDS:
            value = getattr(request, name)
            if value is not None:
                payload[name] = value
        if constraint is not None:
            payload["response_format"] = constraint
        elif request.response_format is not None:
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
        options = request.stream_options
        return PreparedChat(
            orjson.dumps(payload),
            request.model,
            tools,
            conversation,
            include_usage=bool(options is not None and options.include_usage),
        )

    async def _conversation(
        self, request: ChatCompletionRequest, tools: ToolPlan | None, prepared_messages: int
    ) -> Conversation:
        """Gemma-ready messages, with images and audio prepared (cheap checks come first)."""
        if self._media is None:
            return normalise_conversation(request.messages, tools=tools)
        conversation = normalise_conversation(request.messages, self._media.accepted_kinds, tools)
        if prepared_messages:
            conversation.media = [m for m in conversation.media if m.source[0] >= prepared_messages]
        await self._media.prepare(conversation)
        return conversation

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

    async def _send(self, payload: bytes) -> UpstreamResponse:
        """SGLang's 200 response with its body unread, or the mapped error of any other answer."""
        client = self._client
        try:
            sent_at = time.perf_counter()
            try:
                response = await client.request("POST", CHAT_PATH, payload, headers=_JSON_HEADERS)
            except ConnectionClosed as exc:
                # Only a close before any answer and right after sending is a stale keep-alive
                # connection; one after SGLang has been working for a while (a proxy cutting a
                # long generation) is not, and retrying it would run the whole generation again.
                if (
                    not exc.before_response
                    or time.perf_counter() - sent_at > STALE_CONNECTION_WINDOW_SECONDS
                ):
                    raise
                logger.info("upstream connection closed before an answer; retrying once")
                response = await client.request("POST", CHAT_PATH, payload, headers=_JSON_HEADERS)
        except TransportError as exc:
            raise error_for_transport(exc, retry_after=self._settings.retry_after_seconds) from exc
        if response.status == 200:
            return response
        try:
            body = await response.read()
        except TransportError as exc:
            raise error_for_transport(exc) from exc
        finally:
            response.close()
        raise error_for_status(
            response.status, body, retry_after=self._settings.retry_after_seconds
        )


def _refuse_audio_output(request: ChatCompletionRequest) -> None:
    """Gemma 3n hears but does not speak: asking for audio out is a 400, not silent text."""
    if request.modalities is not None and any(m != "text" for m in request.modalities):
        raise UnsupportedContent(
            "Only the 'text' output modality is supported: Gemma 3n on this gateway does not "
            f"produce {', '.join(repr(m) for m in request.modalities if m != 'text')} output.",
            param="modalities",
        )
    if request.audio is not None:
        raise UnsupportedContent(
            "Audio output is not supported: Gemma 3n on this gateway answers in text only.",
            param="audio",
        )


def _constraint(request: ChatCompletionRequest, tools: ToolPlan | None) -> dict[str, Any] | None:
    """SGLang's constraint for the request's tools (`tools.ToolPlan.constraint`), if any.

    When the model must call, a call is the answer, so `response_format` (which shapes text)
    gives way; SGLang takes one constraint per request, so a `regex` or `ebnf` of the client's
    cannot join it. When the model only may call, the client's own constraint of the text wins,
    and strict calls go unconstrained.
    """
    constraint = tools.constraint() if tools is not None else None
    if constraint is None or tools is None:
        return None
    if not tools.forced:
        shaped = request.response_format is not None and request.response_format.type != "text"
        return None if shaped or request.regex or request.ebnf else constraint
    for name in ("regex", "ebnf"):
        if getattr(request, name) is not None:
            raise InvalidRequest(
                f"'{name}' cannot be combined with a tool_choice that requires a call: both "
                "constrain the output.",
                param=name,
            )
    return constraint


def end_streams_for_shutdown(handler: ModelHandler) -> None:
    """End every open stream with an error event and `[DONE]` (the shutdown grace is over)."""
    for stream in list(handler.open_streams):
        stream.end_for_shutdown()
