"""Tool calling on /v1/chat/completions, end to end with the real `openai` SDK (issue 14).

The fake SGLang follows a `json_schema` constraint as SGLang's grammar backend does (it answers
with the scripted reply when that fits the schema, else with the schema's first instance), so
these tests prove what the gateway asks SGLang for (the rendered prompt and the constraint) and
what it makes of the answer (calls, ids, deltas, finish reasons), stream and not.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import orjson
import pytest
from conftest import MODEL
from fake_sglang import FakeSGLang

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def script(fake: FakeSGLang, text: str, piece: int = 4) -> None:
    fake.reply_tokens = [text[i : i + piece] for i in range(0, len(text), piece)]


def sent_prompt(fake: FakeSGLang) -> str:
    content = fake.chat_requests[-1]["messages"][0]["content"]
    return content if isinstance(content, str) else content[0]["text"]


# --- auto: the model may call -------------------------------------------------------------------


def test_auto_reads_a_call_the_model_wrote(client: openai.OpenAI, fake: FakeSGLang) -> None:
    script(fake, '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}')
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, ADD])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and len(call.id) == 29
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    sent = fake.chat_requests[-1]
    assert "tools" not in sent and "tool_choice" not in sent
    prompt = sent_prompt(fake)
    assert prompt.startswith("You have access to functions.")
    assert '"name": "get_weather"' in prompt and '"name": "add"' in prompt
    assert prompt.endswith("What is the weather in Paris?")


def test_auto_with_a_strict_function_holds_started_calls_to_its_schema(
    client: openai.OpenAI, fake: FakeSGLang
) -> None:
    client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, ADD])
    tag = fake.chat_requests[-1]["response_format"]
    assert tag["type"] == "structural_tag"
    assert tag["triggers"] == ['{"name": "', '{"name":"']
    by_begin = {s["begin"]: s for s in tag["structures"]}
    weather = by_begin['{"name": "get_weather", "parameters": ']
    assert weather["schema"] == WEATHER["function"]["parameters"]  # type: ignore[index]
    assert weather["end"] == "}"
    assert by_begin['{"name":"add","parameters":']["schema"] == {"type": "object"}  # not strict
    assert all(s["begin"].startswith(tuple(tag["triggers"])) for s in tag["structures"])
    # Without a strict function, or when the client shapes the text itself: no constraint.
    client.chat.completions.create(model=MODEL, messages=ASK, tools=[ADD])
    assert "response_format" not in fake.chat_requests[-1]
    client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], response_format={"type": "json_object"}
    )
    assert fake.chat_requests[-1]["response_format"] == {"type": "json_object"}


def test_auto_keeps_plain_text_as_content(client: openai.OpenAI, fake: FakeSGLang) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER])
    assert reply.choices[0].message.content == "Hello from the fake SGLang."
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].finish_reason == "stop"


def test_a_call_that_does_not_parse_is_content(client: openai.OpenAI, fake: FakeSGLang) -> None:
    for text in (
        '{"name": "get_weather", "parameters": {"city": "Par',  # cut off
        '{"name": "delete_everything", "parameters": {}}',  # not declared
    ):
        script(fake, text)
        reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER])
        assert reply.choices[0].message.content == text
        assert reply.choices[0].message.tool_calls is None


def test_text_beside_a_call_and_several_calls(client: openai.OpenAI, fake: FakeSGLang) -> None:
    script(
        fake,
        'Let me check.\n```json\n[{"name": "get_weather", "parameters": {"city": "Paris", '
        '"unit": "celsius"}}, {"name": "add", "parameters": {"a": 1, "b": 2}}]\n```',
    )
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, ADD])
    message = reply.choices[0].message
    assert message.content == "Let me check."
    assert [c.function.name for c in message.tool_calls or []] == ["get_weather", "add"]
    assert len({c.id for c in message.tool_calls or []}) == 2
    # parallel_tool_calls=false: one call at most, and the prompt does not offer a list.
    single = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, ADD], parallel_tool_calls=False
    )
    assert [c.function.name for c in single.choices[0].message.tool_calls or []] == ["get_weather"]
    assert "JSON list" not in sent_prompt(fake)


def test_tool_choice_none_renders_no_tools(client: openai.OpenAI, fake: FakeSGLang) -> None:
    script(fake, '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}')
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="none"
    )
    assert reply.choices[0].message.tool_calls is None
    assert "You have access to functions" not in sent_prompt(fake)


# --- required and named: decoding is constrained to calls ---------------------------------------


def test_named_choice_constrains_decoding(client: openai.OpenAI, fake: FakeSGLang) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, ADD],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    constraint = fake.chat_requests[-1]["response_format"]
    assert constraint["type"] == "json_schema"
    schema = constraint["json_schema"]["schema"]
    call = {"name": "get_weather", "parameters": {"city": "x", "unit": "celsius"}}
    jsonschema.validate(call, schema)
    for wrong in (
        {"name": "add", "parameters": {"a": 1, "b": 2}},
        {"name": "get_weather", "parameters": {"city": "x", "unit": "kelvin"}},
        {"name": "get_weather", "parameters": {"city": "x"}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)
    (made,) = reply.choices[0].message.tool_calls or []
    assert made.function.name == "get_weather"
    arguments = json.loads(made.function.arguments)
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])  # type: ignore[index]
    assert reply.choices[0].finish_reason == "tool_calls"


def test_required_choice_admits_any_declared_call(client: openai.OpenAI, fake: FakeSGLang) -> None:
    script(fake, '[{"name": "add", "parameters": {"a": 2, "b": 3}}]')
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, ADD], tool_choice="required"
    )
    schema = fake.chat_requests[-1]["response_format"]["json_schema"]["schema"]
    assert schema["type"] == "array" and schema["minItems"] == 1
    jsonschema.validate([{"name": "add", "parameters": {"a": 1, "b": 2}}], schema)
    (call,) = reply.choices[0].message.tool_calls or []
    assert (call.function.name, json.loads(call.function.arguments)) == ("add", {"a": 2, "b": 3})


def test_a_forced_call_replaces_response_format(http: httpx.Client, fake: FakeSGLang) -> None:
    body = {
        "model": MODEL,
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": "required",
        "response_format": {"type": "json_object"},
    }
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    assert fake.chat_requests[-1]["response_format"]["type"] == "json_schema"
    response = http.post("/v1/chat/completions", json={**body, "regex": "a+"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "regex"


# --- streams ------------------------------------------------------------------------------------


def _stream(client: openai.OpenAI, **kwargs: Any) -> list[Any]:
    return list(client.chat.completions.create(model=MODEL, messages=ASK, stream=True, **kwargs))


def test_streamed_forced_call_arrives_in_pieces(client: openai.OpenAI, fake: FakeSGLang) -> None:
    script(fake, '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}', 3)
    chunks = _stream(
        client,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [call for delta in deltas for call in delta.tool_calls or []]
    first = calls[0]
    assert first.index == 0 and first.id and first.id.startswith("call_")
    assert first.type == "function" and first.function and first.function.name == "get_weather"
    pieces = [call.function.arguments for call in calls if call.function]
    assert len([p for p in pieces if p]) > 3  # arguments in pieces, as they were generated
    assert all(call.id is None for call in calls[1:])
    assert json.loads("".join(p or "" for p in pieces)) == {"city": "Paris", "unit": "celsius"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any(delta.content for delta in deltas)


def test_streamed_auto_call_and_text(client: openai.OpenAI, fake: FakeSGLang) -> None:
    script(fake, 'On it: {"name": "add", "parameters": {"a": 1, "b": 2}}', 2)
    chunks = _stream(client, tools=[WEATHER, ADD])
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == "On it: "
    calls = [call for delta in deltas for call in delta.tool_calls or []]
    assert calls[0].function and calls[0].function.name == "add"
    arguments = "".join(call.function.arguments or "" for call in calls if call.function)
    assert json.loads(arguments) == {"a": 1, "b": 2}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_streamed_plain_text_with_tools_streams_as_text(
    client: openai.OpenAI, fake: FakeSGLang
) -> None:
    chunks = _stream(client, tools=[WEATHER], stream_options={"include_usage": True})
    text = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(text) >= 5  # not held back and sent at once
    assert "".join(text) == "Hello from the fake SGLang."
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and not chunks[-1].choices


# --- a whole loop: call, result, answer ---------------------------------------------------------


def test_two_step_loop_with_a_tool_result(client: openai.OpenAI, fake: FakeSGLang) -> None:
    script(fake, '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}')
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER])
    call = (first.choices[0].message.tool_calls or [])[0]
    fake.reply_tokens = ["It is", " sunny."]
    history: list[Any] = [
        {"role": "system", "content": "Be brief."},
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear", "c": 21}'},
    ]
    second = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER])
    assert second.choices[0].message.content == "It is sunny."
    sent = fake.chat_requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"].startswith("Be brief.\n\nYou have access to functions.")
    assert orjson.loads(sent[1]["content"]) == {
        "name": "get_weather",
        "parameters": {"city": "Paris", "unit": "celsius"},
    }
    assert sent[2]["content"] == (
        'Result of get_weather:\n```tool_output\n{"sky": "clear", "c": 21}\n```'
    )


def test_tool_messages_follow_openai_ordering_rules(http: httpx.Client, fake: FakeSGLang) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{}"}}
    unanswered = [*ASK, {"role": "assistant", "tool_calls": [call]}, *ASK]
    stray = [*ASK, {"role": "tool", "tool_call_id": "call_9", "content": "3"}]
    for messages, param in (
        (unanswered, "messages[1].tool_calls"),
        (stray, "messages[1].tool_call_id"),
    ):
        response = http.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": messages, "tools": [ADD]}
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param


# --- legacy functions / function_call -----------------------------------------------------------


def test_legacy_named_function_call_is_honoured(http: httpx.Client, fake: FakeSGLang) -> None:
    body = {
        "model": MODEL,
        "messages": ASK,
        "functions": [WEATHER["function"]],
        "function_call": {"name": "get_weather"},
    }
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"]["name"] == "get_weather"
    assert "tool_calls" not in choice["message"]
    assert fake.chat_requests[-1]["response_format"]["type"] == "json_schema"
    # The call and its `function` result in history.
    history = [
        *ASK,
        {"role": "assistant", "content": None, "function_call": choice["message"]["function_call"]},
        {"role": "function", "name": "get_weather", "content": "sunny"},
    ]
    again = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": history, "functions": [WEATHER["function"]]},
    )
    assert again.status_code == 200, again.text
    assert fake.chat_requests[-1]["messages"][-1]["content"].endswith("sunny\n```")


def test_non_streaming_messages_carry_refusal_and_annotations(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": ASK}
    message = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    assert message["refusal"] is None and message["annotations"] == []
