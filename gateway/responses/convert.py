"""Responses API <-> chat completions: the request going in, the `response` object coming out.

Going in (`chat_messages`, `chat_request`): `instructions` is a system message; `input` items
become chat messages (`message` items by role, `input_text`/`input_image`/`input_audio` parts
as their chat twins, `input_file` by what its `file_data` holds: an image, audio, or text; a run
of `function_call` items is one assistant message with `tool_calls`, each
`function_call_output` a `tool` message); function `tools` are chat tools; `text.format` is
`response_format`; `max_output_tokens` is `max_completion_tokens`. Each chat message keeps the
name of the input field it came from, so that an error found later still names what the client
wrote (`input[2].content[0].image_url`).

Coming out (`output_items`, `finished`): the chat answer's text is one `message` item with an
`output_text` part, each call a `function_call` item; a cut-off answer is `incomplete`
(`max_output_tokens`); usage is counted as input/output tokens.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest, UnsupportedContent
from gateway.responses.schemas import InputItem, ResponsesRequest

TEXT_FILE_TYPES = frozenset({"application/json", "application/xml", "application/x-yaml"})


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# --- input -----------------------------------------------------------------------------------


def input_items(request: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as OpenAI lists input items: typed, each with an id."""
    if request.input is None:
        return []
    if isinstance(request.input, str):
        items = [InputItem(type="message", role="user", content=request.input)]
    else:
        items = request.input
    listed: list[dict[str, Any]] = []
    for item in items:
        entry: dict[str, Any]
        if item.type == "message":
            content = item.content
            parts = (
                [
                    {
                        "type": "output_text" if item.role == "assistant" else "input_text",
                        "text": content,
                    }
                ]
                if isinstance(content, str)
                else [part.model_dump(exclude_none=True) for part in content or ()]
            )
            entry = {"type": "message", "role": item.role, "content": parts}
            entry["id"] = item.id or new_id("msg")
        elif item.type == "function_call":
            entry = {
                "type": "function_call",
                "id": item.id or new_id("fc"),
                "call_id": item.call_id,
                "name": item.name,
                "arguments": item.arguments,
            }
        elif item.type == "function_call_output":
            entry = {
                "type": "function_call_output",
                "id": item.id or new_id("fco"),
                "call_id": item.call_id,
                "output": item.output
                if isinstance(item.output, str)
                else [part.model_dump(exclude_none=True) for part in item.output or ()],
            }
        else:
            raise UnsupportedContent(
                "'item_reference' input items are not supported; send the items themselves or "
                "use previous_response_id.",
                param=f"input[{len(listed)}]",
            )
        entry["status"] = "completed"
        listed.append(entry)
    return listed


@dataclass
class ChatInput:
    """Chat messages and, for each, the Responses field it came from."""

    messages: list[dict[str, Any]]
    sources: list[str]


def chat_messages(items: list[dict[str, Any]]) -> ChatInput:
    """Input items (as `input_items` lists them) as chat messages."""
    messages: list[dict[str, Any]] = []
    sources: list[str] = []
    for index, item in enumerate(items):
        where = f"input[{index}]"
        kind = item["type"]
        if kind == "message":
            role = item["role"]
            if role == "assistant":
                text = "".join(
                    part.get("text") or part.get("refusal") or "" for part in item["content"]
                )
                messages.append({"role": "assistant", "content": text})
            else:
                parts = [
                    _chat_part(part, f"{where}.content[{n}]")
                    for n, part in enumerate(item["content"])
                ]
                messages.append({"role": role, "content": parts})
            sources.append(where)
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # one turn: its text, its calls
                last.setdefault("tool_calls", []).append(call)
                if not last.get("content"):
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
                sources.append(where)
        else:  # function_call_output
            output = item["output"]
            if not isinstance(output, str):
                output = "\n\n".join(part.get("text") or "" for part in output)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
            sources.append(where)
    return ChatInput(messages, sources)


def _chat_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    kind = part["type"]
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": part["text"]}
    if kind == "input_image":
        if part.get("image_url") is None:
            raise UnsupportedContent(
                "Images by 'file_id' need OpenAI's Files API, which this gateway does not have; "
                "send 'image_url' (an https or data: URL).",
                param=f"{where}.file_id",
            )
        detail = part.get("detail")
        image: dict[str, Any] = {"url": part["image_url"]}
        if detail is not None:
            image["detail"] = "high" if detail == "original" else detail
        return {"type": "image_url", "image_url": image}
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": part["input_audio"]}
    if kind == "input_file":
        return _file_part(part, where)
    raise InvalidRequest(f"'{kind}' parts are only allowed in assistant messages.", param=where)


