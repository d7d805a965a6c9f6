"""Self-test of the fake SGLang (`tests/fake_sglang.py`): it must act like the real one.

Raw `httpx` checks the wire (status, headers, SSE framing, dropped sockets); the `openai` SDK
checks that an OpenAI client accepts what the fake says, SGLang's extra keys included.
"""

from __future__ import annotations

import base64
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import audio_factory
import httpx
import openai
import orjson
import pytest
import sglang_cases
from conftest import eventually
from fake_sglang import FakeSGLang

MODEL = "google/gemma-3n-E4B-it"
HELLO = [{"role": "user", "content": "Say hello to me"}]  # 4 words: 14 prompt tokens
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
WAV = base64.b64encode(b"RIFF\0\0\0\0WAVEfmt " + b"\0" * 16).decode()


@pytest.fixture(scope="module")
def server() -> Iterator[FakeSGLang]:
    with FakeSGLang() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeSGLang) -> Iterator[FakeSGLang]:
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def client(fake: FakeSGLang) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=5) as http:
        yield http


@pytest.fixture
def sdk(fake: FakeSGLang) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{fake.url}/v1", api_key="unused", max_retries=0) as oai:
        yield oai


def chat(client: httpx.Client, **fields: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, **fields})


def read_events(response: httpx.Response) -> list[Any]:
    """The data of every SSE event, parsed, with "[DONE]" kept as a string."""
    events: list[Any] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else orjson.loads(data))
    return events


def stream_events(client: httpx.Client, **fields: Any) -> list[Any]:
    body = {"model": MODEL, "messages": HELLO, "stream": True, **fields}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        return read_events(response)


def contents(events: list[Any], index: int = 0) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for event in events
        if isinstance(event, dict) and "choices" in event
        for choice in event["choices"]
        if choice["index"] == index
    )


# -- health, discovery, auth, lifecycle ---------------------------------------------------------


def test_probes_discovery_and_inert_admin_paths(fake: FakeSGLang, client: httpx.Client) -> None:
    started = time.monotonic()
    assert client.get("/health").status_code == 200
    assert client.get("/health_generate").status_code == 200
    assert time.monotonic() - started >= 0.4  # each one stands for a real generation
    assert fake.health_generate_calls == 2
    ready = client.get("/ready")
    assert (ready.status_code, ready.content) == (200, b"")

    info = client.get("/model_info").json()
    assert info == client.get("/get_model_info").json()
    assert info["model_type"] == "gemma3n"
    assert info["architectures"] == ["Gemma3nForConditionalGeneration"]
    assert info["has_image_understanding"] is info["has_audio_understanding"] is True
    assert {"model_path", "served_model_name", "tokenizer_path", "weight_version"} <= info.keys()

    (card,) = client.get("/v1/models").json()["data"]
    assert (card["id"], card["object"], card["owned_by"]) == (MODEL, "model", "sglang")
    assert card["max_model_len"] == 32768

    flushed = client.post("/flush_cache")
    assert (flushed.status_code, flushed.json()) == (200, {})
    assert [r.path for r in fake.requests][-1] == "/flush_cache"
    assert fake.requests[-1].headers["host"].startswith("127.0.0.1:")


def test_loading_answers_503_with_an_empty_body(fake: FakeSGLang, client: httpx.Client) -> None:
    fake.state = "loading"
    for response in (client.get("/ready"), client.get("/health"), chat(client)):
        assert (response.status_code, response.content) == (503, b"")
    fake.state = "ready"
    assert chat(client).status_code == 200
    with pytest.raises(ValueError, match="state"):
        fake.state = "warming"


def test_api_key_guards_everything_but_the_probes() -> None:
    with FakeSGLang(api_key="sk-upstream") as fake, httpx.Client(base_url=fake.url) as client:
        refused = chat(client)
        assert (refused.status_code, refused.json()) == (401, {"error": "Unauthorized"})
        assert client.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/ready").status_code == 200
        assert client.get("/metrics").status_code == 200
        ok = client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": HELLO},
            headers={"Authorization": "Bearer sk-upstream"},
        )
        assert ok.status_code == 200
        assert fake.requests[0].headers.get("authorization") is None


