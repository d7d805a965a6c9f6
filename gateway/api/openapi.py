"""The gateway's OpenAPI 3.1 document: what each route really accepts and answers.

Routes parse their own bodies (`validation.py`, `transcription.py`) so that errors come out in
OpenAI's shape; FastAPI's generated document therefore knows neither the chat request body nor
the multipart upload, and promises a 422 the gateway never sends. `install_openapi(app)` makes
`app.openapi()` (and so `/openapi.json`) return `build_openapi(app)` instead, built on first use
and cached, so routes added after the call are documented too:

- `POST /v1/chat/completions`: `ChatCompletionRequest`'s own JSON schema (pydantic's, `$defs`
  moved into `components/schemas`), answered by a `chat.completion` or a `text/event-stream`;
- `POST /v1/audio/transcriptions` and `/translations`: OpenAI's multipart form;
- `GET /v1/models`, `/v1/models/{model_id}`, `/health`, `/health/ready`, `/metrics`;
- every error status each route can answer (`guards.py`, `app.py`, `sglang/translate.py`), all with
  OpenAI's body ``{"error": {"message", "type", "param", "code"}}`` (`errors.error_body`).

The paths come from the app's routes: a route `_operations` does not describe still appears, with
a minimal entry, and `tests/test_fuzz.py` fails until it is described.

Reference: https://spec.openapis.org/oas/v3.1.0; names and shapes follow OpenAI's own document
(https://github.com/openai/openai-openapi).
"""

from __future__ import annotations

import copy
from typing import Any, Final, get_args

from fastapi import FastAPI
from starlette.routing import Route

from gateway.api.schemas import ChatCompletionRequest
from gateway.speech.formats import ResponseFormat

JSONObject = dict[str, Any]

OPENAPI_VERSION: Final = "3.1.0"
JSON: Final = "application/json"
UNDESCRIBED: Final = "Not described in openapi.py yet."


def _ref(name: str) -> JSONObject:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: list[str], **properties: JSONObject) -> JSONObject:
    return {"type": "object", "required": required, "properties": properties}


def _nullable(schema: JSONObject) -> JSONObject:
    return {"anyOf": [schema, {"type": "null"}]}


_STRING: Final[JSONObject] = {"type": "string"}
_INTEGER: Final[JSONObject] = {"type": "integer"}
_NUMBER: Final[JSONObject] = {"type": "number"}
_ANY_OBJECT: Final[JSONObject] = {"type": "object"}

# --- component schemas --------------------------------------------------------------------------

_FINISH_REASON: Final[JSONObject] = {
    "type": "string",
    "enum": ["stop", "length", "tool_calls", "content_filter", "function_call"],
}


def _audio_form(*, granularities: bool) -> JSONObject:
    """OpenAI's transcription (or, without timestamp granularities, translation) form."""
    form = _object(
        ["file", "model"],
        file={
            "type": "string",
            "contentMediaType": "application/octet-stream",  # 3.1's spelling of format: binary
            "description": "The audio: flac, mp3, mp4, mpeg, mpga, m4a, ogg, wav or webm.",
        },
        model={"type": "string", "description": "The served model's name, or `whisper-1`."},
        language={"type": "string", "description": "A hint: the ISO-639-1 code (`en`)."},
        prompt={"type": "string", "description": "Text to guide spelling and style."},
        response_format={
            "type": "string",
            "enum": list(get_args(ResponseFormat)),
            "default": "json",
        },
        temperature={"type": "number", "minimum": 0, "maximum": 1, "default": 0},
    )
    if granularities:
        form["properties"]["timestamp_granularities[]"] = {
            "type": "array",
            "items": {"type": "string", "enum": ["segment", "word"]},
            "description": "`segment` only: `word` is a 400.",
        }
    return form