def _file_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    """An `input_file` by what it holds: an image or audio goes to Gemma as such, text as text."""
    data = part.get("file_data")
    if data is None:
        name = "file_id" if part.get("file_id") is not None else "file_url"
        raise UnsupportedContent(
            f"Files by '{name}' are not supported on this gateway; send the file's content as "
            "'file_data' (a data: URL).",
            param=f"{where}.{name}",
        )
    header, comma, payload = data.partition(",")
    media_type = header.removeprefix("data:").split(";", 1)[0].strip().lower()
    if not data.startswith("data:") or not comma or ";base64" not in header:
        raise InvalidRequest(
            "'file_data' must be a base64 data: URL (data:<media type>;base64,<data>).",
            param=f"{where}.file_data",
        )
    if media_type.startswith("image/"):
        return {"type": "image_url", "image_url": {"url": data}}
    if media_type.startswith("audio/"):
        return {"type": "audio_url", "audio_url": {"url": data}}
    if media_type.startswith("text/") or media_type in TEXT_FILE_TYPES:
        try:
            text = base64.b64decode(payload, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise InvalidRequest(
                "'file_data' of a text file must be base64 of UTF-8 text.",
                param=f"{where}.file_data",
            ) from None
        filename = part.get("filename")
        return {"type": "text", "text": f"{filename}:\n{text}" if filename else text}
    raise UnsupportedContent(
        f"Files of type '{media_type or 'unknown'}' are not supported: Gemma 3n on this gateway "
        "reads images, audio and text files.",
        param=f"{where}.file_data",
    )


def chat_request(
    request: ResponsesRequest, messages: list[dict[str, Any]], *, stream: bool
) -> dict[str, Any]:
    """The chat completion request (as JSON) that runs `request` on `messages`."""
    chat: dict[str, Any] = {"model": request.model, "messages": messages}
    for name, value in (
        ("max_completion_tokens", request.max_output_tokens),
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("seed", request.seed),
        ("parallel_tool_calls", request.parallel_tool_calls),
    ):
        if value is not None:
            chat[name] = value
    if request.tools:
        chat["tools"] = [
            {"type": "function", "function": _function(tool)} for tool in function_tools(request)
        ]
    choice = request.tool_choice
    if choice is not None:
        chat["tool_choice"] = (
            choice
            if isinstance(choice, str)
            else {"type": "function", "function": {"name": choice.name}}
        )
    text_format = request.text.format if request.text is not None else None
    if text_format is not None and text_format.type != "text":
        response_format: dict[str, Any] = {"type": text_format.type}
        if text_format.type == "json_schema":
            schema: dict[str, Any] = {"name": text_format.name, "schema": text_format.schema_}
            if text_format.strict is not None:
                schema["strict"] = text_format.strict
            if text_format.description is not None:
                schema["description"] = text_format.description
            response_format["json_schema"] = schema
        chat["response_format"] = response_format
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def function_tools(request: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's function tools as a response echoes them; any other tool type is a 400."""
    tools = []
    for index, tool in enumerate(request.tools or ()):
        if tool.type != "function":
            raise UnsupportedContent(
                f"Tools of type '{tool.type}' are not supported: this gateway runs no hosted "
                "tools; declare functions and run them yourself.",
                param=f"tools[{index}].type",
            )
        if tool.name is None:
            raise InvalidRequest(
                f"Missing required parameter: 'tools[{index}].name'.", param=f"tools[{index}].name"
            )
        tools.append(
            {
                "type": "function",
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
                "strict": tool.strict if tool.strict is not None else True,
            }
        )
    return tools


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    function = {"name": tool["name"], "strict": tool["strict"]}
    for key in ("description", "parameters"):
        if tool[key] is not None:
            function[key] = tool[key]
    return function


# --- output ----------------------------------------------------------------------------------


def response_skeleton(request: ResponsesRequest, response_id: str) -> dict[str, Any]:
    """The `response` object before any output: what it echoes of the request."""
    choice = request.tool_choice
    text_format = request.text.format if request.text and request.text.format else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "max_tool_calls": request.max_tool_calls,
        "model": request.model,
        "output": [],
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": request.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "store": request.store is not False,
        "temperature": request.temperature,
        "text": {
            "format": text_format.model_dump(by_alias=True, exclude_none=True)
            if text_format is not None
            else {"type": "text"}
        },
        "tool_choice": "auto"
        if choice is None
        else choice
        if isinstance(choice, str)
        else {"type": "function", "name": choice.name},
        "tools": function_tools(request),
        "top_p": request.top_p,
        "truncation": request.truncation or "disabled",
        "usage": None,
        "user": request.user,
        "metadata": request.metadata or {},
    }


def message_item(text: str, *, status: str = "completed") -> dict[str, Any]:
    return {
        "id": new_id("msg"),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [output_text(text)] if status == "completed" else [],
    }


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(
    call_id: str, name: str, arguments: str, *, status: str = "completed"
) -> dict[str, Any]:
    return {
        "id": new_id("fc"),
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def output_items(completion: dict[str, Any], max_tool_calls: int | None) -> list[dict[str, Any]]:
    """A chat completion's first choice as Responses output items."""
    message = completion["choices"][0].get("message") or {}
    items = []
    if message.get("content"):
        items.append(message_item(message["content"]))
    for call in (message.get("tool_calls") or [])[:max_tool_calls]:
        function = call["function"]
        items.append(function_call_item(call["id"], function["name"], function["arguments"]))
    return items


def finished(
    response: dict[str, Any],
    output: list[dict[str, Any]],
    finish_reason: str | None,
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """`response` complete: its output, status and usage."""
    done = dict(response)
    done["output"] = output
    if finish_reason == "length":
        done["status"] = "incomplete"
        done["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        done["status"] = "completed"
        done["completed_at"] = int(time.time())
    done["usage"] = response_usage(usage)
    return done


def response_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    details = usage.get("prompt_tokens_details") or {}
    return {
        "input_tokens": usage.get("prompt_tokens", 0),
        "input_tokens_details": {"cached_tokens": details.get("cached_tokens") or 0},
        "output_tokens": usage.get("completion_tokens", 0),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.get("total_tokens", 0),
    }


def history_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The output items as the chat messages a later turn sends back (one assistant turn)."""
    if not output:
        return []
    return chat_messages(
        [{**item, "role": "assistant"} if item["type"] == "message" else item for item in output]
    ).messages
