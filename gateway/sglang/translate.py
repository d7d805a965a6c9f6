"""Translate what SGLang sends into exactly what OpenAI sends: bodies, stream chunks and errors.

SGLang's differences (see ../shared/SGLANG.md) and what becomes of them:

- ids are bare hex: prefixed with `chatcmpl-`; `model` is set to the name the client asked for;
- `matched_stop` in every choice, and null `reasoning_content` / `tool_calls` / `role` in messages
  and deltas: dropped (a non-null `reasoning_content` is kept); so are SGLang's top-level
  `metadata` (`weight_version`) and `usage.reasoning_tokens`;
- `finish_reason: "abort"` (SGLang gave up on the request): an error, not a silently short answer;
- flat error bodies `{"object": "error", "message", "type", "param", "code": <int>}`, plain-string
  auth errors and 500s carrying exception text: typed `errors` with OpenAI's body, status decided by
  `error_for_status`, SGLang's internal text logged and never passed on;
- failures below HTTP (`upstream.py`: refused, timed out, cut short): `error_for_transport`.

Everything works on orjson dicts, once per body or chunk: no pydantic on the streaming path.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import orjson

from gateway.errors import (
    GatewayError,
    RateLimited,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.sglang.upstream import (
    ConnectError,
    ConnectTimeout,
    PoolTimeout,
    ReadTimeout,
    TransportError,
)

logger = logging.getLogger("gateway.upstream")

ID_PREFIX = "chatcmpl-"
DONE_FRAME = b"data: [DONE]\n\n"
_LOG_TEXT_LIMIT = 500
# Seen from real SGLang 0.5.21: its request-validation 400s end with the server-side source
# location ("\n\n  File \"/.../http_server.py\", line 1777, in ..."), and xgrammar's compile
# errors start each reason with "[21:14:39] /project/cpp/regex_converter.cc:83: ". Neither is the
# client's business: the message keeps only SGLang's reason.
_TRACEBACK_MARK = '\n\n  File "'
_XGRAMMAR_LOCATION = re.compile(r"\[\d{2}:\d{2}:\d{2}\] \S+?\.(?:cc|cpp|h):\d+: ")


def openai_id(upstream_id: object) -> str:
    """OpenAI's id form; newer SGLang builds already prefix it, older ones send bare hex."""
    text = str(upstream_id)
    return text if text.startswith(ID_PREFIX) else ID_PREFIX + text


def read_completion(body: bytes, model: str) -> dict[str, Any]:
    """SGLang's non-streaming `chat.completion` body as OpenAI's, decoded."""
    completion = _load_object(body)
    choices = completion.get("choices")
    if "id" not in completion or not isinstance(choices, list):
        raise UpstreamBadResponse("The model server sent a response without id or choices.")
    completion["id"] = openai_id(completion["id"])
    completion["model"] = model
    completion.pop("metadata", None)
    _clean_usage(completion.get("usage"))
    for choice in choices:
        choice.pop("matched_stop", None)
        _raise_if_aborted(choice)
        message = choice.get("message")
        if isinstance(message, dict):
            _drop_nulls(message, ("reasoning_content", "tool_calls"))
            # Required by OpenAI's schema of a message; SGLang leaves them out.
            message.setdefault("refusal", None)
            message.setdefault("annotations", [])
    return completion


def completion_usage(completion: dict[str, Any]) -> dict[str, Any] | None:
    usage = completion.get("usage")
    return usage if isinstance(usage, dict) else None


ChunkTransform = Callable[[dict[str, Any]], bool]


