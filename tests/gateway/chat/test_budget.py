"""budget.py and the body's element bound: what a request may cost the event loop (issue 13)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest
from conftest import MODEL
from fake_sglang import FakeSGLang

from gateway.chat.conversation import join_adjacent_text

CHAT = "/v1/chat/completions"


def parts(count: int, text: str = "ab") -> list[dict[str, str]]:
    return [{"type": "text", "text": text}] * count


def post(http: httpx.Client, **fields: Any) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}
    return http.post(CHAT, content=orjson.dumps(body), headers={"content-type": "application/json"})


def test_a_body_of_countless_elements_is_refused_while_it_is_read(
    http: httpx.Client, fake: FakeSGLang
) -> None:
    # 300,000 parts: 8 MB, under the body limit; parsing it would hold the loop for 1.5 s.
    started = time.perf_counter()
    response = post(http, messages=[{"role": "user", "content": parts(300_000)}])
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "too_many_elements"
    assert time.perf_counter() - started < 1.0
    assert not fake.chat_requests


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": [{"role": "user", "content": parts(257)}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": parts(200)}] * 6}, "messages"),
        ({"messages": [{"role": "user", "content": "x" * (1 << 20 | 1)}]}, "messages[0]"),
        (
            {"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]},
            "tools",
        ),
        ({"messages": [{"role": "user", "content": "hi"}] * 1001}, "messages"),
    ],
    ids=["parts per message", "parts per request", "characters", "tools", "messages"],
)
def test_limits_name_the_field(
    http: httpx.Client, fake: FakeSGLang, fields: dict[str, Any], param: str
) -> None:
    response = post(http, **fields)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert not fake.chat_requests


def test_requests_at_the_limits_are_served(http: httpx.Client, fake: FakeSGLang) -> None:
    response = post(http, messages=[{"role": "user", "content": parts(256)}] * 4)
    assert response.status_code == 200, response.text
    sent = fake.chat_requests[-1]["messages"][0]["content"]
    assert sent == "\n\n".join(["ab"] * 1024)  # one user turn, its texts joined


def test_joining_text_parts_is_linear() -> None:
    for count in (10_000, 100_000):
        started = time.perf_counter()
        joined = join_adjacent_text(parts(count))
        elapsed = time.perf_counter() - started
        assert joined == "\n\n".join(["ab"] * count)
    assert elapsed < 0.1  # quadratic, 100,000 parts took 8 s