_SCHEMAS: Final[dict[str, JSONObject]] = {
    "Error": {
        **_object(
            ["message", "type", "param", "code"],
            message=_STRING,
            type={"type": "string", "examples": ["invalid_request_error", "server_error"]},
            param={
                "type": ["string", "null"],
                "description": "The offending field in JSON-path spelling: `messages[1].content`.",
            },
            code={
                "type": ["string", "null"],
                "description": "A string or null, never a number.",
                "examples": ["invalid_json", "model_not_found", "payload_too_large"],
            },
        ),
        "additionalProperties": False,
    },
    "ErrorResponse": {**_object(["error"], error=_ref("Error")), "additionalProperties": False},
    "CompletionUsage": _object(
        ["prompt_tokens", "completion_tokens", "total_tokens"],
        prompt_tokens=_INTEGER,
        completion_tokens=_INTEGER,
        total_tokens=_INTEGER,
        prompt_tokens_details=_nullable(_ANY_OBJECT),
        completion_tokens_details=_nullable(_ANY_OBJECT),
    ),
    "ChatCompletion": _object(
        ["id", "object", "created", "model", "choices"],
        id={"type": "string", "pattern": "^chatcmpl-"},
        object={"const": "chat.completion"},
        created=_INTEGER,
        model=_STRING,
        choices={
            "type": "array",
            "items": _object(
                ["index", "message", "finish_reason"],
                index=_INTEGER,
                message=_object(
                    ["role", "content"],
                    role={"const": "assistant"},
                    content={"type": ["string", "null"]},
                    refusal={"type": ["string", "null"]},
                    reasoning_content=_STRING,
                    tool_calls={"type": "array", "items": _ANY_OBJECT},
                ),
                logprobs=_nullable(_ANY_OBJECT),
                finish_reason=_FINISH_REASON,
            ),
        },
        usage=_ref("CompletionUsage"),
        system_fingerprint={"type": ["string", "null"]},
    ),
    "ChatCompletionChunk": _object(
        ["id", "object", "created", "model", "choices"],
        id={"type": "string", "pattern": "^chatcmpl-"},
        object={"const": "chat.completion.chunk"},
        created=_INTEGER,
        model=_STRING,
        choices={
            "type": "array",
            "items": _object(
                ["index", "delta"],
                index=_INTEGER,
                delta={
                    "type": "object",
                    "properties": {
                        "role": {"const": "assistant"},
                        "content": _STRING,
                        "reasoning_content": _STRING,
                    },
                },
                logprobs=_nullable(_ANY_OBJECT),
                finish_reason=_nullable(_FINISH_REASON),
            ),
        },
        usage=_nullable(_ref("CompletionUsage")),
    ),
    # OpenAPI 3.1 leaves event streams open; this is 3.2's reading (and schemathesis's): the
    # schema describes one event, whose `data` is JSON described by `contentSchema`.
    # https://spec.openapis.org/oas/v3.2.0.html#sequential-media-types
    "ChatCompletionStreamEvent": {
        **_object(
            ["data"],
            event=_STRING,
            data={
                "anyOf": [
                    {"const": "[DONE]"},
                    {
                        "type": "string",
                        "contentMediaType": JSON,
                        "contentSchema": {
                            "anyOf": [_ref("ChatCompletionChunk"), _ref("ErrorResponse")]
                        },
                    },
                ]
            },
        ),
        "description": (
            "One event: a chunk; after the first chunk, possibly an error; last, `[DONE]`."
        ),
    },
    "CreateTranscriptionRequest": _audio_form(granularities=True),
    "CreateTranslationRequest": _audio_form(granularities=False),
    "TranscriptionSegment": _object(
        ["id", "seek", "start", "end", "text"],
        id=_INTEGER,
        seek=_INTEGER,
        start=_NUMBER,
        end=_NUMBER,
        text=_STRING,
        tokens={"type": "array", "items": _INTEGER},
        temperature=_NUMBER,
        avg_logprob=_NUMBER,
        compression_ratio=_NUMBER,
        no_speech_prob=_NUMBER,
    ),
    "TranscriptionUsage": _object(
        ["type", "seconds"], type={"const": "duration"}, seconds=_INTEGER
    ),
    "CreateTranscriptionResponseJson": _object(
        ["text"], text=_STRING, usage=_ref("TranscriptionUsage")
    ),
    "CreateTranscriptionResponseVerboseJson": _object(
        ["task", "language", "duration", "text", "segments"],
        task={"type": "string", "enum": ["transcribe", "translate"]},
        language=_STRING,
        duration=_NUMBER,
        text=_STRING,
        segments={"type": "array", "items": _ref("TranscriptionSegment")},
        usage=_ref("TranscriptionUsage"),
    ),
    "Model": _object(
        ["id", "object", "created", "owned_by"],
        id=_STRING,
        object={"const": "model"},
        created=_INTEGER,
        owned_by=_STRING,
    ),
    "ListModelsResponse": _object(
        ["object", "data"], object={"const": "list"}, data={"type": "array", "items": _ref("Model")}
    ),
    "BackendState": _object(
        ["reachable", "ready", "detail", "checked_at"],
        reachable={"type": "boolean"},
        ready={"type": "boolean"},
        detail=_STRING,
        checked_at={"type": ["number", "null"], "description": "Unix time; null before a check."},
    ),
    "Health": _object(["status", "backend"], status={"const": "ok"}, backend=_ref("BackendState")),
    "Readiness": _object(
        ["status", "backend"], status={"const": "ready"}, backend=_ref("BackendState")
    ),
}


