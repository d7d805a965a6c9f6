"""A fake SGLang server for the gateway's tests: this module owns `FakeSGLang`.

It is a raw ASGI app served by uvicorn on 127.0.0.1 in a background thread with its own event
loop, so it speaks real HTTP (keep-alive, chunked SSE, dropped sockets) to the gateway's real
`httpx` client. It copies what the gateway has to cope with in a real SGLang 0.5.x serving
Gemma 3n (see `/work/shared/SGLANG.md` and, for the shapes, SGLang's
`srt/entrypoints/http_server.py`, `openai/protocol.py`, `openai/serving_chat.py`,
`openai/sse_utils.py`).

Checked against real SGLang 0.5.21 (CPU, tiny Gemma 3n; tests/real_sglang): the statuses,
content types and body shapes of the answers in `tests/fixtures/real_sglang_0.5.21.json` are
asserted for this fake in tests/test_fake_sglang.py. What that check changed here: the
template's "roles must alternate" error has type "BadRequest"; the LoRA refusal's text; empty
`messages` and prompt + max_tokens over the context are 400s; `metadata.weight_versions`;
/model_info's full key set; chunks in the compact sse_utils form by default, with no
cache-control header; regex/EBNF/JSON-schema grammars that do not compile are 400s; and a WAV
clip over 30 s crashes the server (its scheduler dies: the connection drops, the port closes).


* warm-up: `state = "loading"` answers 503 with an empty body on every path;
* `/health` and `/health_generate` are slow (a 1-token generation) and counted;
* flat error bodies ``{"object": "error", "message", "type", "param", "code"}``; schema errors
  are 400 with type "Bad Request" (FastAPI's 422 remapped), handler errors type "BadRequestError",
  the chat template's errors type "BadRequest";
* `model` is echoed, never checked, except that a ``:`` means a LoRA adapter (400);
* Gemma 3n's chat template: optional leading system turn, then strict user/assistant turns;
* media are only ever `data:` URIs here (SGLang itself would fetch URLs and read local paths);
* bare 32-hex ids, `matched_stop` and `reasoning_content` in every choice;
* a stream's status line and headers leave only once the first token exists (after `ttft`);
* client disconnects are noticed at once, recorded, and stop the generation;
* faults: mid-stream error events, overload, 500 with a traceback, garbage, truncated bodies
  (before the first token or mid-stream), hangs, killed connections, aborted generations, context
  overflow; and `reset_reused_connections`, a keep-alive connection reset just as it is reused;
* `start_together`: requests held until a whole batch of them is in flight (load tests);
* constrained decoding: a `response_format` of type `json_schema` (or `json_object`) makes the
  reply valid JSON for that schema, as SGLang's grammar backend (xgrammar) would: the scripted
  `reply_tokens` when they already match it, else the schema's first instance (`_instance`);
  an invalid schema is a 400.

Knobs are plain attributes read at the start of each chat request; records are read from the test
thread under a lock. Nothing here is imported by the service.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import socket
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import orjson
import uvicorn

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MODEL_PATH = "google/gemma-3n-E4B-it"
CONTEXT_LENGTH = 32768
DEFAULT_REPLY_TOKENS = ("Hello", " from", " the", " fake", " SGLang", ".")
BASE_PROMPT_TOKENS = 10  # chat-template scaffolding: <bos>, turn markers
IMAGE_PROMPT_TOKENS = 260  # 256 soft tokens plus the image start/end markers
IMAGE_SOFT_TOKENS = 256
AUDIO_TOKENS = 188  # fixed per clip: 30 s at 6.25 tokens/s
MAX_CLIP_SECONDS = 30.0  # a longer clip kills SGLang 0.5.21's scheduler (numel overflow)
END_OF_TURN_ID = 106  # Gemma's <end_of_turn>: `matched_stop` of a natural stop
HEALTH_GENERATE_SECONDS = 0.2
BATCH_WAIT_LIMIT = 30.0  # seconds a request waits for `start_together` before going alone
FAULTS = frozenset(
    {
        "error_mid_stream",
        "overload",
        "error_500",
        "garbage",
        "garbage_mid_stream",
        "truncated",
        "truncated_mid_stream",
        "hang",
        "kill_mid_stream",
        "abort",
        "context_overflow",
    }
)
JSON_SCHEMA_TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean", "null"})
AUTH_EXEMPT_PATHS = frozenset({"/health", "/health_generate", "/ready", "/metrics"})
KNOWN_ROLES = frozenset(
    {"system", "user", "assistant", "tool", "function", "developer", "latest_reminder"}
)
ROLES_MUST_ALTERNATE = "Conversation roles must alternate user/assistant/user/assistant/..."
# /model_info's "embedding" block as SGLang 0.5.21 reports it for a generative model (trimmed list).
MODEL_INFO_EMBEDDING: dict[str, Any] = {
    "family": "none",
    "task": "none",
    "execution": "none",
    "attention": "none",
    "pooling": "model_defined",
    "normalize": False,
    "postprocessor": "none",
    "tokenizer_special_tokens": "model_default",
    "supports_dimensions": False,
    "supports_token_embeddings": False,
    "supports_multimodal": False,
    "requires_embedding_flag": False,
    "auto_enable_embedding": False,
    "bcg_eligibility": "disabled",
    "safe_disable_kv_cache": False,
    "safe_disable_radix_cache": False,
    "safe_disable_chunked_prefill": False,
    "enabled": False,
    "matryoshka_dimensions": [],
    "bcg": {
        "prefill_backend": "disabled",
        "enabled": False,
        "capture_token_budget": 2048,
        "capture_batch_sizes": [4, 8, 16],
    },
    "cache": {
        "kv_cache_disabled": False,
        "radix_cache_disabled": False,
        "chunked_prefill_disabled": False,
    },
}
FAKE_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/sgl-workspace/sglang/python/sglang/srt/managers/tokenizer_manager.py", '
    "line 512, in generate_request\n"
    '    raise ValueError("boom")\n'
    "ValueError: boom"
)
_SSE_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it (headers with lower-case names)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any


@dataclass(frozen=True)
class _Chat:
    """The parts of a valid chat request that shape the answer."""

    model: str
    stream: bool
    n: int
    stops: frozenset[str]
    limit: int | None
    include_usage: bool
    prompt_tokens: int
    images: int
    audios: int
    schema: dict[str, Any] | None = None  # the JSON Schema decoding is constrained to


@dataclass(frozen=True)
class _Plan:
    """The knobs as they were when a chat request started."""

    tokens: tuple[str, ...]
    ttft: float
    token_delay: float
    generation_time: float
    fault: str | None
    fault_after_tokens: int
    compact_chunks: bool
    start_together: int


class _BadRequest(Exception):
    """A request SGLang refuses; carries the flat error body."""

    def __init__(self, message: str, error_type: str = "BadRequestError") -> None:
        super().__init__(message)
        self.body = _error_body(message, error_type, 400)


class _Crash(Exception):
    """A request that kills the real server (a clip over 30 s): drop it, then stop serving."""


class _DeliberateDrop(Exception):
    """Raised inside the app after the response started: uvicorn then closes the socket."""


class _QuietDrops(logging.Filter):
    """Keeps uvicorn from logging a traceback for each deliberate `_DeliberateDrop`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _DeliberateDrop))


