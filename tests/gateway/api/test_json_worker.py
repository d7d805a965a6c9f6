"""`JsonParser`: large bodies parsed in a worker process, with the same answers as inline.

The parser's thresholds are real (1 MiB off the loop); the process threshold is lowered to that
so a body of a little over 1 MiB goes to the worker. The proof that this keeps other streams
flowing is end to end, in tests/test_stall.py (a 60 MB string, a 20 MB image).
"""

from __future__ import annotations

import functools
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from gateway.api.json_worker import OFF_LOOP_BYTES, JsonParser
from gateway.api.schemas import ChatCompletionRequest
from gateway.api.validation import parse_json_body
from gateway.chat.budget import check_budget
from gateway.errors import InvalidRequest
from gateway.settings import Settings

pytestmark = pytest.mark.anyio

JSON = "application/json"


def big_body(**fields: object) -> bytes:
    """A valid chat body just past OFF_LOOP_BYTES: a long text part and an image data URL."""
    url = "data:image/png;base64," + "A" * (OFF_LOOP_BYTES // 2)
    content = [
        {"type": "text", "text": "é" * (OFF_LOOP_BYTES // 4)},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    body = {"model": "m", "messages": [{"role": "user", "content": content}], **fields}
    return orjson.dumps(body)


@pytest.fixture
def spill_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.fixture
def parser() -> Iterator[JsonParser]:
    worker = JsonParser(process_bytes=OFF_LOOP_BYTES)
    yield worker
    worker.close()


async def test_a_large_body_comes_back_as_the_model_inline_parsing_gives(
    parser: JsonParser, spill_dir: Path
) -> None:
    body = big_body(
        stream=True, temperature=0.5, tools=[{"type": "function", "function": {"name": "f"}}]
    )
    assert len(body) > OFF_LOOP_BYTES
    parsed = await parser.parse(ChatCompletionRequest, body, JSON)
    assert parsed == parse_json_body(ChatCompletionRequest, body, JSON)
    assert (
        parsed.model_fields_set
        == parse_json_body(ChatCompletionRequest, body, JSON).model_fields_set
    )
    assert parser._pool is not None and len(parser._pool._processes) == 1
    assert os.listdir(spill_dir) == []  # the temporary file is gone


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (big_body()[:-1], None, "invalid_json"),
        (big_body(temperature="hot"), "temperature", None),
        (big_body(messages=[{"role": "nobody", "content": "x" * OFF_LOOP_BYTES}]),
         "messages[0].role", None),
    ],
)  # fmt: skip
async def test_errors_found_in_the_worker_are_the_inline_ones(
    parser: JsonParser, spill_dir: Path, body: bytes, param: str | None, code: str | None
) -> None:
    with pytest.raises(InvalidRequest) as inline:
        parse_json_body(ChatCompletionRequest, body, JSON)
    with pytest.raises(InvalidRequest) as worker:
        await parser.parse(ChatCompletionRequest, body, JSON)
    assert (worker.value.param, worker.value.code) == (param, code)
    assert worker.value.body() == inline.value.body()
    assert os.listdir(spill_dir) == []


async def test_the_callers_check_runs_in_the_worker(parser: JsonParser) -> None:
    settings = Settings(max_text_chars=1024)
    check = functools.partial(check_budget, settings=settings)
    with pytest.raises(InvalidRequest, match="characters of text") as caught:
        await parser.parse(ChatCompletionRequest, big_body(), JSON, check)
    assert caught.value.param == "messages[0]"
    # Within the budget the model comes back.
    roomy = functools.partial(check_budget, settings=Settings())
    assert (await parser.parse(ChatCompletionRequest, big_body(), JSON, roomy)).model == "m"


async def test_a_body_that_is_not_json_is_refused_before_it_is_written_out(
    parser: JsonParser, spill_dir: Path
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await parser.parse(ChatCompletionRequest, big_body(), "text/plain")
    assert caught.value.code == "invalid_content_type"
    assert parser._pool is None  # no worker was needed
    assert os.listdir(spill_dir) == []


async def test_a_worker_that_dies_is_replaced(parser: JsonParser) -> None:
    await parser.warm(ChatCompletionRequest)
    assert parser._pool is not None
    (pid,) = parser._pool._processes
    os.kill(pid, signal.SIGKILL)
    parsed = await parser.parse(ChatCompletionRequest, big_body(), JSON)
    assert parsed.model == "m"
    (new_pid,) = parser._pool._processes
    assert new_pid != pid


async def test_small_and_medium_bodies_never_start_a_worker() -> None:
    worker = JsonParser()  # the real thresholds: 1 MiB, 4 MiB
    try:
        for body in (
            orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
            big_body(),
        ):
            assert (await worker.parse(ChatCompletionRequest, body, JSON)).model == "m"
        assert worker._pool is None
    finally:
        worker.close()
