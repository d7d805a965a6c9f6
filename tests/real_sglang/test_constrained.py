"""Constrained decoding on the real SGLang 0.5.21 (CPU, xgrammar, the tiny random Gemma 3n).

The model is random, so only the grammar shapes the output: an answer that matches its
constraint proves the constraint was applied. The main server runs with
`--constrained-json-disable-any-whitespace`: xgrammar otherwise lets a random model emit JSON
whitespace without end, and the answer would run into max_tokens before the JSON closes.

Through the gateway: `regex`, `ebnf`, `response_format` json_schema / json_object (the
gateway's own tool-call constraints are in test_tools.py). Straight to SGLang, what it does on
its own: `response_format` structural_tag, and `tools` with `tool_choice` "required" or named,
for which SGLang builds a JSON-schema grammar from the tools even with no tool-call parser, and
returns the JSON as `content`, with `tool_calls` null and finish_reason "stop" (the gateway
sends neither `tools` nor `tool_choice` upstream: it writes the prompt and the constraint).

Seen with free-form JSON strings (`maxLength` only): xgrammar lets raw control characters
(U+0000-U+001F, from byte pieces such as <0x0B>) into them, which strict JSON forbids, and once
a string of byte pieces that were no valid UTF-8 came back as U+FFFD characters with the
closing quote gone: `{"city": " w18073\ufffd...\ufffd "n": 571315403315092}`, not JSON at all.
The strings here are held to printable ASCII by a `pattern`, so the check is the grammar's
structure; the answers still parse with `json.loads(strict=False)`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import openai
import pytest

from .conftest import MODEL

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "pattern": "^[a-z0-9 ]{0,12}$"},
        "n": {"type": "integer"},
    },
    "required": ["city", "n"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "pattern": "^[a-z0-9 ]{0,10}$"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
]


def content(client: openai.OpenAI, max_tokens: int = 60, **fields: Any) -> tuple[str, str]:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=max_tokens,
        **fields,
    )
    choice = reply.choices[0]
    return choice.message.content or "", choice.finish_reason


def check_object(value: Any) -> None:
    assert set(value) == {"city", "n"}
    assert re.fullmatch(r"[a-z0-9 ]{0,12}", value["city"]), value
    assert isinstance(value["n"], int)


def test_regex(client: openai.OpenAI) -> None:
    text, finish = content(client, extra_body={"regex": r"(yes|no)-[0-9]{3}"})
    assert re.fullmatch(r"(yes|no)-[0-9]{3}", text), text
    assert finish == "stop"


def test_ebnf(client: openai.OpenAI) -> None:
    grammar = 'root ::= "answer: " ("yes" | "no") "."'
    text, finish = content(client, extra_body={"ebnf": grammar})
    assert text in ("answer: yes.", "answer: no."), text
    assert finish == "stop"


def test_response_format_json_schema(client: openai.OpenAI) -> None:
    text, finish = content(
        client,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "place", "schema": SCHEMA, "strict": True},
        },
    )
    assert finish == "stop", text
    check_object(json.loads(text, strict=False))


def test_response_format_json_object(client: openai.OpenAI) -> None:
    # Any JSON object: with random weights its string keys rarely end, so the check is that
    # every answer is a JSON object or, cut by max_tokens, the start of one.
    text, finish = content(client, max_tokens=20, response_format={"type": "json_object"})
    if finish == "stop":
        assert isinstance(json.loads(text, strict=False), dict)
    else:
        assert text.startswith("{"), text


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("regex", {"regex": "(unclosed"}),
        ("ebnf", {"ebnf": "root ::= "}),
        (
            "json",
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
                }
            },
        ),
    ],
)
def test_grammars_sglang_cannot_compile_are_a_400(
    client: openai.OpenAI, name: str, body: dict[str, Any]
) -> None:
    with pytest.raises(openai.BadRequestError, match=f"Failed to compile {name} grammar"):
        content(client, extra_body=body)


# -- straight to SGLang ---------------------------------------------------------------------


def raw(upstream: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 60}
    response = upstream.post("/v1/chat/completions", json=body | fields)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]  # type: ignore[no-any-return]


def test_structural_tag_format(upstream: httpx.Client) -> None:
    fmt = {
        "type": "sequence",
        "elements": [
            {"type": "const_string", "value": "<call>"},
            {"type": "json_schema", "json_schema": SCHEMA},
            {"type": "const_string", "value": "</call>"},
        ],
    }
    choice = raw(
        upstream, response_format={"type": "structural_tag", "format": fmt}, max_tokens=200
    )
    text = choice["message"]["content"]
    match = re.fullmatch(r"<call>(.*)</call>", text, re.S)
    assert match, text
    check_object(json.loads(match.group(1), strict=False))


@pytest.mark.parametrize(
    "tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_tools_with_a_required_call_are_grammar_constrained(
    upstream: httpx.Client, tool_choice: Any
) -> None:
    choice = raw(upstream, tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=False)
    # No Gemma tool-call parser: the grammar's JSON comes back as text, not as tool_calls.
    assert choice["message"]["tool_calls"] is None
    assert choice["finish_reason"] == "stop"
    calls = json.loads(choice["message"]["content"], strict=False)
    assert isinstance(calls, list) and len(calls) == 1
    (call,) = calls
    assert call["name"] == "get_weather"
    assert set(call["parameters"]) == {"city"}
    assert re.fullmatch(r"[a-z0-9 ]{0,10}", call["parameters"]["city"]), call