_QUIET_DROPS = _QuietDrops()


def _error_body(message: str, error_type: str, code: int) -> dict[str, Any]:
    return {"object": "error", "message": message, "type": error_type, "param": None, "code": code}


def _schema_error(message: str) -> _BadRequest:
    # FastAPI's RequestValidationError, remapped by SGLang from 422 to 400.
    return _BadRequest(message, "Bad Request")


def _looks_like_image(data: bytes) -> bool:
    magics = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")
    return data.startswith(magics) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _looks_like_audio(data: bytes) -> bool:
    wav = data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    mp3_frame = len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0
    return wav or mp3_frame or data.startswith((b"ID3", b"fLaC", b"OggS"))


def _wav_seconds(data: bytes) -> float | None:
    """Duration of a PCM WAV from its header, or None if it is not one."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset = 12
    byte_rate = 0
    while offset + 8 <= len(data):
        chunk, size = (
            data[offset : offset + 4],
            struct.unpack("<I", data[offset + 4 : offset + 8])[0],
        )
        if chunk == b"fmt " and size >= 12:
            byte_rate = struct.unpack("<I", data[offset + 16 : offset + 20])[0]
        if chunk == b"data":
            return size / byte_rate if byte_rate else None
        offset += 8 + size + (size & 1)
    return None


def _load_media(payload: str, kind: str, is_uri: bool = True) -> None:
    """Decode a media payload as SGLang would, failing the same way; never fetches anything."""
    if is_uri:
        if not payload.startswith("data:"):
            raise _BadRequest(
                f"Error while loading data: the fake SGLang only loads data: URIs, got "
                f"{payload[:40]!r} (a real SGLang would fetch it or read it from its disk)"
            )
        payload = payload.partition(",")[2]
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _BadRequest(f"Error while loading data: invalid base64 {kind}: {exc}") from exc
    looks_right = _looks_like_image(data) if kind == "image" else _looks_like_audio(data)
    if not looks_right:
        raise _BadRequest(f"Error while loading data: cannot decode the {kind}")
    seconds = _wav_seconds(data) if kind == "audio" else None
    if seconds is not None and seconds > MAX_CLIP_SECONDS:
        raise _Crash(f"RuntimeError: numel: integer multiplication overflow ({seconds:.1f} s clip)")


def _check_grammars(request: dict[str, Any]) -> None:
    """SGLang compiles the request's grammar (xgrammar) before queueing it; a bad one is a 400."""
    regex = request.get("regex")
    if isinstance(regex, str):
        try:
            re.compile(regex)
        except re.error as exc:
            raise _BadRequest(
                f"Failed to compile regex grammar: Regex parsing error: {exc}"
            ) from exc
    ebnf = request.get("ebnf")
    if isinstance(ebnf, str) and not re.search(r"root\s*::=\s*\S", ebnf):
        raise _BadRequest("Failed to compile ebnf grammar: EBNF parser error: Expect element")
    response_format = request.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        kind = schema.get("type") if isinstance(schema, dict) else None
        if kind is not None and kind not in JSON_SCHEMA_TYPES:
            raise _BadRequest(f'Failed to compile json grammar: Unsupported type "{kind}"')