def test_stop_refuses_connections_and_start_reuses_the_port() -> None:
    fake = FakeSGLang()
    fake.start()
    port = fake.port
    fake.token_delay = 5  # a stream in flight must not hold stop() up
    with httpx.Client(base_url=fake.url, timeout=5) as client:
        body = {"model": MODEL, "messages": HELLO, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            next(lines)
            started = time.monotonic()
            fake.stop()
            assert time.monotonic() - started < 2
            with pytest.raises(httpx.TransportError):  # reset or cut short, never a clean end
                for _ in lines:
                    pass
        assert fake.disconnects == 0  # dropped by the server, not by the client
        with pytest.raises(httpx.ConnectError):
            client.get("/ready")
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
            pass
        fake.start()
        try:
            assert fake.port == port
            fake.token_delay = 0
            assert client.get("/ready").status_code == 200
            assert chat(client).status_code == 200
        finally:
            fake.stop()
    fake.stop()  # idempotent


# -- non-stream ---------------------------------------------------------------------------------


def test_completion_is_sglang_shaped(fake: FakeSGLang, client: httpx.Client) -> None:
    response = chat(client, model="whatever-the-client-says")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert re.fullmatch(r"[0-9a-f]{32}", body["id"])
    assert body["object"] == "chat.completion"
    assert body["model"] == "whatever-the-client-says"  # echoed, never validated
    (choice,) = body["choices"]
    assert choice == {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": "Hello from the fake SGLang.",
            "reasoning_content": None,
            "tool_calls": None,
        },
        "logprobs": None,
        "finish_reason": "stop",
        "matched_stop": 106,
    }
    assert body["usage"] == {
        "prompt_tokens": 14,
        "total_tokens": 20,
        "completion_tokens": 6,
        "prompt_tokens_details": None,
        "reasoning_tokens": 0,
    }
    assert fake.chat_requests == [{"model": "whatever-the-client-says", "messages": HELLO}]
    assert fake.active_chat_requests == 0


def test_openai_sdk_reads_a_completion(fake: FakeSGLang, sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=50)
    assert completion.choices[0].message.content == "Hello from the fake SGLang."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].model_extra == {"matched_stop": 106}
    assert completion.choices[0].message.model_extra == {"reasoning_content": None}
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 6
    assert fake.chat_requests[0]["max_tokens"] == 50


def test_max_tokens_n_and_stop(client: httpx.Client) -> None:
    cut = chat(client, max_tokens=3).json()
    assert cut["choices"][0]["message"]["content"] == "Hello from the"
    assert (cut["choices"][0]["finish_reason"], cut["choices"][0]["matched_stop"]) == (
        "length",
        None,
    )
    assert cut["usage"]["completion_tokens"] == 3
    wins = chat(client, max_tokens=1, max_completion_tokens=2).json()
    assert wins["choices"][0]["message"]["content"] == "Hello from"
    exact = chat(client, max_tokens=6).json()  # no room left for the end-of-turn token
    assert exact["choices"][0]["finish_reason"] == "length"

    two = chat(client, n=2).json()
    assert [c["index"] for c in two["choices"]] == [0, 1]
    assert {c["message"]["content"] for c in two["choices"]} == {"Hello from the fake SGLang."}
    assert two["usage"]["completion_tokens"] == 12
    assert two["usage"]["prompt_tokens"] == 14

    stopped = chat(client, stop=[" fake", "zzz"]).json()["choices"][0]
    assert stopped["message"]["content"] == "Hello from the"
    assert (stopped["finish_reason"], stopped["matched_stop"]) == ("stop", " fake")
    assert chat(client, stop=" from").json()["choices"][0]["matched_stop"] == " from"


def test_media_parts_cost_tokens(client: httpx.Client) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{WAV}"}},
        {"type": "input_audio", "input_audio": {"data": WAV, "format": "wav"}},
    ]
    usage = chat(client, messages=[{"role": "user", "content": content}]).json()["usage"]
    assert usage["prompt_tokens"] == 10 + 3 + 260 + 2 * 188
    assert usage["prompt_tokens_details"] == {
        "cached_tokens": 0,
        "image_tokens": 256,
        "audio_tokens": 376,
    }


