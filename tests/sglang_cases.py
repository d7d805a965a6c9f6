"""Raw requests to SGLang whose answers the gateway relies on, and the recorded real answers.

This module owns the calibration between the real SGLang and the fakes: `CASES` are raw HTTP
requests (method, path, JSON body, with or without SGLang's API key); the real-SGLang tier
(`tests/real_sglang/test_raw_sglang.py`) sends them to SGLang 0.5.21 and checks that the answers
still have the recorded shapes (re-recording with REAL_SGLANG_RECORD=1), and
`tests/test_fake_sglang.py` sends them to `FakeSGLang` and asserts the same status, content type
and body shape from the recording in `tests/fixtures/real_sglang_0.5.21.json`.

A shape is the JSON value with every leaf replaced by its type name (so random text, ids and
token counts don't matter, while a missing key, an extra key or a null where a dict was does).
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "real_sglang_0.5.21.json"
MODEL = "google/gemma-3n-E4B-it"
HELLO = [{"role": "user", "content": "hello"}]


def _png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _wav() -> str:
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\x10\x00\xf0\xff" * 8000)  # 1 s of a quiet square wave
    return base64.b64encode(buf.getvalue()).decode()


@dataclass(frozen=True)
class Case:
    """One raw request; `authorized` sends SGLang's API key."""

    method: str
    path: str
    body: Any = None
    authorized: bool = True
    stream: bool = False
    raw_body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


PLACE_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "n": {"type": "integer"}},
    "required": ["city", "n"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
# What the recording showed about constrained decoding (SGLang 0.5.21, CPU, xgrammar 0.2.7);
# docs/testing.md has the full table.
NOTES = {
    "grammar_backend": "xgrammar 0.2.7 (SGLang's default; --grammar-backend not given)",
    "server_flags": "--constrained-json-disable-any-whitespace (else JSON whitespace is "
    "unbounded and a random model runs into max_tokens mid-JSON)",
    "regex": "works",
    "ebnf": "works",
    "response_format.json_schema": "works; free-form strings may hold raw control characters "
    "(U+0000-U+001F): parse with json.loads(strict=False); once, byte tokens that were no "
    "valid UTF-8 came back as U+FFFD with the closing quote lost (not JSON)",
    "response_format.json_object": "accepted; a random model rarely closes its keys",
    "response_format.structural_tag": "works in the 'format' form (sequence of const_string / "
    "json_schema); the legacy structures/triggers form is free text until a trigger",
    "tools+tool_choice required/named": "a JSON-schema grammar is built from the tools without "
    "any tool-call parser; the answer is a JSON array [{name, parameters}] returned as "
    "message.content (streamed as content deltas), tool_calls null, finish_reason stop; use "
    "parallel_tool_calls=false for exactly one call",
    "tools+tool_choice auto": "tools ignored, plain text",
    "errors": "400 BadRequestError 'Failed to compile {regex|ebnf|json} grammar: [hh:mm:ss] "
    "/project/cpp/<file>.cc:<line>: <reason>'; see bad_regex, bad_ebnf, bad_json_schema",
}


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": HELLO, "max_tokens": 4, **fields}


def cases() -> dict[str, Case]:
    """Built on call: media parts are made with Pillow and the wave module."""
    image = [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": _png()}},
    ]
    audio = [
        {"type": "text", "text": "transcribe"},
        {"type": "input_audio", "input_audio": {"data": _wav(), "format": "wav"}},
    ]
    return {
        "health": Case("GET", "/health"),
        "ready": Case("GET", "/ready"),
        "model_info": Case("GET", "/model_info"),
        "models": Case("GET", "/v1/models"),
        "unauthorized": Case("POST", "/v1/chat/completions", _chat(), authorized=False),
        "chat": Case("POST", "/v1/chat/completions", _chat()),
        "chat_image": Case(
            "POST", "/v1/chat/completions", _chat(messages=[{"role": "user", "content": image}])
        ),
        "chat_audio": Case(
            "POST", "/v1/chat/completions", _chat(messages=[{"role": "user", "content": audio}])
        ),
        "stream": Case(
            "POST",
            "/v1/chat/completions",
            _chat(max_tokens=3, stream=True, stream_options={"include_usage": True}),
            stream=True,
        ),
        "roles_alternate": Case(
            "POST",
            "/v1/chat/completions",
            _chat(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),
        ),
        "stream_roles_alternate": Case(
            "POST",
            "/v1/chat/completions",
            _chat(stream=True, messages=[{"role": "developer", "content": "a"}, *HELLO]),
            stream=True,
        ),
        "context_overflow": Case(
            "POST",
            "/v1/chat/completions",
            _chat(messages=[{"role": "user", "content": "hello " * 40000}]),
        ),
        # Prompt plus max_tokens over the context length (8192 in the tier, 32768 in the fake).
        "max_tokens_over_context": Case("POST", "/v1/chat/completions", _chat(max_tokens=32768)),
        "lora_adapter": Case("POST", "/v1/chat/completions", _chat(model="gemma:adapter")),
        "schema_error": Case("POST", "/v1/chat/completions", _chat(messages="nope")),
        "empty_messages": Case("POST", "/v1/chat/completions", _chat(messages=[])),
        "bad_image": Case(
            "POST",
            "/v1/chat/completions",
            _chat(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64,AAAA"},
                            }
                        ],
                    }
                ]
            ),
        ),
        # Constrained decoding: with random weights only the grammar shapes these answers.
        "regex": Case(
            "POST", "/v1/chat/completions", _chat(regex="(yes|no)-[0-9]{3}", max_tokens=20)
        ),
        "ebnf": Case(
            "POST",
            "/v1/chat/completions",
            _chat(ebnf='root ::= "answer: " ("yes" | "no") "."', max_tokens=20),
        ),
        "json_schema": Case(
            "POST",
            "/v1/chat/completions",
            _chat(
                max_tokens=80,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "place", "schema": PLACE_SCHEMA, "strict": True},
                },
            ),
        ),
        "tools_required": Case(
            "POST",
            "/v1/chat/completions",
            _chat(
                max_tokens=80,
                tools=[WEATHER_TOOL],
                tool_choice="required",
                parallel_tool_calls=False,
            ),
        ),
        "tools_required_stream": Case(
            "POST",
            "/v1/chat/completions",
            _chat(
                max_tokens=80,
                tools=[WEATHER_TOOL],
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
                parallel_tool_calls=False,
                stream=True,
            ),
            stream=True,
        ),
        "bad_regex": Case("POST", "/v1/chat/completions", _chat(regex="(unclosed")),
        "bad_ebnf": Case("POST", "/v1/chat/completions", _chat(ebnf="root ::= ")),
        "bad_json_schema": Case(
            "POST",
            "/v1/chat/completions",
            _chat(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
                }
            ),
        ),
    }