def _optional_int(request: dict[str, Any], key: str) -> int | None:
    value = request.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise _schema_error(f"{key}: Input should be a valid integer")
    return value


def _scan_content(content: Any, role: str, media: list[tuple[str, str, bool]]) -> int:
    """Check one message's content against SGLang's schema; count its words, collect its media."""
    if isinstance(content, str):
        return len(content.split())
    if content is None and role != "user":  # only the user message requires content
        return 0
    if not isinstance(content, list):
        raise _schema_error("('body', 'messages', 'content'): Input should be a string or list")
    words = 0
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        body = part.get(kind) if isinstance(part, dict) and isinstance(kind, str) else None
        if kind == "text" and isinstance(body, str):
            words += len(body.split())
        elif kind in ("image_url", "audio_url") and isinstance(body, dict):
            if not isinstance(body.get("url"), str):
                raise _schema_error(f"('body', 'messages', '{kind}', 'url'): Field required")
            media.append((body["url"], "image" if kind == "image_url" else "audio", True))
        elif kind == "input_audio" and isinstance(body, dict):
            if body.get("format") not in ("wav", "mp3") or not isinstance(body.get("data"), str):
                raise _schema_error("input_audio needs a base64 'data' and a 'format' of wav|mp3")
            media.append((body["data"], "audio", False))
        elif kind != "video_url":  # video parts pass the schema; Gemma 3n's processor drops them
            raise _schema_error(
                f"Input tag {kind!r} found using 'type' does not match any of the expected tags: "
                "'text', 'image_url', 'video_url', 'audio_url', 'input_audio'"
            )
    return words


def _parse_chat(body: bytes, headers: dict[str, str], image_ok: bool, audio_ok: bool) -> _Chat:
    """Validate a chat request in SGLang's order: schema, LoRA, template, media, context."""
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise _schema_error(
            "[{'loc': ['header', 'content-type'], 'msg': \"Unsupported Media Type: Only "
            "'application/json' is allowed\", 'type': 'value_error'}]"
        )
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _schema_error(
            f"[{{'type': 'json_invalid', 'msg': 'JSON decode error: {exc}'}}]"
        ) from exc
    if not isinstance(request, dict):
        raise _schema_error("Input should be a valid dictionary or object")
    messages = request.get("messages")
    if not isinstance(messages, list):
        raise _schema_error("('body', 'messages'): Field required or not a valid list")
    model = request.get("model", "default")
    if not isinstance(model, str):
        raise _schema_error("('body', 'model'): Input should be a valid string")
    n = _optional_int(request, "n")
    n = 1 if n is None else n
    if n < 1:
        raise _BadRequest("n must be at least 1")
    limit = _optional_int(request, "max_completion_tokens")
    if limit is None:
        limit = _optional_int(request, "max_tokens")
    if limit is not None and limit < 0:
        raise _BadRequest(f"max_new_tokens must be at least 0, got {limit}.")
    stop = request.get("stop")
    if isinstance(stop, str):
        stops = frozenset({stop})
    elif stop is None:
        stops = frozenset()
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = frozenset(stop)
    else:
        raise _schema_error("('body', 'stop'): Input should be a valid string or list")
    stream_options = request.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise _schema_error("('body', 'stream_options'): Input should be a valid dictionary")

    roles: list[str] = []
    words = 0
    media: list[tuple[str, str, bool]] = []  # (payload, kind, is_uri), loaded after the template
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _schema_error("('body', 'messages'): each message needs a string 'role'")
        role = message["role"].lower()
        if role not in KNOWN_ROLES:
            raise _schema_error(f"'role' must be one of {sorted(KNOWN_ROLES)} (case-insensitive).")
        roles.append(role)
        words += _scan_content(message.get("content"), role, media)

    if not messages:
        raise _BadRequest("Messages cannot be empty.")
    if ":" in model:
        adapter = model.split(":", 1)[1]
        raise _BadRequest(
            f"LoRA adapter '{adapter}' was requested, but LoRA is not enabled. Please launch the "
            "server with --enable-lora flag and preload adapters using --lora-paths or "
            "/load_lora_adapter endpoint."
        )
    # Gemma 3n's template: a leading system turn is folded into the first user turn; every other
    # turn must alternate user/assistant. (The real Jinja check only compares parity with "user",
    # so e.g. [user, tool] would slip through; the fake refuses every foreign role.)
    turns = roles[1:] if roles[:1] == ["system"] else roles
    for index, role in enumerate(turns):
        if role != ("user" if index % 2 == 0 else "assistant"):
            raise _BadRequest(ROLES_MUST_ALTERNATE, "BadRequest")
    for payload, kind, is_uri in media:
        if not (image_ok if kind == "image" else audio_ok):
            raise _BadRequest(f"The model does not support {kind} input.")
        _load_media(payload, kind, is_uri)
    images = sum(kind == "image" for _, kind, _ in media)
    audios = len(media) - images
    prompt_tokens = (
        BASE_PROMPT_TOKENS + words + IMAGE_PROMPT_TOKENS * images + AUDIO_TOKENS * audios
    )
    if prompt_tokens >= CONTEXT_LENGTH:
        raise _BadRequest(_context_overflow(prompt_tokens))
    if limit is not None and prompt_tokens + limit > CONTEXT_LENGTH:
        raise _BadRequest(
            "Requested token count exceeds the model's maximum context length of "
            f"{CONTEXT_LENGTH} tokens. You requested a total of {prompt_tokens + limit} tokens: "
            f"{prompt_tokens} tokens from the input messages and {limit} tokens for the "
            "completion. Please reduce the number of tokens in the input messages or the "
            "completion to fit within the limit."
        )
    _check_grammars(request)
    schema = _constraint_schema(request.get("response_format"))
    return _Chat(
        schema=schema,
        model=model,
        stream=bool(request.get("stream")),
        n=n,
        stops=stops,
        limit=limit,
        include_usage=bool(stream_options and stream_options.get("include_usage")),
        prompt_tokens=prompt_tokens,
        images=images,
        audios=audios,
    )


