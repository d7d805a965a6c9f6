"""/v1/responses end to end with the real `openai` SDK: create, stream, retrieve, chain, delete.

The gateway runs on the chat pipeline in front of the fake SGLang, so these tests check both
ends: what the SDK parses (every event and object is an SDK model) and what reached SGLang.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import MODEL, ServerThread, gateway_settings
from fake_sglang import FakeSGLang
from image_factory import encode, marked

from app import create_app

ADD = {
    "type": "function",
    "name": "add",
    "description": "Adds two integers.",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
    "strict": True,
}


PDF = {"type": "input_file", "file_data": "data:application/pdf;base64,JVBERi0="}


def script(fake: FakeSGLang, text: str, piece: int = 4) -> None:
    fake.reply_tokens = [text[i : i + piece] for i in range(0, len(text), piece)]


def test_create_and_retrieve(client: openai.OpenAI, fake: FakeSGLang) -> None:
    response = client.responses.create(
        model=MODEL, input="Hello", instructions="Be brief.", max_output_tokens=50, temperature=0
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed"
    assert response.output_text == "Hello from the fake SGLang."
    (item,) = response.output
    assert item.type == "message" and item.id.startswith("msg_") and item.role == "assistant"
    assert response.usage is not None and response.usage.output_tokens == 6
    assert response.usage.total_tokens == response.usage.input_tokens + 6
    assert response.instructions == "Be brief." and response.max_output_tokens == 50
    sent = fake.chat_requests[-1]
    assert sent["messages"] == [{"role": "user", "content": "Be brief.\n\nHello"}]
    assert (sent["max_tokens"], sent["temperature"]) == (50, 0)
    again = client.responses.retrieve(response.id)
    assert again.model_dump() == response.model_dump()


def test_previous_response_id_continues_without_the_old_instructions(
    client: openai.OpenAI, fake: FakeSGLang
) -> None:
    first = client.responses.create(model=MODEL, input="My name is Ada.", instructions="Be kind.")
    fake.reply_tokens = ["Ada", "."]
    second = client.responses.create(
        model=MODEL, input="What is my name?", previous_response_id=first.id
    )
    assert second.output_text == "Ada." and second.previous_response_id == first.id
    assert fake.chat_requests[-1]["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello from the fake SGLang."},
        {"role": "user", "content": "What is my name?"},
    ]
    items = client.responses.input_items.list(second.id)
    assert [item.type for item in items.data] == ["message"]


def test_unknown_previous_response_and_store_false(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_nope")
    assert raised.value.param == "previous_response_id"
    assert raised.value.code == "previous_response_not_found"
    unstored = client.responses.create(model=MODEL, input="hi", store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODEL, input="more", previous_response_id=unstored.id)


def test_delete(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="hi")
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)


def test_stream_events_in_the_documented_order(client: openai.OpenAI, fake: FakeSGLang) -> None:
    with client.responses.stream(model=MODEL, input="Hello") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "Hello from the fake SGLang." and len(deltas) == 6
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == "Hello from the fake SGLang." and final.usage is not None
    # Stored once the stream ended: a retrieve right after finds it.
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_a_function_call_loop(client: openai.OpenAI, fake: FakeSGLang) -> None:
    script(fake, '{"name": "add", "parameters": {"a": 2, "b": 3}}')
    first = client.responses.create(model=MODEL, input="2+3?", tools=[ADD])  # type: ignore[list-item]
    (call,) = first.output
    assert call.type == "function_call" and call.name == "add"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert json.loads(call.arguments) == {"a": 2, "b": 3}
    assert first.tools[0].name == "add"  # type: ignore[union-attr]
    fake.reply_tokens = ["5", "."]
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "5"}],
        tools=[ADD],  # type: ignore[list-item]
    )
    assert second.output_text == "5."
    messages = fake.chat_requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert json.loads(messages[1]["content"]) == {"name": "add", "parameters": {"a": 2, "b": 3}}
    assert messages[2]["content"] == "Result of add:\n```tool_output\n5\n```"


def test_a_required_call_streams_its_arguments(client: openai.OpenAI, fake: FakeSGLang) -> None:
    script(fake, '{"name": "add", "parameters": {"a": 1, "b": 2}}', 3)
    with client.responses.stream(
        model=MODEL,
        input="1+2?",
        tools=[ADD],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "add"},
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    pieces = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(pieces) > 3 and json.loads("".join(pieces)) == {"a": 1, "b": 2}
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done[0].arguments == "".join(pieces)
    assert final.output[0].type == "function_call"
    assert fake.chat_requests[-1]["response_format"]["type"] == "json_schema"


def test_text_format_json_schema(client: openai.OpenAI, fake: FakeSGLang) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model=MODEL,
        input="Where?",
        text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}},
    )
    assert json.loads(response.output_text) == {"city": "fake"}
    sent = fake.chat_requests[-1]["response_format"]
    assert sent == {
        "type": "json_schema",
        "json_schema": {"name": "place", "schema": schema, "strict": True},
    }
    assert response.text is not None and response.text.format.type == "json_schema"  # type: ignore[union-attr]


def test_input_items_images_and_files(client: openai.OpenAI, fake: FakeSGLang) -> None:
    import base64

    png = base64.b64encode(encode(marked(64, 48), "PNG")).decode()
    text = base64.b64encode(b"line one\nline two").decode()
    response = client.responses.create(
        model=MODEL,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Describe"},
                    {"type": "input_image", "image_url": f"data:image/png;base64,{png}"},
                    {
                        "type": "input_file",
                        "filename": "notes.txt",
                        "file_data": f"data:text/plain;base64,{text}",
                    },
                ],
            }
        ],
    )
    assert response.status == "completed"
    parts = fake.chat_requests[-1]["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": "Describe"}
    assert parts[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")  # prepared
    assert parts[2] == {"type": "text", "text": "notes.txt:\nline one\nline two"}
    listed = client.responses.input_items.list(response.id, order="asc")
    (item,) = listed.data
    assert [part.type for part in item.content] == ["input_text", "input_image", "input_file"]  # type: ignore[union-attr]


def test_stored_media_are_sent_again_as_prepared(client: openai.OpenAI, fake: FakeSGLang) -> None:
    import base64

    png = base64.b64encode(encode(marked(64, 48), "PNG")).decode()
    first = client.responses.create(
        model=MODEL,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": f"data:image/png;base64,{png}"},
                    {"type": "input_text", "text": "What is it?"},
                ],
            }
        ],
    )
    prepared = fake.chat_requests[-1]["messages"][0]["content"][0]["image_url"]["url"]
    client.responses.create(model=MODEL, input="And now?", previous_response_id=first.id)
    again = fake.chat_requests[-1]["messages"][0]["content"][0]["image_url"]["url"]
    assert again == prepared  # the same JPEG, not decoded and encoded a second time


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "hi", "background": True}, "background"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].file_id",
        ),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "input_file",
                                "file_data": "data:application/pdf;base64,JVBERi0=",
                            }
                        ],
                    }
                ]
            },
            "input[0].content[0].file_data",
        ),
        ({"input": "hi", "max_output_tokens": 10**6}, "max_output_tokens"),
        (
            {"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]},
            "input[0].call_id",
        ),
        ({}, "input"),
    ],
)
def test_errors_name_the_responses_field(
    http: httpx.Client, fake: FakeSGLang, body: dict[str, Any], param: str
) -> None:
    before = len(fake.chat_requests)
    response = http.post("/v1/responses", json={"model": MODEL, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    assert len(fake.chat_requests) == before


def test_a_failure_mid_stream_is_response_failed(client: openai.OpenAI, fake: FakeSGLang) -> None:
    fake.fault = "error_mid_stream"
    with client.responses.stream(model=MODEL, input="Hello") as stream:
        events = list(stream)
    assert events[-2].type == "error"
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed" and events[-1].response.error is not None


def test_the_store_is_a_sqlite_file_that_outlives_the_gateway(
    fake: FakeSGLang, tmp_path: Path
) -> None:
    path = tmp_path / "store" / "responses.sqlite3"
    ids = []
    for _ in range(2):
        server = ServerThread(create_app(gateway_settings(fake, responses_store_path=str(path))))
        server.start()
        try:
            with openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as sdk:
                for response_id in ids:  # made by the gateway before this one
                    assert sdk.responses.retrieve(response_id).status == "completed"
                ids.append(sdk.responses.create(model=MODEL, input="hi").id)
        finally:
            server.stop()
    assert path.is_file()