def shape(value: Any) -> Any:
    """`value` with every leaf replaced by its type name; lists by the shape of their items."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        shapes: list[Any] = []
        for item in value:
            if shape(item) not in shapes:
                shapes.append(shape(item))
        return shapes
    return type(value).__name__


def parse_sse(text: str) -> list[Any]:
    """Every `data:` event of an SSE body, JSON-decoded, with "[DONE]" kept as a string."""
    events: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def load_fixture() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())  # type: ignore[no-any-return]


def trimmed(value: Any) -> Any:
    """`value` with long strings (base64 media, random text) cut, for the fixture file."""
    if isinstance(value, dict):
        return {key: trimmed(item) for key, item in value.items()}
    if isinstance(value, list):  # the first three and the last three items
        if len(value) <= 6:
            return [trimmed(item) for item in value]
        return [*map(trimmed, value[:3]), f"...<{len(value) - 6} more>", *map(trimmed, value[-3:])]
    if isinstance(value, str) and len(value) > 160:
        return value[:120] + f"...<{len(value) - 120} more chars>"
    return value


def write_fixture(responses: dict[str, Any]) -> None:
    """Write the recording (REAL_SGLANG_RECORD=1 in the real tier)."""
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "recorded_from": "SGLang 0.5.21 on the CPU serving the tier's tiny random Gemma 3n "
        "(tests/real_sglang), context length 8192, --api-key set; long strings and lists trimmed "
        "in 'body'/'events', 'shape' computed from the untrimmed answer",
        "constrained_decoding": NOTES,
        "responses": responses,
    }
    FIXTURE.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
