"""Images and audio through the whole gateway: what the client sends, what SGLang receives."""

from __future__ import annotations

import base64
import io
import wave
from collections.abc import Callable
from pathlib import Path

import audio_factory
import httpx
import image_factory
import openai
import pytest
from conftest import MODEL, ServerThread
from fake_sglang import FakeSGLang
from local_http import serve, static
from PIL import Image

from gateway.chat.media import TRANSCRIPT_LABEL

CHAT = "/v1/chat/completions"


def _image_part(url: str) -> dict[str, object]:
    return {"type": "image_url", "image_url": {"url": url}}


def _sent_parts(fake: FakeSGLang, kind: str) -> list[dict[str, object]]:
    content = fake.chat_requests[-1]["messages"][-1]["content"]
    assert isinstance(content, list)
    return [part for part in content if part["type"] == kind]


def _wav(url: str) -> tuple[int, int, int, float]:
    header, _, payload = url.partition(",")
    assert header == "data:audio/wav;base64"
    with wave.open(io.BytesIO(base64.b64decode(payload))) as clip:
        frames = clip.getnframes()
        return clip.getframerate(), clip.getnchannels(), clip.getsampwidth(), frames / 16_000


@pytest.fixture
def png_url() -> str:
    image = Image.new("RGBA", (1600, 900), (0, 128, 255, 255))
    return image_factory.data_url(image_factory.encode(image, "PNG"), "image/png")


def test_images_arrive_as_small_rgb_jpeg_data_urls(
    client: openai.OpenAI, fake: FakeSGLang, png_url: str
) -> None:
    for stream in (False, True):
        response = client.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare"},
                        _image_part(png_url),
                        _image_part(png_url),
                    ],
                }
            ],
            stream=stream,
        )
        if stream:
            assert "".join(c.choices[0].delta.content or "" for c in response if c.choices)
        sent = _sent_parts(fake, "image_url")
        assert len(sent) == 2
        for part in sent:
            url = part["image_url"]["url"]  # type: ignore[index]
            assert url.startswith("data:image/jpeg;base64,")
            image = image_factory.decode_data_url(url)
            assert image.mode == "RGB"
            assert image.size == (768, 432)


def test_fetched_image_url_is_sent_as_data_url(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang
) -> None:
    jpeg = image_factory.encode(Image.new("RGB", (300, 200), (200, 10, 10)), "JPEG")
    with serve() as (base, state):
        state.routes["/cat.jpg"] = static(jpeg, "image/jpeg")
        server = make_gateway(media_allow_private_addresses=True)
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as sdk:
            sdk.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": [_image_part(f"{base}/cat.jpg")]}],
            )
    url = _sent_parts(fake, "image_url")[0]["image_url"]["url"]  # type: ignore[index]
    assert url.startswith("data:image/jpeg;base64,")
    assert image_factory.decode_data_url(url).size == (300, 200)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://127.0.0.1:9/x.png", None),
        ("http://169.254.169.254/latest/meta-data", None),
        ("file:///etc/passwd", None),
        ("data:image/png;base64,bm90IGFuIGltYWdl", None),
    ],
)
def test_bad_images_are_400_naming_the_part(
    http: httpx.Client, fake: FakeSGLang, url: str, code: str | None
) -> None:
    body = {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "x"}, _image_part(url)]}
        ],
    }
    before = len(fake.chat_requests)
    response = http.post(CHAT, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith("messages[0].content[1].image_url")
    assert len(fake.chat_requests) == before


def test_too_many_images(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang, png_url: str
) -> None:
    server = make_gateway(max_images_per_request=2)
    body = {"model": MODEL, "messages": [{"role": "user", "content": [_image_part(png_url)] * 3}]}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        response = http.post(CHAT, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content[2].image_url"


# --- audio ------------------------------------------------------------------------------------


def _audio_body(data: bytes, fmt: str, text: str = "What is this?") -> dict[str, object]:
    part = {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt},
    }
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}, part]}],
    }


def test_native_audio_is_split_into_wav_clips(http: httpx.Client, fake: FakeSGLang) -> None:
    mp3 = audio_factory.encode(audio_factory.tone(70.0), "mp3")
    response = http.post(CHAT, json=_audio_body(mp3, "mp3"))
    assert response.status_code == 200, response.text
    clips = [_wav(p["audio_url"]["url"]) for p in _sent_parts(fake, "audio_url")]  # type: ignore[index]
    assert len(clips) == 3
    assert all(
        rate == 16_000 and channels == 1 and width == 2 for rate, channels, width, _ in clips
    )
    assert all(seconds <= 30.0 for *_, seconds in clips)
    assert sum(seconds for *_, seconds in clips) == pytest.approx(70.0, abs=0.1)
    assert _sent_parts(fake, "text")[0]["text"] == "What is this?"


def test_audio_url_data_uri_with_lying_format(http: httpx.Client, fake: FakeSGLang) -> None:
    flac = audio_factory.encode(audio_factory.tone(2.0), "flac")
    url = "data:audio/mpeg;base64," + base64.b64encode(flac).decode()
    body = {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": url}}]}
        ],
    }
    response = http.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    (clip,) = [_wav(p["audio_url"]["url"]) for p in _sent_parts(fake, "audio_url")]  # type: ignore[index]
    assert clip[3] == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize(
    ("data", "fmt", "code"),
    [
        (b"", "wav", None),
        (b"definitely not audio" * 50, "wav", "invalid_audio"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "wav", "invalid_audio"),
    ],
)
def test_bad_audio_is_400(
    http: httpx.Client, fake: FakeSGLang, data: bytes, fmt: str, code: str | None
) -> None:
    before = len(fake.chat_requests)
    response = http.post(CHAT, json=_audio_body(data, fmt))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith("messages[0].content[1].input_audio")
    if code:
        assert error["code"] == code
    assert len(fake.chat_requests) == before


def test_audio_disabled_is_a_clear_400(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang
) -> None:
    server = make_gateway(enable_audio=False)
    wav = audio_factory.encode(audio_factory.tone(1.0), "wav")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        response = http.post(CHAT, json=_audio_body(wav, "wav"))
    assert response.status_code == 400
    assert "not enabled" in response.json()["error"]["message"]


def test_whisper_mode_sends_a_marked_transcript(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang, tiny_whisper: Path
) -> None:
    server = make_gateway(audio_mode="whisper", whisper_model=str(tiny_whisper))
    wav = audio_factory.encode(audio_factory.tone(3.0), "wav")
    with httpx.Client(base_url=server.url, timeout=60) as http:
        response = http.post(CHAT, json=_audio_body(wav, "wav"))
    assert response.status_code == 200, response.text
    content = fake.chat_requests[-1]["messages"][-1]["content"]
    assert isinstance(content, str)  # text + transcript joined into one text turn
    assert content.startswith("What is this?\n\n" + TRANSCRIPT_LABEL)


def test_auto_mode_falls_back_to_whisper_for_long_audio(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang, tiny_whisper: Path
) -> None:
    server = make_gateway(max_native_audio_seconds=2, whisper_model=str(tiny_whisper))
    short = audio_factory.encode(audio_factory.tone(1.5), "wav")
    long = audio_factory.encode(audio_factory.tone(4.0), "wav")
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.post(CHAT, json=_audio_body(short, "wav")).status_code == 200
        assert _sent_parts(fake, "audio_url")
        assert http.post(CHAT, json=_audio_body(long, "wav")).status_code == 200
        assert TRANSCRIPT_LABEL in fake.chat_requests[-1]["messages"][-1]["content"]