class ChunkRewriter:
    """Rewrites the chunks of one stream; the id is computed once, from the first chunk.

    The gateway always asks SGLang for the final usage chunk (for its metrics and access log);
    `forward_usage` says whether the client asked for it too. Without it the usage chunk is
    dropped and chunks carry no `usage` key, as OpenAI sends them. `transform`, when given, sees
    each cleaned chunk last and may change it in place; it returns False to drop the chunk (the
    tool-call reader, `gateway.chat.tool_stream`, holds text back that way).

    As a `chat_stream.StreamTranslator` it frames each chunk as `data: ...` and ends the stream
    with `data: [DONE]`, after an error event if it failed.
    """

    __slots__ = ("_forward_usage", "_id", "_model", "_transform", "usage")

    def __init__(
        self, model: str, *, forward_usage: bool = True, transform: ChunkTransform | None = None
    ) -> None:
        self._model = model
        self._forward_usage = forward_usage
        self._transform = transform
        self._id: str | None = None
        self.usage: dict[str, Any] | None = None

    def rewrite(self, data: bytes) -> bytes | None:
        """One SGLang chunk as OpenAI's, or None when it is not for the client; raises the
        error an `{"error": ...}` event carries."""
        chunk = self.clean(data)
        return None if chunk is None else orjson.dumps(chunk)

    def clean(self, data: bytes) -> dict[str, Any] | None:
        """`rewrite`, decoded: the chunk as OpenAI's dict, or None."""
        chunk = _load_object(data)
        if "error" in chunk:
            raise error_from_event(chunk["error"])
        if self._id is None:
            self._id = openai_id(chunk.get("id"))
        chunk["id"] = self._id
        chunk["model"] = self._model
        usage = chunk.get("usage")
        if usage:
            _clean_usage(usage)
            self.usage = usage
            if not self._forward_usage and not chunk.get("choices"):
                return None
        if not self._forward_usage:
            chunk.pop("usage", None)
        for choice in chunk.get("choices") or ():
            choice.pop("matched_stop", None)
            _raise_if_aborted(choice)
            delta = choice.get("delta")
            if delta:
                choice["delta"] = {key: value for key, value in delta.items() if value is not None}
        if self._transform is not None and not self._transform(chunk):
            return None
        return chunk

    def translate(self, data: bytes) -> bytes:
        chunk = self.rewrite(data)
        return b"" if chunk is None else b"data: " + chunk + b"\n\n"

    def close(self) -> bytes:
        return DONE_FRAME

    def fail(self, error: GatewayError) -> bytes:
        return stream_error_frame(error) + DONE_FRAME


class SSEDecoder:
    """Splits SGLang's event stream into the `data:` payload of each event, whatever the read
    boundaries. `[DONE]` is returned like any payload; comments and keep-alives are skipped."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    @property
    def pending(self) -> bytes:
        """Bytes of an event not complete yet."""
        return self._buffer

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer + data if self._buffer else data
        if b"\r" in buffer:  # SGLang uses "\n"; accept any line ending the SSE spec allows
            held = b""
            if buffer.endswith(b"\r"):  # may be half of a "\r\n" split across reads
                buffer, held = buffer[:-1], b"\r"
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            *events, rest = buffer.split(b"\n\n")
            self._buffer = rest + held
        else:
            *events, self._buffer = buffer.split(b"\n\n")
        payloads = []
        for event in events:
            if event[:6] == b"data: " and b"\n" not in event:  # SGLang's one-line events
                payloads.append(event[6:])
                continue
            data_lines = [line[5:] for line in event.split(b"\n") if line[:5] == b"data:"]
            if data_lines:
                payloads.append(
                    b"\n".join(line[1:] if line[:1] == b" " else line for line in data_lines)
                )
        return payloads


def error_for_status(status: int, body: bytes, *, retry_after: int) -> GatewayError:
    """The error to answer for a non-200 response from SGLang."""
    message, param = _upstream_message(body)
    return _error_for_code(status, message, param, retry_after=retry_after)


def error_from_event(error: object, *, retry_after: int = 5) -> GatewayError:
    """The error carried by an `{"error": {...}}` event in SGLang's stream."""
    if not isinstance(error, dict):
        return UpstreamBadResponse("The model server sent a malformed error event.")
    code = error.get("code")
    status = code if isinstance(code, int) and 400 <= code <= 599 else 500
    message = error.get("message")
    text = message if isinstance(message, str) else None
    param = error.get("param") if isinstance(error.get("param"), str) else None
    return _error_for_code(status, text, param, retry_after=retry_after)