# --- responses ----------------------------------------------------------------------------------

# status -> (component name, when)
_ERRORS: Final[dict[int, tuple[str, str]]] = {
    400: ("BadRequest", "The request is malformed or asks for what the model cannot do."),
    401: ("Unauthorized", "A missing or wrong API key (when the server has keys)."),
    404: ("NotFound", "No such model."),
    408: ("RequestTimeout", "The body did not arrive within BODY_READ_TIMEOUT."),
    413: ("PayloadTooLarge", "The body (or the uploaded file) is over its size limit."),
    429: ("RateLimited", "Too many requests in flight, for this key, or at SGLang."),
    500: ("InternalServerError", "SGLang, or the gateway, failed while handling it."),
    502: ("BadGateway", "SGLang answered something that is not a valid response."),
    503: ("ServiceUnavailable", "SGLang not ready or overloaded, or the gateway draining."),
    504: ("GatewayTimeout", "SGLang did not answer in time."),
}
_WITH_RETRY_AFTER: Final = frozenset({429, 503})

_HEADERS: Final[dict[str, JSONObject]] = {
    "X-Request-ID": {
        "description": "The client's X-Request-ID when it is a safe token, else a new one.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
}


def _header_refs(*names: str) -> JSONObject:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _error_response(status: int) -> JSONObject:
    # Starlette answers an unexpected exception from its outermost middleware, outside the one
    # that adds X-Request-ID, so a 500 may come without it.
    headers = [] if status == 500 else ["X-Request-ID"]
    if status in _WITH_RETRY_AFTER:
        headers.append("Retry-After")
    return {
        "description": _ERRORS[status][1],
        "headers": _header_refs(*headers),
        "content": {JSON: {"schema": _ref("ErrorResponse")}},
    }


def _responses(description: str, content: JSONObject, errors: tuple[int, ...]) -> JSONObject:
    responses: JSONObject = {
        "200": {
            "description": description,
            "headers": _header_refs("X-Request-ID"),
            "content": content,
        }
    }
    for status in sorted(errors):
        responses[str(status)] = {"$ref": f"#/components/responses/{_ERRORS[status][0]}"}
    return responses


# --- operations ---------------------------------------------------------------------------------

# What each kind of route can answer besides 200.
_API_ERRORS: Final = (401, 429, 500, 503)  # the front door, the last resort, draining
_BODY_ERRORS: Final = (400, 408, 413)
_MODEL_ERRORS: Final = (404, 502, 504)  # an unknown model; SGLang's own failures
_GENERATION_ERRORS: Final = _API_ERRORS + _BODY_ERRORS + _MODEL_ERRORS
_KEY_IF_CONFIGURED: Final[list[JSONObject]] = [{"ApiKey": []}, {}]
_REQUEST_ID: Final[list[JSONObject]] = [{"$ref": "#/components/parameters/X-Request-ID"}]


def _operation(
    operation_id: str, summary: str, tag: str, responses: JSONObject, **extra: Any
) -> JSONObject:
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "security": _KEY_IF_CONFIGURED,
        "parameters": _REQUEST_ID,
        **extra,
        "responses": responses,
    }


def _audio_operation(operation_id: str, summary: str, form: str) -> JSONObject:
    content = {
        JSON: {
            "schema": {
                "anyOf": [
                    _ref("CreateTranscriptionResponseJson"),
                    _ref("CreateTranscriptionResponseVerboseJson"),
                ]
            }
        },
        "text/plain": {"schema": _STRING},  # text and srt
        "text/vtt": {"schema": _STRING},
    }
    body = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": _ref(form),
                "encoding": {"timestamp_granularities[]": {"style": "form", "explode": True}},
            }
        },
    }
    responses = _responses("The transcript in `response_format`.", content, _GENERATION_ERRORS)
    return _operation(operation_id, summary, "Audio", responses, requestBody=body)