def test_capabilities_follow_the_constructor() -> None:
    fake = FakeSGLang(has_image_understanding=False, served_model_name="gemma")
    with fake, httpx.Client(base_url=fake.url) as client:
        assert client.get("/model_info").json()["has_image_understanding"] is False
        assert client.get("/v1/models").json()["data"][0]["id"] == "gemma"
        part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
        refused = chat(client, messages=[{"role": "user", "content": [part]}])
        assert refused.status_code == 400


# -- errors SGLang answers before generating ----------------------------------------------------


def assert_flat_400(response: httpx.Response, error_type: str, message: str = "") -> None:
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"object", "message", "type", "param", "code"}  # no {"error": ...}
    assert (body["object"], body["type"], body["param"], body["code"]) == (
        "error",
        error_type,
        None,
        400,
    )
    assert message in body["message"]


def test_schema_errors_are_flat_400s(fake: FakeSGLang, client: httpx.Client) -> None:
    as_text = client.post(
        "/v1/chat/completions", content=b'{"messages": []}', headers={"content-type": "text/plain"}
    )
    assert_flat_400(as_text, "Bad Request", "application/json")
    not_json = client.post(
        "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert_flat_400(not_json, "Bad Request")
    assert_flat_400(client.post("/v1/chat/completions", json={"model": MODEL}), "Bad Request")
    bad_part = [{"type": "file", "file": {"file_id": "x"}}]
    assert_flat_400(chat(client, messages=[{"role": "user", "content": bad_part}]), "Bad Request")
    flac = [{"type": "input_audio", "input_audio": {"data": WAV, "format": "flac"}}]
    assert_flat_400(chat(client, messages=[{"role": "user", "content": flac}]), "Bad Request")
    assert len(fake.requests) == 5  # recorded even when refused
    assert (fake.requests[1].body, fake.requests[1].json) == (b"{nope", None)


@pytest.mark.parametrize(
    "roles",
    [
        ["assistant"],
        ["user", "user"],
        ["developer", "user"],
        ["system", "user", "tool"],
        ["user", "assistant", "tool"],
        ["user", "system"],
    ],
)
def test_gemma_template_refuses_roles_out_of_turn(client: httpx.Client, roles: list[str]) -> None:
    messages = [{"role": role, "content": "hi"} for role in roles]
    assert_flat_400(chat(client, messages=messages), "BadRequest", "roles must alternate")


def test_gemma_template_accepts_system_then_alternating_turns(client: httpx.Client) -> None:
    roles = ["system", "user", "assistant", "user"]
    messages = [{"role": role, "content": "hi"} for role in roles]
    assert chat(client, messages=messages).status_code == 200


def test_lora_names_media_urls_and_context_are_refused(client: httpx.Client) -> None:
    assert_flat_400(chat(client, model=f"{MODEL}:adapter"), "BadRequestError", "LoRA")
    for url in ("https://example.com/cat.png", "file:///etc/passwd", "data:image/png;base64,@@"):
        part = {"type": "image_url", "image_url": {"url": url}}
        refused = chat(client, messages=[{"role": "user", "content": [part]}])
        assert_flat_400(refused, "BadRequestError", "Error while loading data")
    not_an_image = base64.b64encode(b"plain text").decode()
    part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{not_an_image}"}}
    assert_flat_400(chat(client, messages=[{"role": "user", "content": [part]}]), "BadRequestError")
    huge = [{"role": "user", "content": "word " * 33000}]
    assert_flat_400(chat(client, messages=huge), "BadRequestError", "longer than the model's")


# -- streams ------------------------------------------------------------------------------------


def test_stream_order_and_shape(fake: FakeSGLang, client: httpx.Client) -> None:
    fake.compact_chunks = False  # the pydantic era's chunks: every key, "usage": null
    events = stream_events(client, model="echo-me")
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert re.fullmatch(r"[0-9a-f]{32}", chunks[0]["id"])
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {"echo-me"}
    first, *middle, last = (c["choices"][0] for c in chunks)
    assert first["delta"] == {
        "role": "assistant",
        "content": "",
        "reasoning_content": None,
        "tool_calls": None,
    }
    assert [m["delta"]["content"] for m in middle] == [
        "Hello",
        " from",
        " the",
        " fake",
        " SGLang",
        ".",
    ]
    assert all(m["delta"]["role"] is None and m["finish_reason"] is None for m in middle)
    assert all(c["usage"] is None for c in chunks)
    assert fake.disconnects == 0  # a stream read to its end is no disconnect
    assert (last["finish_reason"], last["matched_stop"], last["delta"]["content"]) == (
        "stop",
        106,
        None,
    )


def test_stream_usage_chunk_and_compact_chunks(fake: FakeSGLang, client: httpx.Client) -> None:
    events = stream_events(client, stream_options={"include_usage": True}, max_tokens=2)
    *_, finish, usage, done = events
    assert done == "[DONE]"
    assert finish["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 2
    assert usage["usage"]["total_tokens"] == 16

    assert fake.compact_chunks  # the default: what SGLang 0.5.21 sends
    first, token, finish, _ = stream_events(client, max_tokens=1)
    assert first["choices"][0]["delta"] == {
        "reasoning_content": None,
        "role": "assistant",
        "content": "",
    }
    assert token["choices"][0]["delta"] == {"reasoning_content": None, "content": "Hello"}
    assert finish["choices"][0]["delta"] == {"reasoning_content": None}
    assert "usage" not in token


def test_stream_with_n_interleaves_choices(client: httpx.Client) -> None:
    events = stream_events(client, n=2, max_tokens=2)
    indices = [e["choices"][0]["index"] for e in events[:-1]]
    # role 0, token 0, role 1, token 1, token 0, token 1, finish 0, finish 1
    assert indices == [0, 0, 1, 1, 0, 1, 0, 1]
    assert contents(events, 0) == contents(events, 1) == "Hello from"


def test_openai_sdk_reads_a_stream(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    with stream:
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake SGLang."
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_stream_headers_wait_for_the_first_token(fake: FakeSGLang, client: httpx.Client) -> None:
    fake.ttft = 0.4
    body = {"model": MODEL, "messages": HELLO, "stream": True}
    started = time.monotonic()
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        elapsed = time.monotonic() - started
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.status_code == 200
        assert read_events(response)[-1] == "[DONE]"
    assert 0.35 <= elapsed < 1.5

    fake.ttft, fake.token_delay = 0, 0.05
    started = time.monotonic()
    stream_events(client)
    assert time.monotonic() - started >= 0.25  # five gaps between six tokens


# -- disconnects --------------------------------------------------------------------------------


def test_client_leaving_a_stream_is_noticed(fake: FakeSGLang, client: httpx.Client) -> None:
    fake.token_delay = 5
    body = {"model": MODEL, "messages": HELLO, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        assert "Hello" in next(line for line in lines if "Hello" in line)
        assert fake.active_chat_requests == 1
        started = time.monotonic()
    assert fake.wait_for_disconnect(2)
    assert time.monotonic() - started < 0.5  # noticed while sleeping between tokens
    assert fake.disconnects == 1
    assert fake.active_chat_requests == 0  # counted off together with the disconnect


def test_client_leaving_a_completion_is_noticed(fake: FakeSGLang, client: httpx.Client) -> None:
    fake.generation_time = 5
    assert not fake.wait_for_disconnect(0)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO}, timeout=0.3)
    assert fake.wait_for_disconnect(1)
    assert fake.disconnects == 1
    assert fake.active_chat_requests == 0


# -- faults -------------------------------------------------------------------------------------


def test_error_mid_stream(fake: FakeSGLang, client: httpx.Client, sdk: openai.OpenAI) -> None:
    fake.fault = "error_mid_stream"
    events = stream_events(client)
    assert contents(events) == "Hello from"
    assert events[-2]["error"] == {
        "object": "error",
        "message": events[-2]["error"]["message"],
        "type": "InternalServerError",
        "param": None,
        "code": 500,
    }
    assert events[-1] == "[DONE]"
    with pytest.raises(openai.APIError):
        list(sdk.chat.completions.create(model=MODEL, messages=HELLO, stream=True))
    non_stream = chat(client)
    assert non_stream.status_code == 500
    assert non_stream.json()["type"] == "InternalServerError"


def test_overload(fake: FakeSGLang, client: httpx.Client) -> None:
    fake.fault = "overload"
    events = stream_events(client)
    assert len(events) == 2
    assert events[1] == "[DONE]"
    assert (events[0]["error"]["type"], events[0]["error"]["code"]) == ("SERVICE_UNAVAILABLE", 503)
    refused = chat(client)
    assert refused.status_code == 503
    assert refused.json()["type"] == "SERVICE_UNAVAILABLE"


def test_error_500_carries_a_traceback(fake: FakeSGLang, client: httpx.Client) -> None:
    fake.fault = "error_500"
    response = chat(client, stream=True)
    assert response.status_code == 500
    assert response.json()["message"].startswith("Traceback (most recent call last):")
    assert "ValueError: boom" in response.json()["message"]


def test_garbage_and_truncated_bodies(fake: FakeSGLang, client: httpx.Client) -> None:
    fake.fault = "garbage"
    garbage = chat(client)
    assert garbage.status_code == 200
    assert garbage.headers["content-type"] == "application/json"
    assert garbage.content == b"<html>not json</html>"
    fake.fault = "truncated"
    with pytest.raises(httpx.RemoteProtocolError):
        chat(client)
    fake.fault = "kill_mid_stream"  # a non-stream request dies the same way
    with pytest.raises(httpx.RemoteProtocolError):
        chat(client)


def test_kill_mid_stream_drops_the_socket(fake: FakeSGLang, client: httpx.Client) -> None:
    fake.fault, fake.fault_after_tokens = "kill_mid_stream", 3
    body = {"model": MODEL, "messages": HELLO, "stream": True}
    seen: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        seen.extend(response.iter_lines())
    assert "".join(seen).count('"content":"') == 4  # the role chunk and three tokens
    assert "[DONE]" not in "".join(seen)
    fake.fault = None
    assert chat(client).status_code == 200  # the next connection is fine


def test_truncated_and_garbage_mid_stream(fake: FakeSGLang, client: httpx.Client) -> None:
    fake.fault, fake.fault_after_tokens = "truncated_mid_stream", 2
    body = {"model": MODEL, "messages": HELLO, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        text = response.read()  # a clean end of the chunked body: no transport error
    assert text.count(b'"content":"') == 3  # the role chunk and two tokens
    assert b'finish_reason":"stop' not in text
    assert b"[DONE]" not in text

    fake.fault = "garbage_mid_stream"
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[3] == "data: <html>oops"  # after the role chunk and two tokens
    assert lines[-1] == "data: [DONE]"
    assert "".join(lines).count('"content":"') == 7  # every token still follows

    fake.fault = "truncated_mid_stream"  # a non-stream request is cut like "truncated"
    with pytest.raises(httpx.RemoteProtocolError):
        chat(client)


def test_reset_reused_connections(fake: FakeSGLang, client: httpx.Client) -> None:
    fake.reset_reused_connections = 1
    assert chat(client).status_code == 200  # a new connection is never reset
    assert client.get("/ready").status_code == 200  # only chat requests are
    with pytest.raises(httpx.ReadError, match="reset"):  # the keep-alive connection, reused
        chat(client)
    assert fake.connection_resets == 1
    assert fake.reset_reused_connections == 0
    assert len(fake.chat_requests) == 2  # the reset request was recorded first
    assert fake.active_chat_requests == 0
    assert chat(client).status_code == 200  # a fresh connection, and the knob is used up
    assert chat(client).status_code == 200  # reused, but the knob is used up
    fake.reset()
    assert fake.connection_resets == 0


def test_start_together_holds_requests_until_the_batch_is_in_flight(fake: FakeSGLang) -> None:
    fake.start_together = 3
    done: list[float] = []

    def one(stream: bool) -> None:
        with httpx.Client(base_url=fake.url, timeout=10) as http:
            if stream:
                assert stream_events(http)[-1] == "[DONE]"
            else:
                assert chat(http).status_code == 200
        done.append(time.monotonic())

    workers = [threading.Thread(target=one, args=(i == 0,)) for i in range(3)]
    for worker in workers[:2]:
        worker.start()
    assert eventually(lambda: fake.active_chat_requests == 2)
    time.sleep(0.3)
    assert done == []  # two of three: both held, stream or not
    released = time.monotonic()
    workers[2].start()
    for worker in workers:
        worker.join(timeout=5)
    assert len(done) == 3 and min(done) >= released
    with httpx.Client(base_url=fake.url, timeout=5) as http:
        assert chat(http).status_code == 200  # once started, the batch stays started


def test_hang_until_the_client_leaves(fake: FakeSGLang, client: httpx.Client) -> None:
    fake.fault = "hang"
    with pytest.raises(httpx.ReadTimeout):
        client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": HELLO, "stream": True},
            timeout=0.3,
        )
    assert fake.wait_for_disconnect(1)


def test_abort_and_context_overflow(fake: FakeSGLang, client: httpx.Client) -> None:
    fake.fault = "abort"
    aborted = chat(client).json()["choices"][0]
    assert (aborted["finish_reason"], aborted["matched_stop"]) == ("abort", None)
    assert aborted["message"]["content"] == "Hello from"
    last = stream_events(client)[-2]["choices"][0]
    assert last["finish_reason"] == "abort"
    fake.fault = "context_overflow"
    assert_flat_400(
        chat(client),
        "BadRequestError",
        "The input (40000 tokens) is longer than the model's context length (32768 tokens).",
    )


def test_fault_count_limits_a_fault_to_the_next_requests(
    fake: FakeSGLang, client: httpx.Client
) -> None:
    fake.fault, fake.fault_count = "overload", 2
    assert [chat(client).status_code for _ in range(3)] == [503, 503, 200]
    assert fake.fault_count == 0
    with pytest.raises(ValueError, match="unknown fault"):
        fake.fault = "explode"
    fake.reset()
    assert (fake.fault, fake.fault_count, fake.requests) == (None, None, [])


# -- calibration: the answers recorded from real SGLang 0.5.21 ------------------------------------


CALIBRATION_KEY = "sk-calibration"


@pytest.fixture(scope="module")
def keyed_fake() -> Iterator[FakeSGLang]:
    with FakeSGLang(api_key=CALIBRATION_KEY) as fake:
        yield fake


@pytest.mark.parametrize("name", list(sglang_cases.load_fixture()["responses"]))
def test_fake_answers_like_the_recorded_real_sglang(keyed_fake: FakeSGLang, name: str) -> None:
    """Same status, content type and body shape as real SGLang 0.5.21 gave for this request
    (tests/fixtures/real_sglang_0.5.21.json, recorded by tests/real_sglang/test_raw_sglang.py)."""
    keyed_fake.reset()
    recorded = sglang_cases.load_fixture()["responses"][name]
    case = sglang_cases.cases()[name]
    headers = {"Authorization": f"Bearer {CALIBRATION_KEY}"} if case.authorized else {}
    with httpx.Client(base_url=keyed_fake.url, timeout=10) as http:
        response = http.request(case.method, case.path, json=case.body, headers=headers)
    content_type = response.headers.get("content-type")
    if content_type and content_type.startswith("text/event-stream"):
        body: Any = sglang_cases.parse_sse(response.text)
    elif content_type and content_type.startswith("application/json"):
        body = response.json()
    else:
        body = response.text
    assert (response.status_code, content_type) == (recorded["status"], recorded["content_type"])
    assert sglang_cases.shape(body) == recorded["shape"]
    if isinstance(body, dict) and isinstance(recorded.get("body"), dict):
        for key in ("object", "type", "code", "error"):  # error kinds, not only their shapes
            assert body.get(key) == recorded["body"].get(key)


def test_a_clip_over_30_seconds_crashes_the_server_like_sglang_0_5_21() -> None:
    # Real SGLang 0.5.21: "RuntimeError: numel: integer multiplication overflow" in its
    # scheduler, the connection drops without an answer, and the whole server exits.
    clip = audio_factory.encode(audio_factory.silence(31), "wav")
    part = {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(clip).decode(), "format": "wav"},
    }
    with FakeSGLang() as fake, httpx.Client(base_url=fake.url, timeout=10) as client:
        thirty = {**part, "input_audio": {"data": WAV, "format": "wav"}}
        assert chat(client, messages=[{"role": "user", "content": [thirty]}]).status_code == 200
        with pytest.raises(httpx.TransportError):
            chat(client, messages=[{"role": "user", "content": [part]}])
        assert fake.crashes == 1
        with pytest.raises(httpx.ConnectError):
            client.get("/ready")