def _context_overflow(tokens: int) -> str:
    return (
        f"The input ({tokens} tokens) is longer than the model's context length "
        f"({CONTEXT_LENGTH} tokens)."
    )


def _constraint_schema(response_format: Any) -> dict[str, Any] | None:
    """The JSON Schema a `response_format` constrains decoding to, checked as SGLang would."""
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise _schema_error("('body', 'response_format', 'json_schema', 'schema'): Field required")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise _BadRequest(f"Failed to compile json grammar: {exc.message}") from exc
    return schema


def _constrained_tokens(tokens: tuple[str, ...], schema: dict[str, Any]) -> tuple[str, ...]:
    """What a grammar-constrained generation emits: the scripted reply if it fits, else the
    schema's first instance, in pieces of a few characters (as tokens would come)."""
    try:
        if jsonschema.Draft202012Validator(schema).is_valid(orjson.loads("".join(tokens))):
            return tokens
    except orjson.JSONDecodeError:
        pass
    text = orjson.dumps(_instance(schema, schema)).decode()
    return tuple(text[i : i + 3] for i in range(0, len(text), 3))


def _instance(schema: Any, root: dict[str, Any]) -> Any:
    """The first value `schema` admits, the way a grammar walks it: first branches, every
    property in order, one item per array."""
    if not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        target: Any = root
        for key in schema["$ref"].removeprefix("#/").split("/"):
            target = target[key]
        return _instance(target, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for branches in ("anyOf", "oneOf", "allOf"):
        if branches in schema:
            return _instance(schema[branches][0], root)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: _instance(sub, root) for name, sub in properties.items()}
    if kind == "array":
        count = max(1, schema.get("minItems", 0)) if schema.get("maxItems") != 0 else 0
        return [_instance(schema.get("items", {}), root) for _ in range(count)]
    return {"string": "fake", "integer": 0, "number": 0.5, "boolean": True}.get(kind)


def _generate(plan: _Plan, chat: _Chat) -> tuple[list[str], str, str | int | None]:
    """The tokens one choice emits, its finish_reason and its matched_stop."""
    if plan.fault == "abort":
        return list(plan.tokens[: plan.fault_after_tokens]), "abort", None
    tokens = plan.tokens if chat.schema is None else _constrained_tokens(plan.tokens, chat.schema)
    emitted: list[str] = []
    for token in tokens:
        if token in chat.stops:
            return emitted, "stop", token
        if chat.limit is not None and len(emitted) >= chat.limit:
            return emitted, "length", None
        emitted.append(token)
    if chat.limit is not None and len(emitted) >= chat.limit:
        return emitted, "length", None  # the end-of-turn token would have been one too many
    return emitted, "stop", END_OF_TURN_ID


