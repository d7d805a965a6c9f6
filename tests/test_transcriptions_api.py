"""`/v1/audio/transcriptions` and `/translations` through the whole gateway with the `openai` SDK:
Gemma 3n (clips to the fake SGLang) and local Whisper (a tiny checkpoint), every format, the 413."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import audio_factory
import httpx
import openai
import pytest
from conftest import MODEL, ServerThread
from fake_sglang import FakeSGLang

REPLY = "Hello from the fake SGLang."


@pytest.fixture(scope="module")
def speech_m4a() -> bytes:
    return audio_factory.encode(audio_factory.tone(65.0), "m4a")


def _cues(text: str, separator: str) -> list[tuple[str, str]]:
    return [
        (start.strip(), end.strip())
        for line in text.splitlines()
        if "-->" in line
        for start, end in [line.split("-->")]
        if separator in start
    ]


def test_gemma_route_every_format(
    client: openai.OpenAI, fake: FakeSGLang, speech_m4a: bytes
) -> None:
    result = client.audio.transcriptions.create(
        model=MODEL, file=("talk.m4a", speech_m4a), response_format="json"
    )
    assert result.text == " ".join([REPLY] * 3)
    sent = fake.chat_requests[-3:]
    assert all(r["messages"][0]["content"][1]["type"] == "audio_url" for r in sent)
    assert all("Transcribe" in r["messages"][0]["content"][0]["text"] for r in sent)

    text = client.audio.transcriptions.create(
        model=MODEL, file=("talk.m4a", speech_m4a), response_format="text"
    )
    assert str(text).strip() == result.text

    verbose = client.audio.transcriptions.create(
        model=MODEL,
        file=("talk.m4a", speech_m4a),
        response_format="verbose_json",
        timestamp_granularities=["segment"],
    )
    assert verbose.duration == pytest.approx(65.0, abs=0.2)
    starts = [segment.start for segment in verbose.segments or []]
    assert len(starts) == 3 and starts == sorted(starts) and starts[0] == 0

    srt = str(
        client.audio.transcriptions.create(
            model=MODEL, file=("talk.m4a", speech_m4a), response_format="srt"
        )
    )
    assert srt.startswith("1\n") and len(_cues(srt, ",")) == 3
    vtt = str(
        client.audio.transcriptions.create(
            model=MODEL, file=("talk.m4a", speech_m4a), response_format="vtt"
        )
    )
    assert vtt.startswith("WEBVTT") and len(_cues(vtt, ".")) == 3
    assert [start for start, _ in _cues(vtt, ".")] == sorted(start for start, _ in _cues(vtt, "."))


def test_translation_route(client: openai.OpenAI, fake: FakeSGLang) -> None:
    wav = audio_factory.encode(audio_factory.tone(3.0), "wav")
    # The SDK deprecates the method; clients still call the endpoint.
    with pytest.warns(DeprecationWarning, match="deprecated"):
        result = client.audio.translations.create(model=MODEL, file=("a.wav", wav))
    assert result.text == REPLY
    assert "English" in fake.chat_requests[-1]["messages"][0]["content"][0]["text"]


def test_whisper_route(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang, tiny_whisper: Path
) -> None:
    server = make_gateway(whisper_model=str(tiny_whisper))
    wav = audio_factory.encode(audio_factory.tone(3.0), "wav")
    before = len(fake.chat_requests)
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as sdk:
        verbose = sdk.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", wav), response_format="verbose_json"
        )
        assert verbose.duration == pytest.approx(3.0, abs=0.1)
        srt = str(
            sdk.audio.transcriptions.create(
                model="whisper-1", file=("a.wav", wav), response_format="srt"
            )
        )
        assert all("," in start for start, _ in _cues(srt, ","))
    assert len(fake.chat_requests) == before  # Whisper never touches SGLang


def test_upload_errors(make_gateway: Callable[..., ServerThread], client: openai.OpenAI) -> None:
    server = make_gateway(max_audio_bytes=10_000)
    big = audio_factory.encode(audio_factory.tone(5.0), "wav")  # 160 kB
    with (
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as sdk,
        pytest.raises(openai.APIStatusError) as too_large,
    ):
        sdk.audio.transcriptions.create(model=MODEL, file=("a.wav", big))
    assert too_large.value.status_code == 413
    assert too_large.value.body["param"] == "file"  # type: ignore[index]

    with pytest.raises(openai.NotFoundError):
        client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", big))
    with pytest.raises(openai.BadRequestError) as garbage:
        client.audio.transcriptions.create(model=MODEL, file=("a.wav", b"not audio" * 100))
    assert garbage.value.param == "file"


def test_missing_file_and_wrong_content_type(http: httpx.Client) -> None:
    no_file = http.post("/v1/audio/transcriptions", files={"model": (None, MODEL)})
    assert no_file.status_code == 400
    assert no_file.json()["error"]["param"] == "file"
    as_json = http.post("/v1/audio/transcriptions", json={"model": MODEL})
    assert as_json.status_code == 400
    assert as_json.json()["error"]["code"] == "invalid_content_type"
