"""tools.py and the conversation with tools: the prompt, the plan's checks, the constraint."""

from __future__ import annotations

from typing import Any

import jsonschema
import orjson
import pytest

from gateway.api.schemas import ChatCompletionRequest
from gateway.chat.conversation import normalise_conversation
from gateway.chat.tools import ToolPlan, new_call_id, plan_tools
from gateway.errors import InvalidRequest

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Adds two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
NOW = {"type": "function", "function": {"name": "now"}}  # no parameters at all


def request(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "2+2?"}], **fields}
    return ChatCompletionRequest.model_validate_json(orjson.dumps(body))


def plan(**fields: Any) -> ToolPlan:
    result = plan_tools(request(**fields))
    assert result is not None
    return result


def test_the_prompt_is_googles_json_format_with_the_definitions() -> None:
    prompt = plan(tools=[ADD, NOW]).prompt()
    assert prompt.startswith("You have access to functions. If you decide to invoke any")
    assert '{"name": function name, "parameters": dictionary of argument name and its value}' in (
        prompt
    )
    assert "You SHOULD NOT include any other text in the response if you call a function" in prompt
    definitions = orjson.loads(prompt[prompt.index("[\n") :])
    assert definitions == [
        {
            "name": "add",
            "description": "Adds two integers.",
            "parameters": ADD["function"]["parameters"],  # type: ignore[index]
        },
        {"name": "now", "parameters": {"type": "object", "properties": {}}},
    ]
    assert (
        "You MUST call the function add."
        in plan(tools=[ADD], tool_choice={"type": "function", "function": {"name": "add"}}).prompt()
    )
    assert "You MUST call at least one" in plan(tools=[ADD], tool_choice="required").prompt()


def test_the_prompt_opens_the_first_user_turn_after_the_system_text() -> None:
    chat = request(
        tools=[ADD],
        messages=[
            {"role": "system", "content": "Be exact."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "3+3?"},
        ],
    )
    conversation = normalise_conversation(chat.messages, tools=plan_tools(chat))
    first = conversation.messages[0]["content"]
    assert first.startswith("Be exact.\n\nYou have access to functions.")
    assert first.endswith("\n\n2+2?")
    assert conversation.messages[2]["content"] == "3+3?"  # once only


def test_calls_and_results_in_history_alternate_as_gemma_turns() -> None:
    call = {
        "id": "call_a",
        "type": "function",
        "function": {"name": "add", "arguments": '{"a":2,"b":2}'},
    }
    other = {"id": "call_b", "type": "function", "function": {"name": "now", "arguments": ""}}
    chat = request(
        tools=[ADD, NOW],
        messages=[
            {"role": "user", "content": "2+2, and the time?"},
            {"role": "assistant", "content": "Let me see.", "tool_calls": [call, other]},
            {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
            {"role": "tool", "tool_call_id": "call_a", "content": [{"type": "text", "text": "4"}]},
        ],
    )
    messages = normalise_conversation(chat.messages, tools=plan_tools(chat)).messages
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    text, calls = messages[1]["content"].split("\n\n")
    assert text == "Let me see."
    assert orjson.loads(calls) == [
        {"name": "add", "parameters": {"a": 2, "b": 2}},
        {"name": "now", "parameters": {}},
    ]
    assert messages[2]["content"] == (
        "Result of now:\n```tool_output\nnoon\n```\n\nResult of add:\n```tool_output\n4\n```"
    )


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"tool_choice": "required"}, "tool_choice", "only allowed when 'tools'"),
        (
            {"tools": [ADD], "tool_choice": {"type": "function", "function": {"name": "sub"}}},
            "tool_choice",
            "no function named 'sub'",
        ),
        ({"tools": [ADD, ADD]}, "tools[1].function.name", "declared twice"),
        ({"tools": [ADD], "functions": [ADD["function"]]}, "functions", "not both"),
        ({"tools": [ADD], "function_call": "auto"}, "function_call", "with 'functions'"),
        ({"functions": [ADD["function"]], "tool_choice": "auto"}, "tool_choice", "'function_call'"),
        ({"functions": [ADD["function"]], "function_call": {"name": "x"}}, "function_call", "'x'"),
    ],
)
def test_plans_are_checked_as_openai_checks_them(
    fields: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        plan_tools(request(**fields))
    assert raised.value.param == param
    assert words in raised.value.message


def test_legacy_functions_map_onto_the_same_plan() -> None:
    legacy = plan(functions=[ADD["function"]], function_call={"name": "add"})
    assert (legacy.choice, legacy.legacy, legacy.max_calls, legacy.forced) == ("add", True, 1, True)
    assert plan(functions=[ADD["function"]], function_call="none").offered is False
    assert plan_tools(request()) is None


def test_the_forced_constraint_admits_exactly_the_declared_calls() -> None:
    named = plan(tools=[ADD, NOW], tool_choice={"type": "function", "function": {"name": "add"}})
    schema = named.constraint()["json_schema"]["schema"]  # type: ignore[index]
    jsonschema.validate({"name": "add", "parameters": {"a": 1, "b": 2}}, schema)
    for wrong in (
        {"name": "now", "parameters": {}},
        {"name": "add", "parameters": {"a": "1", "b": 2}},
        {"name": "add", "parameters": {"a": 1, "b": 2}, "extra": 1},
        [{"name": "add", "parameters": {"a": 1, "b": 2}}],
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)
    several = plan(tools=[ADD, NOW], tool_choice="required").constraint()
    schema = several["json_schema"]["schema"]  # type: ignore[index]
    jsonschema.validate(
        [{"name": "now", "parameters": {}}, {"name": "add", "parameters": {"a": 1, "b": 1}}], schema
    )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([], schema)
    one = plan(tools=[ADD, NOW], tool_choice="required", parallel_tool_calls=False).constraint()
    jsonschema.validate({"name": "now", "parameters": {}}, one["json_schema"]["schema"])  # type: ignore[index]
    assert plan(tools=[ADD]).constraint() is None  # auto, nothing strict: free text
    assert plan(tools=[ADD], tool_choice="none").constraint() is None


def test_call_ids_look_like_openais() -> None:
    ids = {new_call_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("call_") and len(i) == 29 and i[5:].isalnum() for i in ids)