def _usage(chat: _Chat, completion_tokens: int) -> dict[str, Any]:
    details: dict[str, int] | None = None
    if chat.images or chat.audios:
        details = {"cached_tokens": 0}
        if chat.images:
            details["image_tokens"] = IMAGE_SOFT_TOKENS * chat.images
        if chat.audios:
            details["audio_tokens"] = AUDIO_TOKENS * chat.audios
    return {
        "prompt_tokens": chat.prompt_tokens,
        "total_tokens": chat.prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": details,
        "reasoning_tokens": 0,
    }


def _chunk(
    head: dict[str, Any],
    index: int,
    delta: dict[str, Any],
    compact: bool,
    finish_reason: str | None = None,
    matched_stop: str | int | None = None,
) -> dict[str, Any]:
    """One chat.completion.chunk for one choice, keys as SGLang serialises them."""
    if compact:  # sse_utils.StreamDelta / StreamChunk: msgspec structs with omit_defaults
        delta = {"reasoning_content": None, **{k: v for k, v in delta.items() if v is not None}}
    else:  # pydantic DeltaMessage / ChatCompletionStreamResponse.model_dump_json: every key
        delta = {
            "role": None,
            "content": None,
            "reasoning_content": None,
            "tool_calls": None,
            **delta,
        }
    choice = {"index": index, "delta": delta, "logprobs": None}
    choice |= {"finish_reason": finish_reason, "matched_stop": matched_stop}
    return (
        {**head, "choices": [choice]} if compact else {**head, "choices": [choice], "usage": None}
    )


