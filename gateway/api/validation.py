"""Turn a request body into a validated model, and pydantic's errors into OpenAI's 400s.

OpenAI names the offending field in `param` with JSON-path spelling (`messages[1].content[0].text`)
and says what is wrong in a sentence; FastAPI's 422 list is neither, so the gateway parses bodies
itself (pydantic's Rust JSON parser, no intermediate dict) and reports the most specific error.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from starlette.requests import Request

from gateway.errors import InvalidRequest

ModelT = TypeVar("ModelT", bound=BaseModel)

JSON_MEDIA_TYPE = "application/json"


async def read_body(request: Request) -> bytearray:
    """The request's body, gathered as it arrives: no step copies the whole of it at once.

    (Starlette's `Request.body()` joins the chunks at the end, a single 40 ms copy of a 60 MB
    body on the event loop; growing a bytearray costs at most a chunk's copy per step.)
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
    return body


def parse_json_body(
    model: type[ModelT], body: bytes | bytearray, content_type: str | None
) -> ModelT:
    """Validate `body` as `model`, or raise `InvalidRequest` naming the field and the problem.

    On the thread it is called in, for the whole body: `json_worker.JsonParser` decides where.
    """
    check_content_type(content_type)
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request_from(exc) from None


def check_content_type(content_type: str | None) -> None:
    """A JSON body must say so: `InvalidRequest` (code invalid_content_type) otherwise."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        shown = media_type or "none"
        raise InvalidRequest(
            f"The request body must be JSON sent with 'Content-Type: application/json' "
            f"(got '{shown}').",
            code="invalid_content_type",
        )


def invalid_request_from(exc: ValidationError) -> InvalidRequest:
    """The one error a client should fix first: the deepest, i.e. the most specific, of them."""
    errors = exc.errors(include_url=False, include_input=False)
    if errors[0]["type"] in ("json_invalid", "json_type"):
        return InvalidRequest(
            "We could not parse the JSON body of your request: "
            f"{errors[0]['msg'].removeprefix('Invalid JSON: ')}. "
            "The API expects a JSON object sent with 'Content-Type: application/json'.",
            code="invalid_json",
        )
    # A union (`str | list[...]`) fails once per member: prefer an error about the value over
    # "wrong type" at the same depth, and list the expected types when only those remain.
    path = max((_field_path(e) for e in errors), key=len)
    here = [e for e in errors if _field_path(e) == path]
    param = format_param(path)
    not_type_errors = [e for e in here if e["type"] not in _TYPE_NAMES]
    if not_type_errors:
        error = not_type_errors[0]
        if error["type"] == "missing":
            return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
        message = error["msg"].removeprefix("Value error, ")
    else:
        expected = " or ".join(dict.fromkeys(_TYPE_NAMES[e["type"]] for e in here))
        message = f"expected {expected}"
    if param is None:
        return InvalidRequest(f"Invalid request: {message}.")
    return InvalidRequest(f"Invalid value for '{param}': {message}.", param=param)


_TYPE_NAMES = {
    "string_type": "a string",
    "list_type": "an array",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "none_required": "null",
}


def _field_path(error: ErrorDetails) -> tuple[str | int, ...]:
    """The error's location without pydantic's union-member labels (`str`, `list[ContentPart]`)."""
    return tuple(
        part
        for part in error["loc"]
        if isinstance(part, int) or (part.isidentifier() and part not in _UNION_MEMBER_LABELS)
    )


# Labels pydantic puts in an error's location for the member of a union it tried.
_UNION_MEMBER_LABELS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def format_param(path: tuple[str | int, ...]) -> str | None:
    """`("messages", 1, "content")` -> `"messages[1].content"`; the empty path -> None."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or None
