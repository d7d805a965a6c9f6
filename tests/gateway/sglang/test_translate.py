"""Unit tests of the SGLang -> OpenAI translation: SSE parsing, chunk and body rewriting, errors."""

from __future__ import annotations

import random

import orjson
import pytest

from gateway.errors import (
    RateLimited,
    UpstreamBadResponse,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamUnavailable,
)
from gateway.sglang.translate import (
    ChunkRewriter,
    SSEDecoder,
    error_for_status,
    error_from_event,
    read_completion,
)


def _decode(data: bytes, sizes: list[int]) -> tuple[list[bytes], bytes]:
    """Every payload of `data` fed in pieces of `sizes` (then the rest), and what is left."""
    decoder = SSEDecoder()
    payloads: list[bytes] = []
    position = 0
    for size in [*sizes, len(data)]:
        payloads += decoder.feed(data[position : position + size])
        position += size
    return payloads, decoder.pending


def test_sse_decoder_survives_any_read_split() -> None:
    events = [orjson.dumps({"n": i, "text": "a\u00e9\U0001f600"}) for i in range(30)]
    stream = b"".join(b"data: " + e + b"\n\n" for e in events) + b": ping\n\ndata: [DONE]\n\n"
    rng = random.Random(7)
    for _ in range(200):
        sizes = [rng.randint(0, 40) for _ in range(rng.randint(0, 80))]
        assert _decode(stream, sizes) == ([*events, b"[DONE]"], b"")
    crlf = stream.replace(b"\n", b"\r\n")
    for size in (1, 2, 3, 7):  # odd sizes split "\r\n" pairs between reads
        assert _decode(crlf, [size] * (len(crlf) // size)) == ([*events, b"[DONE]"], b"")


def test_sse_decoder_follows_the_spec_for_fields() -> None:
    stream = b"data:{}\n\nid: 3\ndata: a\ndata:  b\n\nevent: x\n\ndata: tail"
    assert _decode(stream, [len(stream)]) == ([b"{}", b"a\n b"], b"data: tail")


def test_chunk_rewriter_handles_both_sglang_chunk_shapes() -> None:
    rewriter = ChunkRewriter("client-model")
    full = {
        "id": "ab12",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "x",
        "choices": [
            {
                "index": 0,
                "delta": {
                    "role": None,
                    "content": "hi",
                    "reasoning_content": None,
                    "tool_calls": None,
                },
                "logprobs": None,
                "finish_reason": None,
                "matched_stop": None,
            }
        ],
        "usage": None,
    }
    compact = {
        "id": "ab12",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "x",
        "choices": [{"index": 0, "delta": {"content": "yo", "reasoning_content": None}}],
    }
    one = orjson.loads(rewriter.rewrite(orjson.dumps(full)) or b"")
    two = orjson.loads(rewriter.rewrite(orjson.dumps(compact)) or b"")
    assert one["id"] == two["id"] == "chatcmpl-ab12"
    assert one["model"] == two["model"] == "client-model"
    assert one["choices"][0]["delta"] == {"content": "hi"}
    assert two["choices"][0]["delta"] == {"content": "yo"}
    assert "matched_stop" not in one["choices"][0]


def test_ids_already_prefixed_are_kept() -> None:
    body = orjson.dumps(
        {
            "id": "chatcmpl-9",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "x", "reasoning_content": "kept"},
                }
            ],
        }
    )
    out = read_completion(body, "m")
    assert out["id"] == "chatcmpl-9"
    assert out["choices"][0]["message"]["reasoning_content"] == "kept"


@pytest.mark.parametrize(
    ("status", "body", "expected", "client_status"),
    [
        (
            400,
            b'{"object":"error","message":"bad","type":"BadRequestError","code":400}',
            UpstreamRejected,
            400,
        ),
        (401, b'{"error": "Unauthorized"}', UpstreamBadResponse, 502),
        (403, b'{"error": "Forbidden"}', UpstreamBadResponse, 502),
        (404, b'{"detail":"Not Found"}', UpstreamBadResponse, 502),
        (429, b"", RateLimited, 429),
        (
            500,
            b'{"object":"error","message":"Traceback ... ValueError: boom","code":500}',
            UpstreamFailed,
            500,
        ),
        (502, b"<html>", UpstreamBadResponse, 502),
        (503, b"", UpstreamUnavailable, 503),
    ],
)
def test_error_for_status(status: int, body: bytes, expected: type, client_status: int) -> None:
    error = error_for_status(status, body, retry_after=3)
    assert isinstance(error, expected)
    assert error.status_code == client_status
    assert "Traceback" not in error.message
    if client_status in (429, 503):
        assert error.headers["Retry-After"] == "3"


def test_error_events() -> None:
    overload = error_from_event(
        {"message": "queue full", "type": "SERVICE_UNAVAILABLE", "code": 503}
    )
    assert isinstance(overload, UpstreamUnavailable)
    assert isinstance(error_from_event("nonsense"), UpstreamBadResponse)
    assert isinstance(error_from_event({"message": "x", "code": "weird"}), UpstreamFailed)


def test_usage_is_kept_for_the_gateway_and_dropped_unless_asked() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "reasoning_tokens": 0}
    content = orjson.dumps(
        {"id": "1", "choices": [{"index": 0, "delta": {"content": "x"}}], "usage": None}
    )
    final = orjson.dumps({"id": "1", "choices": [], "usage": usage})
    silent = ChunkRewriter("m", forward_usage=False)
    assert "usage" not in orjson.loads(silent.rewrite(content) or b"")
    assert silent.rewrite(final) is None
    assert silent.usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    loud = ChunkRewriter("m", forward_usage=True)
    assert orjson.loads(loud.rewrite(final) or b"")["usage"]["total_tokens"] == 5


def test_rejections_keep_sglangs_reason_without_its_source_locations() -> None:
    # Messages as real SGLang 0.5.21 sent them (tests/fixtures/real_sglang_0.5.21.json).
    grammar = (
        b'{"object":"error","message":"Failed to compile regex grammar: [21:14:39] '
        b"/project/cpp/regex_converter.cc:83: Regex parsing error at position 10: The "
        b'parenthesis is not closed.\\n","type":"BadRequestError","param":null,"code":400}'
    )
    error = error_for_status(400, grammar, retry_after=5)
    assert error.message == (
        "Failed to compile regex grammar: Regex parsing error at position 10: "
        "The parenthesis is not closed."
    )
    schema = orjson.dumps(
        {
            "object": "error",
            "message": "1 validation error:\n  {'type': 'list_type', 'loc': ('body', 'messages')}"
            '\n\n  File "/sgl/python/sglang/srt/entrypoints/http_server.py", line 1777, in '
            "openai_v1_chat_completions\n    POST /v1/chat/completions [...]",
            "type": "Bad Request",
            "param": None,
            "code": 400,
        }
    )
    message = error_for_status(400, schema, retry_after=5).message
    assert message == "1 validation error:\n  {'type': 'list_type', 'loc': ('body', 'messages')}"
    assert "http_server.py" not in message
