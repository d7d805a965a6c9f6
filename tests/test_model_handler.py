"""The handler against an injected `httpx.MockTransport`: transport failures and the one retry."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import orjson
import pytest

from errors import UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from model_handler import ModelHandler, build_upstream_client
from schemas import ChatCompletionRequest
from settings import Settings

MODEL = "google/gemma-3n-E4B-it"
COMPLETION = {
    "id": "0f" * 16,
    "object": "chat.completion",
    "created": 1,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "ok"},
            "finish_reason": "stop",
            "matched_stop": 106,
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


def _handler(handle: Callable[[httpx.Request], httpx.Response]) -> ModelHandler:
    settings = Settings(_env_file=None, sglang_url="http://sglang.test")  # type: ignore[call-arg]
    client = build_upstream_client(settings)
    client._transport = httpx.MockTransport(handle)
    return ModelHandler(settings, client)


def _request(**extra: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}
    )


@pytest.mark.anyio
async def test_a_connection_closed_before_the_answer_is_retried_once() -> None:
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(200, json=COMPLETION)

    body = orjson.loads(await _handler(handle).create_chat_completion(_request()))
    assert body["choices"][0]["message"]["content"] == "ok"
    assert len(calls) == 2
    assert calls[0].content == calls[1].content


@pytest.mark.anyio
async def test_only_one_retry() -> None:
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ReadError("Connection reset by peer")

    with pytest.raises(UpstreamBadResponse):
        await _handler(handle).create_chat_completion(_request())
    assert len(calls) == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectError("refused"), UpstreamUnavailable),
        (httpx.ConnectTimeout("slow"), UpstreamUnavailable),
        (httpx.PoolTimeout("full"), UpstreamUnavailable),
        (httpx.ReadTimeout("slow"), UpstreamTimeout),
    ],
)
async def test_transport_errors_are_mapped_without_retry(
    exc: httpx.HTTPError, expected: type
) -> None:
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise exc

    with pytest.raises(expected):
        await _handler(handle).create_chat_completion(_request())
    assert len(calls) == 1


@pytest.mark.anyio
async def test_upstream_headers_are_the_gateways_own() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=COMPLETION)

    await _handler(handle).create_chat_completion(_request())
    assert seen[0].headers["content-type"] == "application/json"
    assert seen[0].headers["accept-encoding"] == "identity"
    assert "authorization" not in seen[0].headers


@pytest.mark.anyio
async def test_no_retry_when_the_connection_fails_late(monkeypatch: pytest.MonkeyPatch) -> None:
    # A failure long after sending is not a stale keep-alive connection: retrying would run the
    # generation a second time.
    import model_handler

    monkeypatch.setattr(model_handler, "STALE_CONNECTION_WINDOW_SECONDS", -1.0)
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    with pytest.raises(UpstreamBadResponse):
        await _handler(handle).create_chat_completion(_request())
    assert len(calls) == 1
