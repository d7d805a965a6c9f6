"""End to end: the official `openai` SDK (sync and async, streaming and not) through the gateway
to the fake SGLang, asserting both what the client got and what SGLang was sent."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import openai
import orjson
import pytest
from conftest import MODEL, ServerThread, gateway_settings, wait_for_log
from fake_sglang import FakeSGLang

from app import create_app
from gateway.server.request_context import RequestIdFilter

REPLY = "Hello from the fake SGLang."
ID_PATTERN = re.compile(r"^chatcmpl-[0-9a-f]{32}$")


def test_non_streaming_completion_is_openai_shaped(client: openai.OpenAI, fake: FakeSGLang) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello"}]
    )
    assert ID_PATTERN.match(completion.id)
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len(fake.reply_tokens)
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    raw = completion.model_dump(exclude_unset=True)  # what the gateway sent, not SDK defaults
    assert "metadata" not in raw
    assert "reasoning_tokens" not in raw["usage"]
    assert "matched_stop" not in raw["choices"][0]
    assert "reasoning_content" not in raw["choices"][0]["message"]


def test_streaming_chunks_are_openai_shaped(client: openai.OpenAI, fake: FakeSGLang) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    ids = {chunk.id for chunk in chunks}
    assert len(ids) == 1 and ID_PATTERN.match(ids.pop())
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk.model == MODEL for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == len(fake.reply_tokens)
    assert "reasoning_tokens" not in usage_chunk.usage.model_dump()
    # The token counts are SGLang's, passed through, never estimated by the gateway.
    assert fake.chat_requests[-1]["stream_options"] == {"include_usage": True}


def test_stream_without_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)


def test_raw_stream_framing_and_done(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read()
    events = raw.split(b"\n\n")
    assert events[-1] == b""
    assert events[-2] == b"data: [DONE]"
    for event in events[:-2]:
        assert event.startswith(b"data: {")
        chunk = orjson.loads(event[6:])
        for choice in chunk["choices"]:
            assert "matched_stop" not in choice
            assert None not in choice["delta"].values()


@pytest.mark.anyio
async def test_async_sdk_streaming_and_not(gateway: ServerThread) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0
    ) as sdk:
        completion = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == REPLY
        stream = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == REPLY


def test_n_choices_and_stop(client: openai.OpenAI, fake: FakeSGLang) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2, stop=[" fake"]
    )
    assert [c.index for c in completion.choices] == [0, 1]
    assert all(c.message.content == "Hello from the" for c in completion.choices)
    assert all(c.finish_reason == "stop" for c in completion.choices)
    assert fake.chat_requests[-1]["stop"] == [" fake"]
    assert fake.chat_requests[-1]["n"] == 2


def test_max_tokens_default_limit_and_precedence(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang
) -> None:
    server = make_gateway(default_max_tokens=3, max_tokens_limit=100)
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as sdk:
        completion = sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage is not None and completion.usage.completion_tokens == 3
        assert fake.chat_requests[-1]["max_tokens"] == 3

        sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=50,
            max_completion_tokens=7,
        )
        assert fake.chat_requests[-1]["max_tokens"] == 7
        assert "max_completion_tokens" not in fake.chat_requests[-1]

        with pytest.raises(openai.BadRequestError) as caught:
            sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=101
            )
        assert caught.value.body["param"] == "max_tokens"  # type: ignore[index]


def test_only_vetted_fields_reach_sglang(http: httpx.Client, fake: FakeSGLang) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi", "name": "bob"}],
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 7,
        "logprobs": True,
        "top_logprobs": 2,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True},
        },
        "top_k": 40,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        # Extras that reach SGLang's internals, and fields Gemma 3n cannot use:
        "rid": "steal-this-id",
        "input_ids": [1, 2, 3],
        "lora_path": "/etc/passwd",
        "custom_logit_processor": "x",
        "return_hidden_states": True,
        "session_params": {"id": "x"},
        "chat_template_kwargs": {"chat_template": "{{ evil }}"},
        "priority": 100,
        "tool_choice": "auto",
        "made_up_field": 1,
    }
    headers = {"X-Data-Parallel-Rank": "3", "x-sglext-foo": "1", "x-override-bar": "1"}
    response = http.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    sent = fake.chat_requests[-1]
    assert sent == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2048,
        "logprobs": True,
        "seed": 7,
        "temperature": 0.2,
        "top_logprobs": 2,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True},
        },
    }
    upstream_headers = fake.requests[-1].headers
    for name in ("x-data-parallel-rank", "x-sglext-foo", "x-override-bar"):
        assert name not in upstream_headers


def test_conversation_is_normalised_for_gemma(client: openai.OpenAI, fake: FakeSGLang) -> None:
    client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "First."},
            {"role": "user", "content": [{"type": "text", "text": "Second."}]},
            {"role": "assistant", "content": "Answer."},
            {"role": "system", "content": "New rule."},
            {"role": "user", "content": "Third."},
        ],
    )
    assert fake.chat_requests[-1]["messages"] == [
        {"role": "user", "content": "Be brief.\n\nFirst.\n\nSecond."},
        {"role": "assistant", "content": "Answer."},
        {"role": "user", "content": "New rule.\n\nThird."},
    ]


def test_request_id_is_echoed_or_generated(http: httpx.Client) -> None:
    response = http.get("/v1/models", headers={"X-Request-ID": "client-id-42"})
    assert response.headers["x-request-id"] == "client-id-42"
    generated = http.get("/v1/models").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    injected = http.get("/v1/models", headers={"X-Request-ID": "a b\tinjected: yes"})
    assert re.fullmatch(r"[0-9a-f]{32}", injected.headers["x-request-id"])
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with http.stream(
        "POST", "/v1/chat/completions", json=body, headers={"X-Request-ID": "stream-7"}
    ) as streamed:
        assert streamed.headers["x-request-id"] == "stream-7"
        streamed.read()
    error = http.post("/v1/chat/completions", json={}, headers={"X-Request-ID": "err-1"})
    assert error.headers["x-request-id"] == "err-1"


def test_request_id_in_log_lines(http: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    caplog.handler.addFilter(RequestIdFilter())
    http.post(
        "/v1/chat/completions",
        json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
        headers={"X-Request-ID": "trace-me-1"},
    )
    wait_for_log(caplog, lambda r: r.name == "gateway.access")
    mine = [r for r in caplog.records if getattr(r, "request_id", None) == "trace-me-1"]
    assert {r.name for r in mine} >= {"gateway", "gateway.access"}


def test_models_endpoints(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].object == "model"
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-4o")
    assert caught.value.code == "model_not_found"


def test_an_unexpected_error_is_a_clean_500_with_the_request_id(
    fake: FakeSGLang, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(gateway_settings(fake))

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    server = ServerThread(app)
    server.start()
    try:
        caplog.set_level("INFO")
        with httpx.Client(base_url=server.url) as http:
            response = http.get("/v1/boom", headers={"X-Request-ID": "boom-1"})
        assert response.status_code == 500
        assert response.headers["x-request-id"] == "boom-1"
        assert response.json() == {
            "error": {
                "message": "The gateway failed to handle the request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
        assert "secret" not in response.text
        lines = wait_for_log(caplog, lambda r: r.name == "gateway.access")
        assert lines[-1].getMessage().startswith("GET /v1/boom 500 ")
    finally:
        server.stop()