def error_for_transport(exc: TransportError, *, retry_after: int = 5) -> UpstreamError:
    """The error to answer when talking to SGLang failed below HTTP (`upstream.py`'s
    exceptions), the most specific first."""
    if isinstance(exc, PoolTimeout):
        return UpstreamUnavailable(
            "Too many requests are waiting for the model server; retry later.",
            retry_after=retry_after,
        )
    if isinstance(exc, (ConnectError, ConnectTimeout)):
        return UpstreamUnavailable(
            "The model server is not reachable; it may still be starting.",
            retry_after=retry_after,
        )
    if isinstance(exc, ReadTimeout):
        return UpstreamTimeout("The model server did not answer in time.")
    logger.warning("upstream transport error: %r", exc)
    return UpstreamBadResponse("The connection to the model server failed mid-response.")


def stream_error_frame(error: GatewayError) -> bytes:
    """An error as a server-sent event, which the `openai` SDK raises as `APIError`."""
    return b"data: " + orjson.dumps(error.body()) + b"\n\n"


def _error_for_code(
    status: int, message: str | None, param: str | None, *, retry_after: int
) -> GatewayError:
    if status in (401, 403):
        return UpstreamBadResponse(
            "The model server refused the gateway's credentials; check SGLANG_API_KEY."
        )
    if status == 404:
        return UpstreamBadResponse(
            "The model server has no such endpoint; check that SGLANG_URL points at SGLang."
        )
    if status == 429:
        return RateLimited(
            message or "The model server is overloaded; retry later.",
            headers={"Retry-After": str(retry_after)},
        )
    if status == 503:
        if message:
            logger.warning("model server unavailable: %s", message[:_LOG_TEXT_LIMIT])
        return UpstreamUnavailable(
            "The model server is not ready or is overloaded; retry later.", retry_after=retry_after
        )
    if 400 <= status < 500:
        return UpstreamRejected(
            _public_reason(message) or f"The model server rejected the request (HTTP {status}).",
            status_code=status,
            param=param,
        )
    if message:
        logger.warning("model server error %d: %s", status, message[:_LOG_TEXT_LIMIT])
    if status == 500:
        return UpstreamFailed("The model server failed while generating a response.")
    return UpstreamBadResponse(f"The model server answered with an unexpected HTTP {status}.")


def _public_reason(message: str | None) -> str | None:
    """SGLang's reason for refusing a request, without its server-side source locations."""
    if message is None:
        return None
    reason = message.partition(_TRACEBACK_MARK)[0]
    return _XGRAMMAR_LOCATION.sub("", reason).strip() or None


def _upstream_message(body: bytes) -> tuple[str | None, str | None]:
    """Message and param of any SGLang error body: flat, OpenAI-wrapped, or a plain string."""
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text or None), None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        payload = payload["error"]
    if isinstance(payload, dict):
        message = payload.get("message") or payload.get("error") or payload.get("detail")
        param = payload.get("param")
        return (
            message if isinstance(message, str) else None,
            param if isinstance(param, str) else None,
        )
    return None, None


def _load_object(data: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamBadResponse("The model server sent a response that is not JSON.") from None
    if not isinstance(value, dict):
        raise UpstreamBadResponse("The model server sent a JSON response that is not an object.")
    return value


def _raise_if_aborted(choice: dict[str, Any]) -> None:
    if choice.get("finish_reason") == "abort":
        raise UpstreamFailed("The model server aborted the generation before it finished.")


def _clean_usage(usage: object) -> None:
    if isinstance(usage, dict):
        usage.pop("reasoning_tokens", None)  # OpenAI nests it in completion_tokens_details


def _drop_nulls(mapping: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in mapping and mapping[key] is None:
            del mapping[key]
