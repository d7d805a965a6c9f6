"""Tool calling and the Responses API through the gateway, on the real SGLang 0.5.21.

The model is random, so a call that parses and names a declared function proves the gateway's
constraint reached xgrammar and was applied: a required or named `tool_choice` becomes a
`response_format` json_schema of the calls (the function's name as a `const`, an array with
`minItems` when parallel calls are allowed), and a `strict` function under `auto` a legacy
`structural_tag` (structures and triggers), which SGLang compiles without a tool parser. The
conversation that carries a call and its result must also pass Gemma 3n's template (strict
alternation): the gateway writes both as turns it accepts.

String arguments are held to printable ASCII by a `pattern`, as in test_constrained.py:
xgrammar lets free-form strings carry raw control characters and, rarely, U+FFFD that breaks
the JSON. The gateway escapes the first; the second is the random model's, not a shape to test.
"""

from __future__ import annotations

import json
import re
from typing import Any

import openai
import pytest

from .conftest import MODEL

CITY = re.compile(r"[a-z0-9 ]{0,10}")


def function(name: str, strict: bool = False) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"The {name.replace('_', ' ')} of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "pattern": "^[a-z0-9 ]{0,10}$"}},
                "required": ["city"],
                "additionalProperties": False,
            },
            "strict": strict,
        },
    }


WEATHER, TIME = function("get_weather"), function("get_time")
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


def check_call(name: str, arguments: str, names: set[str]) -> None:
    assert name in names, name
    parsed = json.loads(arguments)
    assert set(parsed) == {"city"}, parsed
    assert CITY.fullmatch(parsed["city"]), parsed


def create(client: openai.OpenAI, **fields: Any) -> Any:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 200} | fields
    return client.chat.completions.create(**body)


# -- chat completions -------------------------------------------------------------------------


def test_named_tool_choice_is_a_call_of_that_function(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    reply = create(client, tools=[WEATHER, TIME], tool_choice=named)
    (choice,) = reply.choices
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    check_call(call.function.name, call.function.arguments, {"get_time"})


def test_required_with_parallel_calls_is_a_list_of_calls(client: openai.OpenAI) -> None:
    reply = create(client, tools=[WEATHER, TIME], tool_choice="required", max_tokens=400)
    (choice,) = reply.choices
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert len(calls) >= 1
    assert len({call.id for call in calls}) == len(calls)
    for call in calls:
        check_call(call.function.name, call.function.arguments, {"get_weather", "get_time"})


def test_a_streamed_required_call_comes_in_openai_deltas(client: openai.OpenAI) -> None:
    stream = create(
        client,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        stream=True,
        stream_options={"include_usage": True},
    )
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    finishes, usage = [], None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            assert choice.delta.content in (None, "")
            for delta in choice.delta.tool_calls or []:
                if delta.id is not None:
                    assert delta.id.startswith("call_") and delta.function.name
                    names[delta.index] = delta.function.name
                arguments[delta.index] = arguments.get(delta.index, "") + (
                    delta.function.arguments or ""
                )
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert finishes == ["tool_calls"]
    assert list(names) == [0]
    check_call(names[0], arguments[0], {"get_weather"})
    assert usage is not None and usage.completion_tokens > 0


def test_auto_with_a_strict_function_compiles_and_answers(client: openai.OpenAI) -> None:
    # `auto` leaves the text free (a random model rarely starts a call), so what the real server
    # shows here is that xgrammar compiles the gateway's structural_tag: a bad one is a 400.
    reply = create(client, tools=[function("get_weather", strict=True)], max_tokens=24)
    (choice,) = reply.choices
    assert choice.finish_reason in ("stop", "length", "tool_calls"), choice
    for call in choice.message.tool_calls or []:
        check_call(call.function.name, call.function.arguments, {"get_weather"})


def test_a_call_and_its_result_pass_gemmas_template(client: openai.OpenAI) -> None:
    first = create(client, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
    (call,) = first.choices[0].message.tool_calls
    history = [
        *MESSAGES,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 18}'},
    ]
    # The template saw user (with the functions), assistant (the call), user (the result).
    second = create(client, messages=history, tools=[WEATHER], max_tokens=8)
    (choice,) = second.choices
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    first_turn = first.usage.prompt_tokens + first.usage.completion_tokens
    assert second.usage.prompt_tokens > first_turn


# -- the Responses API ------------------------------------------------------------------------


def test_responses_create_retrieve_and_continue(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL, input="hello", instructions="Answer briefly.", max_output_tokens=16
    )
    assert first.status in ("completed", "incomplete")
    (item,) = first.output
    assert item.type == "message" and item.content[0].type == "output_text"
    assert first.usage is not None and first.usage.output_tokens > 0
    assert client.responses.retrieve(first.id).id == first.id
    second = client.responses.create(
        model=MODEL, input="and then?", previous_response_id=first.id, max_output_tokens=16
    )
    # The stored conversation went back to SGLang: the prompt grew by the first exchange.
    assert second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens


def test_responses_function_call_and_its_output(client: openai.OpenAI) -> None:
    tool = {"type": "function", **WEATHER["function"]}
    first = client.responses.create(
        model=MODEL, input="Weather in Paris?", tools=[tool], tool_choice="required",
        parallel_tool_calls=False, max_output_tokens=200,
    )  # fmt: skip
    (call,) = first.output
    assert call.type == "function_call", first.output
    check_call(call.name, call.arguments, {"get_weather"})
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "18 C"}
    second = client.responses.create(
        model=MODEL, input=[result], previous_response_id=first.id, tools=[tool],
        tool_choice="none", max_output_tokens=16,
    )  # fmt: skip
    assert [item.type for item in second.output] == ["message"]


def test_responses_stream_events(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="hello", max_output_tokens=16) as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    # 16 tokens of a random model seldom end on their own: then the last event is
    # response.incomplete (the SDK's get_final_response wants response.completed).
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    for kind in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert kind in kinds, kinds
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text and final.usage is not None
    # A delta per token, or fewer where SGLang holds back a partial UTF-8 character
    assert 0 < kinds.count("response.output_text.delta") <= final.usage.output_tokens


def test_a_response_not_stored_cannot_be_continued(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="hi", store=False, max_output_tokens=16)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError, match="Previous response"):
        client.responses.create(
            model=MODEL, input="again", previous_response_id=first.id, max_output_tokens=16
        )
