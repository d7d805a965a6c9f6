"""The Responses API's part of the gateway's OpenAPI document (`api.openapi.OpenAPIPart`).

The request body is `ResponsesRequest`'s own JSON Schema; the answers are described as the
gateway writes them (`convert.py`, `events.py`), in the names of OpenAI's own document.
"""

from __future__ import annotations

from typing import Any

from gateway.api.openapi import (
    ANY_OBJECT,
    API_ERRORS,
    GENERATION_ERRORS,
    INTEGER,
    JSON,
    REQUEST_ID,
    STRING,
    JSONObject,
    json_object,
    model_schemas,
    nullable,
    operation,
    ref,
    responses_with,
)
from gateway.responses.schemas import ResponsesRequest

_USAGE = json_object(
    ["input_tokens", "output_tokens", "total_tokens"],
    input_tokens=INTEGER,
    input_tokens_details=json_object(["cached_tokens"], cached_tokens=INTEGER),
    output_tokens=INTEGER,
    output_tokens_details=json_object(["reasoning_tokens"], reasoning_tokens=INTEGER),
    total_tokens=INTEGER,
)
_OUTPUT_ITEM = {
    "anyOf": [
        json_object(
            ["id", "type", "status", "role", "content"],
            id={"type": "string", "pattern": "^msg_"},
            type={"const": "message"},
            status={"enum": ["in_progress", "completed"]},
            role={"const": "assistant"},
            content={
                "type": "array",
                "items": json_object(
                    ["type", "text", "annotations"],
                    type={"const": "output_text"},
                    text=STRING,
                    annotations={"type": "array"},
                ),
            },
        ),
        json_object(
            ["id", "type", "status", "call_id", "name", "arguments"],
            id={"type": "string", "pattern": "^fc_"},
            type={"const": "function_call"},
            status={"enum": ["in_progress", "completed"]},
            call_id={"type": "string", "pattern": "^call_"},
            name=STRING,
            arguments=STRING,
        ),
    ]
}
_SCHEMAS: dict[str, JSONObject] = {
    "Response": json_object(
        ["id", "object", "created_at", "status", "model", "output", "tools", "tool_choice"],
        id={"type": "string", "pattern": "^resp_"},
        object={"const": "response"},
        created_at=INTEGER,
        status={"enum": ["in_progress", "completed", "incomplete", "failed"]},
        model=STRING,
        output={"type": "array", "items": ref("ResponseOutputItem")},
        instructions={"type": ["string", "null"]},
        previous_response_id={"type": ["string", "null"]},
        incomplete_details=nullable(ANY_OBJECT),
        error=nullable(ANY_OBJECT),
        tools={"type": "array", "items": ANY_OBJECT},
        tool_choice={"anyOf": [STRING, ANY_OBJECT]},
        parallel_tool_calls={"type": "boolean"},
        store={"type": "boolean"},
        text=ANY_OBJECT,
        usage=nullable(ref("ResponseUsage")),
        metadata=ANY_OBJECT,
    ),
    "ResponseOutputItem": _OUTPUT_ITEM,
    "ResponseUsage": _USAGE,
    "ResponseStreamEvent": {
        **json_object(
            ["event", "data"],
            event={"type": "string", "pattern": "^(response\\.|error$)"},
            data={
                "type": "string",
                "contentMediaType": JSON,
                "contentSchema": json_object(
                    ["type", "sequence_number"], type=STRING, sequence_number=INTEGER
                ),
            },
        ),
        "description": (
            "One typed event: response.created and response.in_progress, then the output "
            "items' events, and response.completed, response.incomplete or, after an `error` "
            "event, response.failed. No `[DONE]`."
        ),
    },
    "DeletedResponse": json_object(
        ["id", "object", "deleted"],
        id=STRING,
        object={"const": "response.deleted"},
        deleted={"const": True},
    ),
    "ResponseItemList": json_object(
        ["object", "data", "first_id", "last_id", "has_more"],
        object={"const": "list"},
        data={"type": "array", "items": ANY_OBJECT},
        first_id={"type": ["string", "null"]},
        last_id={"type": ["string", "null"]},
        has_more={"type": "boolean"},
    ),
}

_LIMIT = {**INTEGER, "minimum": 1, "maximum": 100}
_RESPONSE_ID = {"name": "response_id", "in": "path", "required": True, "schema": STRING}


def responses_openapi(model_name: str) -> tuple[dict[tuple[str, str], JSONObject], dict[str, Any]]:
    """The Responses API's operations and component schemas."""
    body = {
        "required": True,
        "content": {
            JSON: {
                "schema": ref(ResponsesRequest.__name__),
                "examples": {"hello": {"value": {"model": model_name, "input": "Say hello."}}},
            }
        },
    }
    created = responses_with(
        "A `response`; with `stream: true`, server-sent `ResponseStreamEvent`s.",
        {
            JSON: {"schema": ref("Response")},
            "text/event-stream": {"schema": ref("ResponseStreamEvent")},
        },
        GENERATION_ERRORS,
    )
    stored = (*API_ERRORS, 404)
    by_id = [_RESPONSE_ID, *REQUEST_ID]
    operations = {
        ("post", "/v1/responses"): operation(
            "createResponse",
            "Creates a model response (the Responses API).",
            "Responses",
            created,
            requestBody=body,
        ),
        ("get", "/v1/responses/{response_id}"): operation(
            "getResponse",
            "Retrieves a stored response.",
            "Responses",
            responses_with("The response.", {JSON: {"schema": ref("Response")}}, stored),
            parameters=by_id,
        ),
        ("delete", "/v1/responses/{response_id}"): operation(
            "deleteResponse",
            "Deletes a stored response.",
            "Responses",
            responses_with("Deleted.", {JSON: {"schema": ref("DeletedResponse")}}, stored),
            parameters=by_id,
        ),
        ("get", "/v1/responses/{response_id}/input_items"): operation(
            "listInputItems",
            "Lists a stored response's input items.",
            "Responses",
            responses_with(
                "The input items.", {JSON: {"schema": ref("ResponseItemList")}}, (*stored, 400)
            ),
            parameters=[
                *by_id,
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {**INTEGER, "minimum": 1, "maximum": 100},
                },
                {"name": "order", "in": "query", "schema": {"enum": ["asc", "desc"]}},
                {"name": "after", "in": "query", "schema": STRING},
            ],
        ),
    }
    return operations, {**_SCHEMAS, **model_schemas(ResponsesRequest)}
