"""The handler against a scripted raw HTTP server: transport failures, their mapping, the one retry
and the headers the gateway sends upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

import model_handler
from gateway.api.schemas import ChatCompletionRequest
from gateway.errors import UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from gateway.settings import Settings
from gateway.sglang.translate import error_for_transport
from gateway.sglang.upstream import ConnectTimeout
from model_handler import ModelHandler, build_upstream_client

MODEL = "google/gemma-3n-E4B-it"
COMPLETION = orjson.dumps(
    {
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
)
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(COMPLETION),
    COMPLETION,
)

# What the server does with the n-th request (0-based): "answer", "close" (drop the connection
# without a byte of answer) or "hang" (say nothing).
Script = Callable[[int], str]


class RawServer:
    """Records each request's head and body and acts on it as the script says."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[tuple[bytes, bytes]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                action = self.script(len(self.requests))
                self.requests.append((head, body))
                if action == "close":
                    break
                if action == "hang":
                    await asyncio.sleep(30)
                writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(script: Script) -> AsyncIterator[tuple[RawServer, str]]:
    raw = RawServer(script)
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield raw, f"http://127.0.0.1:{port}"
    finally:
        server.close()


def _handler(url: str, **settings: Any) -> ModelHandler:
    config = Settings(_env_file=None, sglang_url=url, **settings)  # type: ignore[call-arg]
    return ModelHandler(config, build_upstream_client(config))


def _request() -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    )


async def _complete(handler: ModelHandler) -> dict[str, Any]:
    try:
        result: dict[str, Any] = orjson.loads(await handler.create_chat_completion(_request()))
        return result
    finally:
        await handler._client.aclose()


@pytest.mark.anyio
async def test_a_connection_closed_before_the_answer_is_retried_once() -> None:
    async with serving(lambda n: "close" if n == 0 else "answer") as (server, url):
        body = await _complete(_handler(url))
    assert body["choices"][0]["message"]["content"] == "ok"
    assert len(server.requests) == 2
    assert server.requests[0][1] == server.requests[1][1]


@pytest.mark.anyio
async def test_only_one_retry() -> None:
    async with serving(lambda n: "close") as (server, url):
        with pytest.raises(UpstreamBadResponse):
            await _complete(_handler(url))
    assert len(server.requests) == 2


@pytest.mark.anyio
async def test_no_retry_when_the_connection_fails_late(monkeypatch: pytest.MonkeyPatch) -> None:
    # A failure long after sending is not a stale keep-alive connection: retrying would run the
    # generation a second time.
    monkeypatch.setattr(model_handler, "STALE_CONNECTION_WINDOW_SECONDS", -1.0)
    async with serving(lambda n: "close") as (server, url):
        with pytest.raises(UpstreamBadResponse):
            await _complete(_handler(url))
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_silence_is_a_timeout_without_retry() -> None:
    async with serving(lambda n: "hang") as (server, url):
        with pytest.raises(UpstreamTimeout):
            await _complete(_handler(url, upstream_read_timeout=0.2))
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_a_full_pool_is_503() -> None:
    async with serving(lambda n: "hang" if n == 0 else "answer") as (server, url):
        handler = _handler(url, upstream_max_connections=1, upstream_connect_timeout=0.2)
        first = asyncio.ensure_future(handler.create_chat_completion(_request()))
        await asyncio.sleep(0.1)
        with pytest.raises(UpstreamUnavailable) as refused:
            await handler.create_chat_completion(_request())
        first.cancel()
        await handler._client.aclose()
    assert refused.value.headers["Retry-After"]
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_an_unreachable_server_is_503() -> None:
    async with serving(lambda n: "answer") as (_, url):
        pass  # the port is closed again
    with pytest.raises(UpstreamUnavailable):
        await _complete(_handler(url))


def test_a_connect_timeout_is_503() -> None:
    error = error_for_transport(ConnectTimeout("slow"))
    assert isinstance(error, UpstreamUnavailable)


@pytest.mark.anyio
@pytest.mark.parametrize("key", [None, "sk-upstream"])
async def test_upstream_headers_are_the_gateways_own(key: str | None) -> None:
    async with serving(lambda n: "answer") as (server, url):
        await _complete(_handler(url, sglang_api_key=key))
    head = server.requests[0][0].decode().lower()
    assert head.startswith("post /v1/chat/completions http/1.1\r\n")
    assert "content-type: application/json\r\n" in head
    assert "accept-encoding: identity\r\n" in head
    assert ("authorization: bearer sk-upstream\r\n" in head) == (key is not None)
