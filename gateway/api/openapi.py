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
from collections.abc import Callable, Sequence
from typing import Any, Final, get_args

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.routing import Route

from gateway.api.schemas import ChatCompletionRequest
from gateway.speech.formats import ResponseFormat

JSONObject = dict[str, Any]

OPENAPI_VERSION: Final = "3.1.0"
JSON: Final = "application/json"
UNDESCRIBED: Final = "Not described in openapi.py yet."


def ref(name: str) -> JSONObject:
    return {"$ref": f"#/components/schemas/{name}"}


def json_object(required: list[str], **properties: JSONObject) -> JSONObject:
    return {"type": "object", "required": required, "properties": properties}


def nullable(schema: JSONObject) -> JSONObject:
    return {"anyOf": [schema, {"type": "null"}]}


STRING: Final[JSONObject] = {"type": "string"}
INTEGER: Final[JSONObject] = {"type": "integer"}
NUMBER: Final[JSONObject] = {"type": "number"}
ANY_OBJECT: Final[JSONObject] = {"type": "object"}

# --- component schemas --------------------------------------------------------------------------

_FINISH_REASON: Final[JSONObject] = {
    "type": "string",
    "enum": ["stop", "length", "tool_calls", "content_filter", "function_call"],
}


def _audio_form(*, granularities: bool) -> JSONObject:
    """OpenAI's transcription (or, without timestamp granularities, translation) form."""
    form = json_object(
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
        **json_object(
            ["message", "type", "param", "code"],
            message=STRING,
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
    "ErrorResponse": {**json_object(["error"], error=ref("Error")), "additionalProperties": False},
    "CompletionUsage": json_object(
        ["prompt_tokens", "completion_tokens", "total_tokens"],
        prompt_tokens=INTEGER,
        completion_tokens=INTEGER,
        total_tokens=INTEGER,
        prompt_tokens_details=nullable(ANY_OBJECT),
        completion_tokens_details=nullable(ANY_OBJECT),
    ),
    "ChatCompletion": json_object(
        ["id", "object", "created", "model", "choices"],
        id={"type": "string", "pattern": "^chatcmpl-"},
        object={"const": "chat.completion"},
        created=INTEGER,
        model=STRING,
        choices={
            "type": "array",
            "items": json_object(
                ["index", "message", "finish_reason"],
                index=INTEGER,
                message=json_object(
                    ["role", "content", "refusal", "annotations"],
                    role={"const": "assistant"},
                    content={"type": ["string", "null"]},
                    refusal={"type": ["string", "null"]},
                    annotations={"type": "array", "maxItems": 0},
                    reasoning_content=STRING,
                    tool_calls={"type": "array", "items": ref("ChatCompletionMessageToolCall")},
                    function_call=ref("ChatCompletionMessageFunctionCall"),
                ),
                logprobs=nullable(ANY_OBJECT),
                finish_reason=_FINISH_REASON,
            ),
        },
        usage=ref("CompletionUsage"),
        system_fingerprint={"type": ["string", "null"]},
    ),
    "ChatCompletionMessageFunctionCall": json_object(
        ["name", "arguments"],
        name=STRING,
        arguments={"type": "string", "description": "The arguments, a JSON object as text."},
    ),
    "ChatCompletionMessageToolCall": json_object(
        ["id", "type", "function"],
        id={"type": "string", "pattern": "^call_"},
        type={"const": "function"},
        function=ref("ChatCompletionMessageFunctionCall"),
    ),
    "ChatCompletionChunk": json_object(
        ["id", "object", "created", "model", "choices"],
        id={"type": "string", "pattern": "^chatcmpl-"},
        object={"const": "chat.completion.chunk"},
        created=INTEGER,
        model=STRING,
        choices={
            "type": "array",
            "items": json_object(
                ["index", "delta"],
                index=INTEGER,
                delta={
                    "type": "object",
                    "properties": {
                        "role": {"const": "assistant"},
                        "content": STRING,
                        "reasoning_content": STRING,
                        "tool_calls": {
                            "type": "array",
                            "items": json_object(
                                ["index"],
                                index=INTEGER,
                                id={"type": "string", "pattern": "^call_"},
                                type={"const": "function"},
                                function=json_object([], name=STRING, arguments=STRING),
                            ),
                        },
                        "function_call": json_object([], name=STRING, arguments=STRING),
                    },
                },
                logprobs=nullable(ANY_OBJECT),
                finish_reason=nullable(_FINISH_REASON),
            ),
        },
        usage=nullable(ref("CompletionUsage")),
    ),
    # OpenAPI 3.1 leaves event streams open; this is 3.2's reading (and schemathesis's): the
    # schema describes one event, whose `data` is JSON described by `contentSchema`.
    # https://spec.openapis.org/oas/v3.2.0.html#sequential-media-types
    "ChatCompletionStreamEvent": {
        **json_object(
            ["data"],
            event=STRING,
            data={
                "anyOf": [
                    {"const": "[DONE]"},
                    {
                        "type": "string",
                        "contentMediaType": JSON,
                        "contentSchema": {
                            "anyOf": [ref("ChatCompletionChunk"), ref("ErrorResponse")]
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
    "TranscriptionSegment": json_object(
        ["id", "seek", "start", "end", "text"],
        id=INTEGER,
        seek=INTEGER,
        start=NUMBER,
        end=NUMBER,
        text=STRING,
        tokens={"type": "array", "items": INTEGER},
        temperature=NUMBER,
        avg_logprob=NUMBER,
        compression_ratio=NUMBER,
        no_speech_prob=NUMBER,
    ),
    "TranscriptionUsage": json_object(
        ["type", "seconds"], type={"const": "duration"}, seconds=INTEGER
    ),
    "CreateTranscriptionResponseJson": json_object(
        ["text"], text=STRING, usage=ref("TranscriptionUsage")
    ),
    "CreateTranscriptionResponseVerboseJson": json_object(
        ["task", "language", "duration", "text", "segments"],
        task={"type": "string", "enum": ["transcribe", "translate"]},
        language=STRING,
        duration=NUMBER,
        text=STRING,
        segments={"type": "array", "items": ref("TranscriptionSegment")},
        usage=ref("TranscriptionUsage"),
    ),
    "Model": json_object(
        ["id", "object", "created", "owned_by"],
        id=STRING,
        object={"const": "model"},
        created=INTEGER,
        owned_by=STRING,
    ),
    "ListModelsResponse": json_object(
        ["object", "data"], object={"const": "list"}, data={"type": "array", "items": ref("Model")}
    ),
    "BackendState": json_object(
        ["reachable", "ready", "detail", "checked_at"],
        reachable={"type": "boolean"},
        ready={"type": "boolean"},
        detail=STRING,
        checked_at={"type": ["number", "null"], "description": "Unix time; null before a check."},
    ),
    "Health": json_object(
        ["status", "backend"], status={"const": "ok"}, backend=ref("BackendState")
    ),
    "Readiness": json_object(
        ["status", "backend"], status={"const": "ready"}, backend=ref("BackendState")
    ),
}


# --- responses ----------------------------------------------------------------------------------

# status -> (component name, when)
_ERRORS: Final[dict[int, tuple[str, str]]] = {
    400: ("BadRequest", "The request is malformed or asks for what the model cannot do."),
    401: ("Unauthorized", "A missing or wrong API key (when the server has keys)."),
    404: ("NotFound", "No such model, or no such stored response."),
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
        "content": {JSON: {"schema": ref("ErrorResponse")}},
    }


def responses_with(description: str, content: JSONObject, errors: tuple[int, ...]) -> JSONObject:
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
API_ERRORS: Final = (401, 429, 500, 503)  # the front door, the last resort, draining
BODY_ERRORS: Final = (400, 408, 413)
_MODEL_ERRORS: Final = (404, 502, 504)  # an unknown model; SGLang's own failures
GENERATION_ERRORS: Final = API_ERRORS + BODY_ERRORS + _MODEL_ERRORS
_KEY_IF_CONFIGURED: Final[list[JSONObject]] = [{"ApiKey": []}, {}]
REQUEST_ID: Final[list[JSONObject]] = [{"$ref": "#/components/parameters/X-Request-ID"}]


def operation(
    operation_id: str, summary: str, tag: str, responses: JSONObject, **extra: Any
) -> JSONObject:
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "security": _KEY_IF_CONFIGURED,
        "parameters": REQUEST_ID,
        **extra,
        "responses": responses,
    }


def _audio_operation(operation_id: str, summary: str, form: str) -> JSONObject:
    content = {
        JSON: {
            "schema": {
                "anyOf": [
                    ref("CreateTranscriptionResponseJson"),
                    ref("CreateTranscriptionResponseVerboseJson"),
                ]
            }
        },
        "text/plain": {"schema": STRING},  # text and srt
        "text/vtt": {"schema": STRING},
    }
    body = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": ref(form),
                "encoding": {"timestamp_granularities[]": {"style": "form", "explode": True}},
            }
        },
    }
    responses = responses_with("The transcript in `response_format`.", content, GENERATION_ERRORS)
    return operation(operation_id, summary, "Audio", responses, requestBody=body)


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
                "schema": ref(ChatCompletionRequest.__name__),
                "examples": {"hello": {"value": chat_example}},
            }
        },
    }
    chat_responses = responses_with(
        "A `chat.completion`; with `stream: true`, server-sent `ChatCompletionStreamEvent`s.",
        {
            JSON: {"schema": ref("ChatCompletion")},
            "text/event-stream": {"schema": ref("ChatCompletionStreamEvent")},
        },
        GENERATION_ERRORS,
    )
    model_id = {
        "name": "model_id",
        "in": "path",
        "required": True,
        "schema": STRING,
        "example": model_name,
    }
    return {
        ("post", "/v1/chat/completions"): operation(
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
        ("get", "/v1/models"): operation(
            "listModels",
            "Lists the served model.",
            "Models",
            responses_with(
                "The served model.", {JSON: {"schema": ref("ListModelsResponse")}}, API_ERRORS
            ),
        ),
        ("get", "/v1/models/{model_id}"): operation(
            "retrieveModel",
            "Retrieves the served model; any other id is a 404.",
            "Models",
            responses_with("The model.", {JSON: {"schema": ref("Model")}}, (*API_ERRORS, 404)),
            parameters=[model_id, *REQUEST_ID],
        ),
        ("get", "/health"): operation(
            "getHealth",
            "Liveness: answers at once with the last known state of SGLang.",
            "Health",
            responses_with("Alive.", {JSON: {"schema": ref("Health")}}, ()),
            security=[],  # always open
        ),
        ("get", "/health/ready"): operation(
            "getReadiness",
            "Readiness: 200 only while SGLang is ready to generate.",
            "Health",
            responses_with("Ready.", {JSON: {"schema": ref("Readiness")}}, (401, 503)),
        ),
        ("get", "/metrics"): operation(
            "getMetrics",
            "Prometheus metrics in the text exposition format.",
            "Health",
            responses_with("The metrics.", {"text/plain": {"schema": STRING}}, (401,)),
        ),
    }


# --- the document -------------------------------------------------------------------------------


def model_schemas(model: type[BaseModel]) -> dict[str, JSONObject]:
    """A request model and the models it uses, referenced as OpenAPI components."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation")
    definitions: dict[str, JSONObject] = schema.pop("$defs", {})
    return {**definitions, model.__name__: schema}


# What a package above this one adds to the document (the Responses API's routes): for a model
# name, its operations by (method, path) and its component schemas.
OpenAPIPart = Callable[[str], tuple[dict[tuple[str, str], JSONObject], dict[str, JSONObject]]]


def build_openapi(app: FastAPI, parts: Sequence[OpenAPIPart] = ()) -> JSONObject:
    """The OpenAPI 3.1 document of `app`'s routes, as the gateway really answers them."""
    model_name = str(getattr(getattr(app.state, "settings", None), "model_name", "model"))
    described = _operations(model_name)
    request_schemas = model_schemas(ChatCompletionRequest)
    for part in parts:
        operations, schemas = part(model_name)
        clash = (described.keys() & operations.keys()) or (request_schemas.keys() & schemas.keys())
        if clash:
            raise RuntimeError(f"OpenAPI operations or schemas defined twice: {sorted(clash)}")
        described |= operations
        request_schemas |= schemas
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
                    "schema": STRING,
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


def install_openapi(app: FastAPI, *parts: OpenAPIPart) -> None:
    """Make `app.openapi()` (and `/openapi.json`) return `build_openapi(app, parts)`, built once.

    Built on first use, not here, so routes added after this call are documented too.
    """

    def openapi() -> JSONObject:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, parts)
        return app.openapi_schema

    # FastAPI's documented way to replace the document:
    # https://fastapi.tiangolo.com/how-to/extending-openapi/
    app.openapi = openapi  # type: ignore[method-assign]