async def _wait_for_batch(started: asyncio.Event, gone: asyncio.Event) -> bool:
    """Wait until the batch starts (or BATCH_WAIT_LIMIT passes); True if the client went away."""
    waits = {asyncio.ensure_future(started.wait()), asyncio.ensure_future(gone.wait())}
    await asyncio.wait(waits, timeout=BATCH_WAIT_LIMIT, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    return gone.is_set()


async def _pause(seconds: float, gone: asyncio.Event) -> bool:
    """Sleep, waking early if the client goes away; True if it went away."""
    if seconds > 0 and not gone.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await gone.wait()
    return gone.is_set()


async def _reset(connection: Any, receive: Receive) -> None:
    """Reset `connection` (RST: SO_LINGER 0, then close) without answering, and wait until
    uvicorn has noticed, so that it neither logs nor tries to send a 500 of its own."""
    transport = connection.transport
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    while (await receive())["type"] != "http.disconnect":
        pass


async def _respond(
    send: Send, status: int, body: bytes = b"", content_type: bytes | None = None
) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _respond_json(send: Send, status: int, payload: Any) -> None:
    await _respond(send, status, orjson.dumps(payload), b"application/json")


async def _send_event(send: Send, payload: Any) -> None:
    data = b"data: " + orjson.dumps(payload) + b"\n\n"
    await send({"type": "http.response.body", "body": data, "more_body": True})


class FakeSGLang:
    """SGLang's HTTP face with Gemma 3n behind it, quirks included; see the module docstring."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        served_model_name: str = MODEL_PATH,
        has_image_understanding: bool = True,
        has_audio_understanding: bool = True,
    ) -> None:
        self.api_key = api_key
        self.served_model_name = served_model_name
        self.has_image_understanding = has_image_understanding
        self.has_audio_understanding = has_audio_understanding
        self.port = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._stopping = False
        self._startup_error: BaseException | None = None
        self._active = 0
        self.crashes = 0  # requests that would have killed the real server (clip over 30 s)
        self._used_connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.reset()

    # -- knobs ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Clear the records and put every knob back to its default."""
        with self._lock:
            self._requests: list[RecordedRequest] = []
            self._disconnects = 0
            self._health_calls = 0
            self._connection_resets = 0
            self._state = "ready"
            self._fault: str | None = None
        self.reply_tokens: list[str] = list(DEFAULT_REPLY_TOKENS)
        self.ttft = 0.0
        self.token_delay = 0.0
        self.generation_time = 0.0
        self.fault_after_tokens = 2
        self.fault_count: int | None = None
        # The next N chat requests that arrive on a keep-alive connection which already carried
        # a request are answered by resetting that connection (RST, no response): what a client
        # sees when SGLang's uvicorn closes an idle connection (5 s) just as the client reuses it.
        self.reset_reused_connections = 0
        # Chunk shape: True = sse_utils era, what 0.5.21 sends (role/content left out when null,
        # no "usage" key outside the usage chunk); False = pydantic era (every key, "usage": null).
        self.compact_chunks = True
        # Hold every chat request before its first token until this many are in flight at once,
        # then let them all go, as one batch in SGLang's scheduler (0: no holding). Proves that
        # so many requests really were open together; bounded by BATCH_WAIT_LIMIT.
        self.start_together = 0
        self._batch_started = asyncio.Event()

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        if value not in ("ready", "loading"):
            raise ValueError(f"state must be 'ready' or 'loading', not {value!r}")
        self._state = value

    @property
    def fault(self) -> str | None:
        return self._fault

    @fault.setter
    def fault(self, value: str | None) -> None:
        if value is not None and value not in FAULTS:
            raise ValueError(f"unknown fault {value!r}; known: {sorted(FAULTS)}")
        self._fault = value

    # -- records ----------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [
            r.json
            for r in self.requests
            if r.method == "POST" and r.path == "/v1/chat/completions" and isinstance(r.json, dict)
        ]

    @property
    def disconnects(self) -> int:
        with self._lock:
            return self._disconnects

    @property
    def active_chat_requests(self) -> int:
        with self._lock:
            return self._active

    @property
    def health_generate_calls(self) -> int:
        with self._lock:
            return self._health_calls

    @property
    def connection_resets(self) -> int:
        """Connections reset by `reset_reused_connections` (each after recording its request)."""
        with self._lock:
            return self._connection_resets

    def wait_for_disconnect(self, timeout: float) -> bool:
        """True once a chat request's client went away before its response was complete."""
        with self._changed:
            return self._changed.wait_for(lambda: self._disconnects > 0, timeout)

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("FakeSGLang.url is known only after start()")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen on 127.0.0.1 (the same port again after a stop()) and serve in a thread."""
        if self._thread is not None:
            raise RuntimeError("FakeSGLang is already running")
        logger = logging.getLogger("uvicorn.error")
        if _QUIET_DROPS not in logger.filters:
            logger.addFilter(_QUIET_DROPS)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._used_connections = weakref.WeakSet()
        self._batch_started = asyncio.Event()  # an Event binds to the loop that first waits
        config = uvicorn.Config(
            self._asgi,
            interface="asgi3",
            lifespan="off",
            log_level="warning",
            log_config=None,  # leave the test process's logging configuration alone
            access_log=False,
            timeout_keep_alive=5,  # SGLang runs uvicorn with its default keep-alive
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        self._server, self._stopping, self._startup_error = server, False, None
        self._thread = threading.Thread(
            target=self._run, args=(server, sock), name=f"fake-sglang-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._thread.join(timeout=1)
                self._thread = None
                sock.close()
                raise RuntimeError("FakeSGLang did not start") from self._startup_error
            time.sleep(0.005)

    def stop(self) -> None:
        """Close the listener, drop every connection (RST) and wait for the thread to end."""
        thread, loop, stop_requested = self._thread, self._loop, self._stop_requested
        if thread is None:
            return
        self._stopping = True  # disconnects caused by the stop are not the client's doing
        if loop is not None and stop_requested is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop_requested.set)
        thread.join(timeout=10)
        self._thread = self._server = self._loop = self._stop_requested = None

    def __enter__(self) -> FakeSGLang:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            asyncio.run(self._serve(server, sock))
        except BaseException as exc:  # reported by start(), which is waiting for `started`
            self._startup_error = exc
        finally:
            sock.close()

    async def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = stop_requested = asyncio.Event()
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        waiting = asyncio.create_task(stop_requested.wait())
        await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if not serving.done():
            # Stop listening first so nothing new arrives, then drop every open connection:
            # in-flight handlers see http.disconnect and end, so uvicorn's shutdown is quick.
            for listener in server.servers:
                listener.close()
            for connection in list(server.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.abort()
            server.should_exit = True
        await serving

    # -- bookkeeping ------------------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _connection(self, scope: MutableMapping[str, Any]) -> Any:
        """uvicorn's protocol object (one per TCP connection) that carries this request."""
        server = self._server
        client = scope.get("client")
        if server is None or client is None:
            return None
        for connection in list(server.server_state.connections):
            if getattr(connection, "client", None) == tuple(client):
                return connection
        return None

    def _take_reset(self) -> bool:
        with self._lock:
            if self.reset_reused_connections <= 0:
                return False
            self.reset_reused_connections -= 1
            self._connection_resets += 1
            return True

    def _take_plan(self) -> _Plan:
        with self._lock:
            fault = self._fault
            if fault is not None and self.fault_count is not None:
                if self.fault_count > 0:
                    self.fault_count -= 1
                else:
                    fault = None
        return _Plan(
            tokens=tuple(self.reply_tokens),
            ttft=self.ttft,
            token_delay=self.token_delay,
            generation_time=self.generation_time,
            fault=fault,
            fault_after_tokens=self.fault_after_tokens,
            compact_chunks=self.compact_chunks,
            start_together=self.start_together,
        )

    # -- the ASGI app -----------------------------------------------------------------------

    async def _asgi(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        parsed: Any = None
        with contextlib.suppress(ValueError):
            parsed = orjson.loads(body) if body else None
        method, path = scope["method"], scope["path"]
        self._record(RecordedRequest(method, path, headers, bytes(body), parsed))
        connection = self._connection(scope)
        reused = connection is not None and connection in self._used_connections
        if connection is not None:
            self._used_connections.add(connection)

        if path in ("/health", "/health_generate"):
            with self._lock:
                self._health_calls += 1
        if self._state == "loading":
            await _respond(send, 503)
            return
        if (
            self.api_key is not None
            and path not in AUTH_EXEMPT_PATHS
            and headers.get("authorization") != f"Bearer {self.api_key}"
        ):
            await _respond_json(send, 401, {"error": "Unauthorized"})
            return
        if path in ("/health", "/health_generate"):
            await asyncio.sleep(HEALTH_GENERATE_SECONDS)
            await _respond(send, 200)
        elif path == "/ready":
            await _respond(send, 200)
        elif path == "/metrics":
            await _respond(send, 200, b"# fake SGLang metrics\n", b"text/plain; version=0.0.4")
        elif path in ("/model_info", "/get_model_info"):
            await _respond_json(send, 200, self._model_info())
        elif path == "/v1/models":
            await _respond_json(send, 200, self._model_list())
        elif path == "/v1/chat/completions":
            if method != "POST":
                await _respond_json(send, 405, {"detail": "Method Not Allowed"})
                return
            if reused and self._take_reset():
                await _reset(connection, receive)
                return
            await self._chat(receive, send, bytes(body), headers)
        else:
            await _respond_json(send, 200, {})  # an admin or native endpoint: recorded, inert

    def _model_info(self) -> dict[str, Any]:
        return {
            "model_path": MODEL_PATH,
            "served_model_name": self.served_model_name,
            "tokenizer_path": MODEL_PATH,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "load_format": "auto",
            "reasoning_parser": None,
            "tool_call_parser": None,
            "disaggregation_mode": "null",
            "has_image_understanding": self.has_image_understanding,
            "has_audio_understanding": self.has_audio_understanding,
            "model_type": "gemma3n",
            "architectures": ["Gemma3nForConditionalGeneration"],
            "embedding": MODEL_INFO_EMBEDDING,
        }

    def _model_list(self) -> dict[str, Any]:
        card = {
            "id": self.served_model_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "sglang",
            "root": MODEL_PATH,
            "parent": None,
            "max_model_len": CONTEXT_LENGTH,
        }
        return {"object": "list", "data": [card]}

    async def _chat(
        self, receive: Receive, send: Send, body: bytes, headers: dict[str, str]
    ) -> None:
        gone = asyncio.Event()
        finished = False

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        def finish(client_left: bool) -> None:
            # Counted off before the last byte leaves, and together with the disconnect, so a
            # test that has read the whole answer (or waited for the disconnect) sees 0 active.
            nonlocal finished
            if finished:
                return
            finished = True
            with self._changed:
                self._active -= 1
                if client_left and not self._stopping:  # a stop() is not the client leaving
                    self._disconnects += 1
                self._changed.notify_all()

        async def send_and_finish(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                finish(client_left=False)
            await send(message)

        with self._lock:
            self._active += 1
            if self.start_together and self._active >= self.start_together:
                self._batch_started.set()
        watcher = asyncio.create_task(watch_disconnect())
        try:
            finish(await self._answer_chat(send_and_finish, body, headers, gone))
        finally:
            watcher.cancel()
            finish(client_left=False)  # a deliberate drop: uvicorn closes the socket next

    async def _answer_chat(
        self, send: Send, body: bytes, headers: dict[str, str], gone: asyncio.Event
    ) -> bool:
        """Answer one chat request; True if the client went away before the answer was done."""
        try:
            chat = _parse_chat(
                body, headers, self.has_image_understanding, self.has_audio_understanding
            )
        except _BadRequest as exc:
            await _respond_json(send, 400, exc.body)
            return False
        except _Crash:
            self.crashes += 1
            if self._stop_requested is not None:  # the whole server goes, as SGLang's does:
                self._stopping = True  # every connection is dropped, this one included
                self._stop_requested.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await gone.wait()
            return False
        plan = self._take_plan()
        if plan.fault == "context_overflow":
            overflow = _error_body(_context_overflow(40000), "BadRequestError", 400)
            await _respond_json(send, 400, overflow)
            return False
        if plan.fault == "error_500":
            await _respond_json(send, 500, _error_body(FAKE_TRACEBACK, "InternalServerError", 500))
            return False
        if plan.fault == "hang":
            await gone.wait()
            return True
        if plan.start_together and await _wait_for_batch(self._batch_started, gone):
            return True
        # Queueing plus prefill: nothing at all is sent before the first token exists.
        wait = plan.ttft if chat.stream else plan.ttft + plan.generation_time
        if await _pause(wait, gone):
            return True
        if plan.fault == "garbage":
            await _respond(send, 200, b"<html>not json</html>", b"application/json")
        elif plan.fault == "truncated" or (
            plan.fault in ("kill_mid_stream", "truncated_mid_stream") and not chat.stream
        ):
            await self._truncate(send, chat, plan)
        elif chat.stream:
            return await self._stream(send, chat, plan, gone)
        elif plan.fault == "overload":
            message = "The request was aborted: the server is overloaded (queue timeout)."
            await _respond_json(send, 503, _error_body(message, "SERVICE_UNAVAILABLE", 503))
        elif plan.fault == "error_mid_stream":
            message = "Internal server error during generation."
            await _respond_json(send, 500, _error_body(message, "InternalServerError", 500))
        else:
            await _respond_json(send, 200, self._completion(chat, plan))
        return False

    def _completion(self, chat: _Chat, plan: _Plan) -> dict[str, Any]:
        tokens, finish_reason, matched_stop = _generate(plan, chat)
        message = {
            "role": "assistant",
            "content": "".join(tokens),
            "reasoning_content": None,
            "tool_calls": None,
        }
        choice = {"message": message, "logprobs": None, "finish_reason": finish_reason}
        return {
            "id": uuid.uuid4().hex,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": chat.model,
            "choices": [
                {"index": i, **choice, "matched_stop": matched_stop} for i in range(chat.n)
            ],
            "usage": _usage(chat, len(tokens) * chat.n),
            "metadata": {
                "weight_version": "default",
                "weight_versions": [
                    {"version": "default", "start": 0, "end": len(tokens) * chat.n}
                ],
            },
        }

    async def _truncate(self, send: Send, chat: _Chat, plan: _Plan) -> None:
        """Promise a whole JSON body, send half of it, then drop the connection."""
        full = orjson.dumps(self._completion(chat, plan))
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(full))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": full[: len(full) // 2], "more_body": True}
        )
        raise _DeliberateDrop

    async def _stream(self, send: Send, chat: _Chat, plan: _Plan, gone: asyncio.Event) -> bool:
        """Stream the answer as SSE; True if the client went away first."""
        head: dict[str, Any] = {"id": uuid.uuid4().hex, "object": "chat.completion.chunk"}
        head |= {"created": int(time.time()), "model": chat.model}

        def chunk(
            index: int,
            delta: dict[str, Any],
            finish_reason: str | None = None,
            matched_stop: str | int | None = None,
        ) -> dict[str, Any]:
            return _chunk(head, index, delta, plan.compact_chunks, finish_reason, matched_stop)

        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"vary", b"Origin")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if plan.fault == "overload":  # queue timeout before the first token: 200, then an error
            message = "The request was aborted: the server is overloaded (queue timeout)."
            await _send_event(send, {"error": _error_body(message, "SERVICE_UNAVAILABLE", 503)})
            await send({"type": "http.response.body", "body": _SSE_DONE, "more_body": False})
            return False
        tokens, finish_reason, matched_stop = _generate(plan, chat)
        fault_step = min(plan.fault_after_tokens, len(tokens))
        for step in range(len(tokens) + 1):
            if (step and await _pause(plan.token_delay, gone)) or gone.is_set():
                return True
            if step == fault_step and plan.fault == "error_mid_stream":
                error = _error_body(
                    "Internal server error during generation.", "InternalServerError", 500
                )
                await _send_event(send, {"error": error})
                await send({"type": "http.response.body", "body": _SSE_DONE, "more_body": False})
                return False
            if step == fault_step and plan.fault == "kill_mid_stream":
                raise _DeliberateDrop
            if step == fault_step and plan.fault == "truncated_mid_stream":
                # A clean end of the chunked body, but no finish chunk and no [DONE].
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return False
            if step == fault_step and plan.fault == "garbage_mid_stream":
                # Not JSON (a proxy's error page, say); the tokens after it still follow.
                garbage = b"data: <html>oops\n\n"
                await send({"type": "http.response.body", "body": garbage, "more_body": True})
            for index in range(chat.n):
                if step == 0:  # SGLang sends the role chunk right before a choice's first output
                    await _send_event(send, chunk(index, {"role": "assistant", "content": ""}))
                if step < len(tokens):
                    await _send_event(send, chunk(index, {"content": tokens[step]}))
        for index in range(chat.n):
            await _send_event(send, chunk(index, {}, finish_reason, matched_stop))
        if chat.include_usage:
            usage = _usage(chat, len(tokens) * chat.n)
            await _send_event(send, head | {"choices": [], "usage": usage})
        await send({"type": "http.response.body", "body": _SSE_DONE, "more_body": False})
        return False