def _operations(model_name: str) -> dict[tuple[str, str], JSONObject]:
    """(method, path) -> operation, for every route the gateway has."""
    chat_example = {
        "model": model_name,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
    }
    chat_body = {
        "required": True,
        "content": {
            JSON: {
                "schema": _ref(ChatCompletionRequest.__name__),
                "examples": {"hello": {"value": chat_example}},
            }
        },
    }
    chat_responses = _responses(
        "A `chat.completion`; with `stream: true`, server-sent `ChatCompletionStreamEvent`s.",
        {
            JSON: {"schema": _ref("ChatCompletion")},
            "text/event-stream": {"schema": _ref("ChatCompletionStreamEvent")},
        },
        _GENERATION_ERRORS,
    )
    model_id = {
        "name": "model_id",
        "in": "path",
        "required": True,
        "schema": _STRING,
        "example": model_name,
    }
    return {
        ("post", "/v1/chat/completions"): _operation(
            "createChatCompletion",
            "Creates a model response for the given chat conversation.",
            "Chat",
            chat_responses,
            requestBody=chat_body,
        ),
        ("post", "/v1/audio/transcriptions"): _audio_operation(
            "createTranscription",
            "Transcribes audio into the input language.",
            "CreateTranscriptionRequest",
        ),
        ("post", "/v1/audio/translations"): _audio_operation(
            "createTranslation", "Translates audio into English.", "CreateTranslationRequest"
        ),
        ("get", "/v1/models"): _operation(
            "listModels",
            "Lists the served model.",
            "Models",
            _responses(
                "The served model.", {JSON: {"schema": _ref("ListModelsResponse")}}, _API_ERRORS
            ),
        ),
        ("get", "/v1/models/{model_id}"): _operation(
            "retrieveModel",
            "Retrieves the served model; any other id is a 404.",
            "Models",
            _responses("The model.", {JSON: {"schema": _ref("Model")}}, (*_API_ERRORS, 404)),
            parameters=[model_id, *_REQUEST_ID],
        ),
        ("get", "/health"): _operation(
            "getHealth",
            "Liveness: answers at once with the last known state of SGLang.",
            "Health",
            _responses("Alive.", {JSON: {"schema": _ref("Health")}}, ()),
            security=[],  # always open
        ),
        ("get", "/health/ready"): _operation(
            "getReadiness",
            "Readiness: 200 only while SGLang is ready to generate.",
            "Health",
            _responses("Ready.", {JSON: {"schema": _ref("Readiness")}}, (401, 503)),
        ),
        ("get", "/metrics"): _operation(
            "getMetrics",
            "Prometheus metrics in the text exposition format.",
            "Health",
            _responses("The metrics.", {"text/plain": {"schema": _STRING}}, (401,)),
        ),
    }


# --- the document -------------------------------------------------------------------------------


def _chat_request_schemas() -> dict[str, JSONObject]:
    """`ChatCompletionRequest` and the models it uses, referenced as OpenAPI components."""
    schema = ChatCompletionRequest.model_json_schema(
        ref_template="#/components/schemas/{model}", mode="validation"
    )
    definitions: dict[str, JSONObject] = schema.pop("$defs", {})
    return {**definitions, ChatCompletionRequest.__name__: schema}


def build_openapi(app: FastAPI) -> JSONObject:
    """The OpenAPI 3.1 document of `app`'s routes, as the gateway really answers them."""
    model_name = str(getattr(getattr(app.state, "settings", None), "model_name", "model"))
    described = _operations(model_name)
    paths: dict[str, JSONObject] = {}
    for route in app.routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue
        for method in sorted(m.lower() for m in route.methods or ()):
            operation = described.get((method, route.path_format)) or {
                "operationId": route.name,
                "description": UNDESCRIBED,
                "responses": {"200": {"description": "Success."}},
            }
            paths.setdefault(route.path_format, {})[method] = copy.deepcopy(operation)

    request_schemas = _chat_request_schemas()
    clash = _SCHEMAS.keys() & request_schemas.keys()
    if clash:
        raise RuntimeError(f"OpenAPI schema names defined twice: {sorted(clash)}")
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": app.title,
            "version": app.version,
            "description": "OpenAI-compatible API for Gemma 3n served by SGLang.",
        },
        "paths": paths,
        "components": {
            "schemas": copy.deepcopy({**_SCHEMAS, **request_schemas}),
            "responses": {name: _error_response(status) for status, (name, _) in _ERRORS.items()},
            "parameters": {
                "X-Request-ID": {
                    "name": "X-Request-ID",
                    "in": "header",
                    "required": False,
                    "description": (
                        "Your id for the request, echoed back and logged when it is letters, "
                        "digits and `-_.:` (at most 128 of them); anything else is replaced."
                    ),
                    "schema": _STRING,
                }
            },
            "headers": copy.deepcopy(_HEADERS),
            "securitySchemes": {
                "ApiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Required when the server has API_KEYS or API_KEYS_FILE.",
                }
            },
        },
    }


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` (and `/openapi.json`) return `build_openapi(app)`, built once.

    Built on first use, not here, so routes added after this call are documented too.
    """

    def openapi() -> JSONObject:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    # FastAPI's documented way to replace the document:
    # https://fastapi.tiangolo.com/how-to/extending-openapi/
    app.openapi = openapi  # type: ignore[method-assign]
