"""The gateway, run as the README says, in front of the real SGLang 0.5.21, driven by `openai`.

The model is random, so the tests check shapes and behaviour, never the words: token counts
(an image is 256 soft tokens, an audio clip 188), finish reasons, error types and statuses.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import audio_factory
import httpx
import local_http
import openai
import pytest
from PIL import Image

from .conftest import MODEL
from .procs import Gateway, SGLangServer, running

IMAGE_TOKENS = 256
AUDIO_CLIP_TOKENS = 188


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (30, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def ask(
    client: openai.OpenAI, content: object, **fields: object
) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(  # type: ignore[call-overload,no-any-return]
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        **({"max_tokens": 4} | fields),
    )


# -- plain and streamed chat --------------------------------------------------------------------


def test_plain_chat_is_openai_shaped(client: openai.OpenAI) -> None:
    reply = ask(client, "hello there", temperature=0)
    assert reply.id.startswith("chatcmpl-")
    assert reply.object == "chat.completion"
    assert reply.model == MODEL
    (choice,) = reply.choices
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    raw = choice.model_dump()
    assert "matched_stop" not in raw and "reasoning_content" not in raw["message"]
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 4


def test_stream_with_include_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "count to five"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len({chunk.id for chunk in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


# -- media -------------------------------------------------------------------------------------


def test_image_data_url(client: openai.OpenAI) -> None:
    content = [
        {"type": "text", "text": "describe this"},
        {"type": "image_url", "image_url": {"url": data_url(png_bytes(), "image/png")}},
    ]
    reply = ask(client, content)
    assert reply.usage is not None and reply.usage.prompt_tokens > IMAGE_TOKENS


def test_http_image_url_is_fetched_by_the_gateway(client: openai.OpenAI) -> None:
    with local_http.serve() as (base, state):
        state.routes["/cat.png"] = local_http.static(png_bytes(), "image/png")
        content = [{"type": "image_url", "image_url": {"url": f"{base}/cat.png"}}]
        reply = ask(client, content)
        assert [path for path, _ in state.requests] == ["/cat.png"]  # fetched once, by us
    assert reply.usage is not None and reply.usage.prompt_tokens > IMAGE_TOKENS


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_input_audio(client: openai.OpenAI, fmt: str) -> None:
    audio = audio_factory.encode(audio_factory.tone(2.0), fmt)
    content = [
        {"type": "text", "text": "transcribe"},
        {
            "type": "input_audio",
            "input_audio": {"data": base64.b64encode(audio).decode(), "format": fmt},
        },
    ]
    reply = ask(client, content)
    usage = reply.usage
    assert usage is not None and AUDIO_CLIP_TOKENS < usage.prompt_tokens < 2 * AUDIO_CLIP_TOKENS


def test_audio_over_30_seconds_is_split_into_clips(
    client: openai.OpenAI, sglang: SGLangServer
) -> None:
    # Sent to SGLang 0.5.21 as one clip, 45 s of audio kills its scheduler ("RuntimeError:
    # numel: integer multiplication overflow" in gemma3n_mm.get_audio_feature): the gateway
    # must cut it into clips of at most 30 s, each 188 tokens.
    audio = audio_factory.encode(audio_factory.tone_with_gaps(45.0, [28.0]), "wav")
    content = [
        {"type": "text", "text": "transcribe"},
        {
            "type": "input_audio",
            "input_audio": {"data": base64.b64encode(audio).decode(), "format": "wav"},
        },
    ]
    reply = ask(client, content)
    usage = reply.usage
    assert usage is not None and 2 * AUDIO_CLIP_TOKENS < usage.prompt_tokens < 3 * AUDIO_CLIP_TOKENS
    assert sglang.exited() is None


def test_transcription_through_the_gemma_route(client: openai.OpenAI) -> None:
    audio = audio_factory.encode(audio_factory.tone(3.0), "wav")
    result = client.audio.transcriptions.create(
        model=MODEL, file=("clip.wav", audio, "audio/wav"), response_format="verbose_json"
    )
    assert isinstance(result.text, str) and result.text.strip()
    assert result.segments is not None and len(result.segments) == 1


# -- conversations Gemma 3n's template would reject ----------------------------------------------


CONVERSATIONS = {
    "developer role": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ],
    "two user turns": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}],
    "system mid-way": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "and now?"},
    ],
}


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_conversations_the_template_rejects_are_fitted(
    client: openai.OpenAI, upstream: httpx.Client, name: str
) -> None:
    messages = CONVERSATIONS[name]
    direct = upstream.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": 2}
    )
    assert direct.status_code == 400
    assert direct.json()["message"].startswith("Conversation roles must alternate")
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)  # type: ignore[arg-type]
    assert reply.choices[0].finish_reason == "length"


# -- what SGLang itself refuses -----------------------------------------------------------------


def test_max_tokens_over_the_context_is_sglangs_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "hello", max_tokens=8192)  # the gateway allows it; 8192 + prompt > context
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["type"] == "invalid_request_error"
    assert "maximum context length of 8192 tokens" in error["message"]


def test_prompt_over_the_context_is_sglangs_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "hello " * 9000)
    assert isinstance(caught.value.body, dict)
    assert "longer than the model's context length (8192 tokens)" in caught.value.body["message"]


def test_streamed_request_sglang_refuses_is_an_http_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello " * 9000}], stream=True
        )


def test_sglang_rejects_a_bad_regex_with_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="regex"):
        ask(client, "hello", extra_body={"regex": "(unclosed"})


# -- SGLang's API key ---------------------------------------------------------------------------


def test_sglang_api_key_is_forwarded(upstream: httpx.Client, client: openai.OpenAI) -> None:
    unauthorised = httpx.post(f"{upstream.base_url}/v1/chat/completions", json={})
    assert (unauthorised.status_code, unauthorised.json()) == (401, {"error": "Unauthorized"})
    # The client sends no SGLang key (its api_key is the gateway's): the gateway adds its own.
    assert ask(client, "hello").choices[0].finish_reason == "length"


@pytest.fixture(scope="module")
def wrong_key_gateway(sglang: SGLangServer, logs: Path) -> Iterator[Gateway]:
    gw = Gateway(logs / "gateway-wrong-key.log", sglang.url, SGLANG_API_KEY="sk-not-the-key")
    # Ready: /ready is exempt from SGLang's key, so the gateway reports it ready.
    with running(gw):
        yield gw


def test_wrong_sglang_key_is_a_502_not_the_clients_fault(wrong_key_gateway: Gateway) -> None:
    with (
        openai.OpenAI(
            base_url=f"{wrong_key_gateway.url}/v1", api_key="unused", max_retries=0
        ) as client,
        pytest.raises(openai.InternalServerError) as caught,
    ):
        ask(client, "hello")
    assert caught.value.status_code == 502
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "bad_gateway"
    assert "SGLANG_API_KEY" in caught.value.body["message"]


# -- health -------------------------------------------------------------------------------------


def test_health_and_readiness(gateway: Gateway) -> None:
    health = httpx.get(f"{gateway.url}/health")
    assert health.status_code == 200
    body = health.json()
    assert body["backend"]["reachable"] is True and body["backend"]["ready"] is True
    ready = httpx.get(f"{gateway.url}/health/ready")
    assert ready.status_code == 200
