"""Bad input and upstream failures: every one answered with the right status and OpenAI's body,
never a 500 with a stack trace, and nothing sent to SGLang for input the gateway can refuse."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson
import pytest
from conftest import MODEL, ServerThread, no_new_chat_requests
from fake_sglang import FakeSGLang

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hi"}]


def assert_openai_error(
    response: httpx.Response, status: int, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["code"] is None or isinstance(error["code"], str)
    assert "Traceback" not in response.text
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"model": MODEL}, "messages", "Missing required parameter"),
        ({"messages": HELLO}, "model", "Missing required parameter"),
        ({"model": MODEL, "messages": []}, "messages", "at least 1"),
        ({"model": MODEL, "messages": "hi"}, "messages", "array"),
        ({"model": MODEL, "messages": [{"role": "user"}]}, "messages[0].content", "Missing"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": []}]},
            "messages[0].content",
            "at least 1",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            "a string or an array",
        ),
        (
            {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
            "'user'",
        ),
        ({"model": MODEL, "messages": [{"content": "x"}]}, "messages[0].role", "Missing"),
        ({"model": MODEL, "messages": HELLO, "temperature": "hot"}, "temperature", "number"),
        ({"model": MODEL, "messages": HELLO, "temperature": 2.5}, "temperature", "2"),
        ({"model": MODEL, "messages": HELLO, "n": 0}, "n", "1"),
        ({"model": MODEL, "messages": HELLO, "max_tokens": 0}, "max_tokens", "1"),
        ({"model": MODEL, "messages": HELLO, "stream": "yes"}, "stream", "boolean"),
        (
            {"model": MODEL, "messages": HELLO, "stream_options": {"include_usage": True}},
            "stream_options",
            "stream",
        ),
        (
            {"model": MODEL, "messages": HELLO, "response_format": {"type": "xml"}},
            "response_format.type",
            "json_schema",
        ),
        ({"model": MODEL, "messages": HELLO, "stop": [1]}, "stop[0]", "string"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "sound"}]}]},
            "messages[0].content[0]",
            "unknown content part type",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0]",
            "needs a 'text' field",
        ),
        (
            {"model": MODEL, "messages": [{"role": "tool", "content": "42", "tool_call_id": "c"}]},
            "messages[0].tool_call_id",
            "must be a response to a preceding message with 'tool_calls'",
        ),
        (
            {
                "model": MODEL,
                "messages": [
                    {
                        "role": "system",
                        "content": [{"type": "image_url", "image_url": {"url": "data:,"}}],
                    }
                ],
            },
            "messages[0].content[0].type",
            "only text",
        ),
        (
            {"model": MODEL, "messages": [{"role": "assistant", "content": None}]},
            "messages[0].content",
            "Missing",
        ),
        (
            {
                "model": MODEL,
                "messages": HELLO,
                "tool_choice": {"type": "function", "function": {"name": "g"}},
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            "tool_choice",
            "no function named 'g'",
        ),
        (
            {"model": MODEL, "messages": HELLO, "tool_choice": "required"},
            "tool_choice",
            "only allowed when 'tools' are specified",
        ),
        (
            {"model": MODEL, "messages": HELLO, "modalities": ["text", "audio"]},
            "modalities",
            "'audio'",
        ),
        (
            {
                "model": MODEL,
                "messages": [
                    {"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}
                ],
            },
            "messages[0].content[0].type",
            "file",
        ),
    ],
)
def test_invalid_requests_get_400_naming_the_field(
    http: httpx.Client, fake: FakeSGLang, body: dict[str, Any], param: str, fragment: str
) -> None:
    with no_new_chat_requests(fake):
        response = http.post(CHAT, json=body)
    error = assert_openai_error(response, 400, param=param)
    assert error["type"] == "invalid_request_error"
    assert fragment in error["message"]


@pytest.mark.parametrize(
    ("content", "headers", "code"),
    [
        (b'{"model": "x", "messages": [', {"Content-Type": "application/json"}, "invalid_json"),
        (b"", {"Content-Type": "application/json"}, "invalid_json"),
        (b"\xff\xfe\x00", {"Content-Type": "application/json"}, "invalid_json"),
        (b"[" * 10_000, {"Content-Type": "application/json"}, "invalid_json"),
        (b'{"model": "x"}', {"Content-Type": "text/plain"}, "invalid_content_type"),
        (b"model=x", {"Content-Type": "application/x-www-form-urlencoded"}, "invalid_content_type"),
        (b'{"model": "x"}', {}, "invalid_content_type"),
    ],
)
def test_unparseable_bodies_get_400(
    http: httpx.Client, fake: FakeSGLang, content: bytes, headers: dict[str, str], code: str
) -> None:
    with no_new_chat_requests(fake):
        response = http.post(CHAT, content=content, headers=headers)
    assert_openai_error(response, 400, code=code)


def test_nan_is_not_a_number(http: httpx.Client) -> None:
    body = b'{"model": "%s", "messages": [], "temperature": NaN}' % MODEL.encode()
    response = http.post(CHAT, content=body, headers={"Content-Type": "application/json"})
    assert_openai_error(response, 400)


def test_unknown_model_is_404_and_never_sent(http: httpx.Client, fake: FakeSGLang) -> None:
    with no_new_chat_requests(fake):
        response = http.post(CHAT, json={"model": "gpt-4o", "messages": HELLO})
        streamed = http.post(CHAT, json={"model": "x:lora", "messages": HELLO, "stream": True})
    assert_openai_error(response, 404, param="model", code="model_not_found")
    assert_openai_error(streamed, 404, param="model", code="model_not_found")


def test_sdk_raises_the_matching_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)  # type: ignore[arg-type]
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}]
        )
    assert bad.value.param == "messages[0].tool_call_id"


def test_unknown_paths_and_methods(http: httpx.Client, fake: FakeSGLang) -> None:
    for path in ("/flush_cache", "/server_info", "/generate", "/v1/embeddings", "/v1/files"):
        assert_openai_error(http.get(path), 404)
        assert_openai_error(http.post(path, json={}), 404)
    assert_openai_error(http.get(CHAT), 405)
    assert not [r for r in fake.requests if r.path != "/ready" and r.path != "/v1/models"]


# --- SGLang's own failures ----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("error_500", 500, None),
        ("garbage", 502, "bad_gateway"),
        ("truncated", 502, "bad_gateway"),
        ("overload", 503, "service_unavailable"),
        ("context_overflow", 400, None),
    ],
)
def test_upstream_failures_before_the_first_token(
    http: httpx.Client, fake: FakeSGLang, fault: str, status: int, code: str | None, stream: bool
) -> None:
    fake.fault = fault
    response = http.post(CHAT, json={"model": MODEL, "messages": HELLO, "stream": stream})
    error = assert_openai_error(response, status, code=code)
    assert "ValueError: boom" not in response.text
    if status == 503:
        assert int(response.headers["retry-after"]) > 0
    if fault == "context_overflow":
        assert "context length" in error["message"]


def test_upstream_loading_then_ready(http: httpx.Client, fake: FakeSGLang) -> None:
    fake.state = "loading"
    response = http.post(CHAT, json={"model": MODEL, "messages": HELLO})
    assert_openai_error(response, 503, code="service_unavailable")
    assert response.headers["retry-after"]
    fake.state = "ready"
    assert http.post(CHAT, json={"model": MODEL, "messages": HELLO}).status_code == 200


def test_upstream_down_is_503_then_recovers(http: httpx.Client, fake: FakeSGLang) -> None:
    fake.stop()
    try:
        for stream in (False, True):
            response = http.post(CHAT, json={"model": MODEL, "messages": HELLO, "stream": stream})
            assert_openai_error(response, 503, code="service_unavailable")
            assert response.headers["retry-after"]
    finally:
        fake.start()
    assert http.post(CHAT, json={"model": MODEL, "messages": HELLO}).status_code == 200


def test_upstream_hang_is_504(make_gateway: Callable[..., ServerThread], fake: FakeSGLang) -> None:
    server = make_gateway(upstream_read_timeout=0.5)
    fake.fault = "hang"
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for stream in (False, True):
            response = http.post(CHAT, json={"model": MODEL, "messages": HELLO, "stream": stream})
            assert_openai_error(response, 504, code="timeout")


def test_upstream_rejecting_the_gateways_key_is_502(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang
) -> None:
    fake.api_key = "right-key"
    try:
        server = make_gateway(sglang_api_key="wrong-key")
        with httpx.Client(base_url=server.url, timeout=10) as http:
            response = http.post(CHAT, json={"model": MODEL, "messages": HELLO})
        error = assert_openai_error(response, 502)
        assert "SGLANG_API_KEY" in error["message"]
        good = make_gateway(sglang_api_key="right-key")
        with httpx.Client(base_url=good.url, timeout=10) as http:
            assert http.post(CHAT, json={"model": MODEL, "messages": HELLO}).status_code == 200
        chats = [r for r in fake.requests if r.path == "/v1/chat/completions"]
        assert chats[-1].headers["authorization"] == "Bearer right-key"
    finally:
        fake.api_key = None


@pytest.mark.parametrize("fault", ["error_mid_stream", "kill_mid_stream"])
def test_failure_mid_stream_is_an_error_event_then_done(
    http: httpx.Client, fake: FakeSGLang, fault: str
) -> None:
    fake.fault = fault
    fake.fault_after_tokens = 2
    body = {"model": MODEL, "messages": HELLO, "stream": True}
    with http.stream("POST", CHAT, json=body) as response:
        assert response.status_code == 200
        events = [e for e in response.read().split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    error = orjson.loads(events[-2].removeprefix(b"data: "))
    assert set(error) == {"error"}
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["error"]["message"]
    contents = [orjson.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[1:-2]]
    assert contents == ["Hello", " from"]


def test_aborted_generation_is_an_error_not_a_short_answer(
    http: httpx.Client, fake: FakeSGLang
) -> None:
    fake.fault = "abort"
    response = http.post(CHAT, json={"model": MODEL, "messages": HELLO})
    assert_openai_error(response, 500)
    body = {"model": MODEL, "messages": HELLO, "stream": True}
    with http.stream("POST", CHAT, json=body) as streamed:
        events = [e for e in streamed.read().split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert "aborted" in orjson.loads(events[-2][6:])["error"]["message"]


def test_sdk_raises_on_a_mid_stream_error(client: openai.OpenAI, fake: FakeSGLang) -> None:
    fake.fault = "error_mid_stream"
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    received = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            received.append(chunk)
    assert received  # the tokens before the failure were delivered


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions/", "/health/", "/metrics/", "/v1/models/", "/v1/responses/"]
)
def test_trailing_slashes_are_404s_never_redirects(http: httpx.Client, path: str) -> None:
    for response in (
        http.get(path, headers={"host": "evil.example"}),
        http.post(path, json={}, headers={"host": "evil.example"}),
    ):
        assert response.status_code in (404, 405), response.text
        assert "location" not in response.headers
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
