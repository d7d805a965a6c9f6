"""Tests of transcription.py: the form, the routing, Gemma's clips and Whisper, end to end.

The service runs on real audio made by tests/audio_factory.py and decoded by audio.py. The Gemma
side is a recording fake of the `GemmaClipTranscriber` the app builds on ModelHandler, so what
each clip looked like (WAV, 16 kHz, mono, at most 30 s, in order) is asserted here; the Whisper
side is the real openai-whisper code on a tiny random checkpoint (tests/whisper_factory.py).
Every response format is parsed back: srt and vtt as subtitle files with increasing timestamps.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import math
import os
import re
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import audio_factory as factory
import numpy as np
import numpy.typing as npt
import pytest

from gateway import errors
from gateway.media import audio
from gateway.settings import Settings
from gateway.speech.languages import language_name
from gateway.speech.transcription import (
    GEMMA_CLIP_CONCURRENCY,
    TranscriptionRequest,
    TranscriptionService,
    gemma_instruction,
    is_whisper_model,
    parse_transcription_form,
)
from gateway.speech.whisper_asr import WhisperTranscriber

pytestmark = pytest.mark.anyio

MODEL = "google/gemma-3n-E4B-it"
SECONDS = 70.0
GAPS = [27.0, 56.0]  # quiet places near the 30 s boundaries, where the clips must be cut
needs_whisper = pytest.mark.skipif(
    not WhisperTranscriber.is_installed() and os.environ.get("CI") != "true",
    reason="openai-whisper is not installed (it is in CI)",
)


def settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, model_name=MODEL, **overrides)  # type: ignore[call-arg]


@dataclass
class Call:
    samples: npt.NDArray[np.float32]
    language: str | None
    instruction: str
    temperature: float


@dataclass
class FakeGemma:
    """Records every clip it is sent; answers with `reply` or "n<number of samples>"."""

    reply: str | None = None
    delay: float = 0.0
    fail_on_call: int | None = None
    calls: list[Call] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    async def __call__(
        self, url: str, language: str | None, instruction: str, temperature: float
    ) -> str:
        prefix = "data:audio/wav;base64,"
        assert url.startswith(prefix)
        with wave.open(io.BytesIO(base64.b64decode(url[len(prefix) :]))) as wav:
            assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (1, 16_000, 2)
            assert 0 < wav.getnframes() <= 30 * 16_000
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
        samples = (pcm / 32767.0).astype(np.float32)
        self.calls.append(Call(samples, language, instruction, temperature))
        if self.fail_on_call == len(self.calls):
            raise errors.UpstreamUnavailable("SGLang is overloaded.", retry_after=5)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await anyio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        return self.reply if self.reply is not None else f"n{len(samples)}"


def service(
    gemma: FakeGemma,
    *,
    whisper: WhisperTranscriber | None = None,
    clip_concurrency: int = GEMMA_CLIP_CONCURRENCY,
    **overrides: Any,
) -> TranscriptionService:
    config = settings(**overrides)
    decoder = audio.AudioDecoder(config)
    return TranscriptionService(config, decoder, whisper, gemma, clip_concurrency=clip_concurrency)


def request(model: str = MODEL, **fields: str | list[str]) -> TranscriptionRequest:
    return parse_transcription_form({"model": model, **fields})


@pytest.fixture(scope="module")
def meeting() -> bytes:
    """70 s of loud tone with two pauses, as a phone's M4A/AAC."""
    return factory.encode(factory.tone_with_gaps(SECONDS, GAPS), "m4a")


@pytest.fixture(scope="module")
def meeting_clips(meeting: bytes) -> list[npt.NDArray[np.float32]]:
    """The clips the service must send: the upload decoded and split by audio.py."""
    decoded = audio.decode_audio_sync(meeting, declared_format=None, param="f", settings=settings())
    return audio.split_into_clips(decoded.samples)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import whisper_factory

    return whisper_factory.build_tiny_checkpoint(tmp_path_factory.mktemp("whisper") / "tiny.pt")


# --- parsing subtitles ----------------------------------------------------------------------------

_TIME = r"(\d{2}):(\d{2}):(\d{2})[,.](\d{3})"


def _seconds(parts: tuple[str, ...]) -> float:
    hours, minutes, secs, millis = (int(p) for p in parts)
    return hours * 3600 + minutes * 60 + secs + millis / 1000


def parse_cues(body: str, *, vtt: bool) -> list[tuple[float, float, str]]:
    """The cues of an SRT or WebVTT file, asserting the file is well formed."""
    mark = "." if vtt else ","
    if vtt:
        assert body.startswith("WEBVTT\n\n")
        body = body.removeprefix("WEBVTT\n\n")
    cues: list[tuple[float, float, str]] = []
    if not body:
        return cues
    assert body.endswith("\n") and not body.endswith("\n\n")
    for number, block in enumerate(body[:-1].split("\n\n"), start=1):
        lines = block.split("\n")
        if not vtt:
            assert lines.pop(0) == str(number)
        timing = re.fullmatch(f"{_TIME} --> {_TIME}", lines[0])
        assert timing is not None, lines[0]
        assert timing.group(0).count(mark) == 2
        start, end = _seconds(timing.groups()[:4]), _seconds(timing.groups()[4:])
        assert 0 <= start <= end
        text = lines[1:]
        assert text and all(line.strip() for line in text)
        assert not any("-->" in line for line in text)
        cues.append((start, end, "\n".join(text)))
    starts = [cue[0] for cue in cues]
    assert starts == sorted(starts)
    return cues


# --- the form -------------------------------------------------------------------------------------


def test_form_defaults() -> None:
    parsed = parse_transcription_form({"model": " whisper-1 "})
    assert parsed == TranscriptionRequest(
        model="whisper-1",
        language=None,
        prompt=None,
        response_format="json",
        temperature=0.0,
        timestamp_granularities=("segment",),
        task="transcribe",
    )


def test_form_with_every_field() -> None:
    parsed = parse_transcription_form(
        {
            "model": MODEL,
            "language": "de",
            "prompt": " Gemma, SGLang. ",
            "response_format": "verbose_json",
            "temperature": "0.4",
            # as the openai SDK sends a list: one part per value, named with brackets
            "timestamp_granularities[]": ["segment", "segment"],
            "stream": "false",
            "chunking_strategy": "auto",  # unknown fields are ignored, as OpenAI does
        },
        task="translate",
    )
    assert parsed == TranscriptionRequest(
        model=MODEL,
        language="de",
        prompt="Gemma, SGLang.",
        response_format="verbose_json",
        temperature=0.4,
        timestamp_granularities=("segment",),
        task="translate",
    )
    assert request(timestamp_granularities="segment").timestamp_granularities == ("segment",)
    assert request(model=MODEL, language="", prompt="").language is None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({}, "model"),
        ({"model": "  "}, "model"),
        ({"model": ["whisper-1", MODEL]}, "model"),
        ({"model": "whisper-1", "file": "not a file part"}, "file"),
        ({"model": "whisper-1", "response_format": "xml"}, "response_format"),
        ({"model": "whisper-1", "response_format": ["json", "text"]}, "response_format"),
        ({"model": "whisper-1", "temperature": "warm"}, "temperature"),
        ({"model": "whisper-1", "temperature": "1.5"}, "temperature"),
        ({"model": "whisper-1", "temperature": "-0.1"}, "temperature"),
        ({"model": "whisper-1", "temperature": "nan"}, "temperature"),
        ({"model": "whisper-1", "language": "12"}, "language"),
        ({"model": "whisper-1", "language": "x" * 40}, "language"),
        ({"model": "whisper-1", "timestamp_granularities[]": "word"}, "timestamp_granularities[]"),
        (
            {"model": "whisper-1", "timestamp_granularities[]": ["segment", "word"]},
            "timestamp_granularities[]",
        ),
        ({"model": "whisper-1", "timestamp_granularities": "char"}, "timestamp_granularities[]"),
        ({"model": "whisper-1", "stream": "true"}, "stream"),
    ],
)
def test_bad_fields_are_400s_naming_the_field(
    fields: dict[str, str | list[str]], param: str
) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        parse_transcription_form(fields)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert caught.value.message


def test_word_timestamps_say_they_are_not_supported() -> None:
    with pytest.raises(errors.InvalidRequest, match="Word-level timestamps are not supported"):
        request(**{"timestamp_granularities[]": "word"})


def test_whisper_model_names() -> None:
    for name in ("whisper-1", "tiny", "base.en", "small", "medium.en", "large", "large-v3"):
        assert is_whisper_model(name)
    for name in ("turbo", "large-v3-turbo"):
        assert is_whisper_model(name)
    for name in ("gpt-4o-transcribe", "whisper", "tiny.fr", "large-v4", MODEL, ""):
        assert not is_whisper_model(name)


def test_instructions() -> None:
    assert gemma_instruction("transcribe", None, None).startswith(
        "Transcribe this audio verbatim. Output only the transcript."
    )
    translate = gemma_instruction("translate", "fr", "Le Gemma. " + "x" * 5000)
    assert translate.startswith(
        "Translate the speech in this audio into English. Output only the translation."
    )
    assert "fr" in translate
    assert len(translate) < 1300  # only the end of a long prompt is kept, as Whisper does


# --- Gemma 3n -------------------------------------------------------------------------------------


async def test_gemma_gets_clips_of_at_most_30_s_in_order_cut_at_the_pauses(
    meeting: bytes, meeting_clips: list[npt.NDArray[np.float32]]
) -> None:
    gemma = FakeGemma()
    body, media_type = await service(gemma, clip_concurrency=1).transcribe(
        meeting, "meeting.m4a", request(response_format="verbose_json", temperature="0.3")
    )
    assert media_type == "application/json"
    assert len(gemma.calls) == len(meeting_clips) == 3
    received = [call.samples for call in gemma.calls]
    for got, expected in zip(received, meeting_clips, strict=True):  # in order, one call each
        assert len(got) == len(expected)
        np.testing.assert_allclose(got, expected, atol=1.0 / 32767 + 1e-6)
    total = sum(len(clip) for clip in meeting_clips) / 16_000  # AAC adds a little padding
    assert total == pytest.approx(SECONDS, abs=0.1)
    cuts = np.cumsum([len(clip) for clip in received])[:-1] / 16_000
    np.testing.assert_allclose(cuts, GAPS, atol=0.15)  # in the pauses, not at 30 s
    for call in gemma.calls:
        assert call.language is None
        assert call.instruction == gemma_instruction("transcribe", None, None)
        assert call.temperature == 0.3

    verbose = json.loads(body)
    assert verbose["task"] == "transcribe"
    assert verbose["language"] == "unknown"
    assert verbose["duration"] == pytest.approx(total, abs=1e-3)
    assert verbose["usage"] == {"type": "duration", "seconds": math.ceil(total)}
    texts = [f"n{len(clip)}" for clip in meeting_clips]
    assert verbose["text"] == " ".join(texts)
    segments = verbose["segments"]
    assert [s["id"] for s in segments] == [0, 1, 2]
    assert [s["text"] for s in segments] == texts
    bounds = [0.0, *cuts, total]
    for segment, (start, end) in zip(segments, itertools.pairwise(bounds), strict=True):
        assert segment["start"] == pytest.approx(start, abs=1e-3)
        assert segment["end"] == pytest.approx(end, abs=1e-3)
        assert segment["seek"] == round(start * 100)
        assert segment["tokens"] == []
        assert segment["temperature"] == 0.3
        assert segment["avg_logprob"] == 0.0
        assert segment["no_speech_prob"] == 0.0
        assert segment["compression_ratio"] > 0
    assert set(segments[0]) == {
        "id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
        "compression_ratio", "no_speech_prob",
    }  # fmt: skip


@pytest.mark.parametrize("response_format", ["json", "text", "srt", "vtt", "verbose_json"])
async def test_gemma_every_response_format(
    meeting: bytes, meeting_clips: list[npt.NDArray[np.float32]], response_format: str
) -> None:
    body, media_type = await service(FakeGemma()).transcribe(
        meeting, "meeting.m4a", request(response_format=response_format)
    )
    text = " ".join(f"n{len(clip)}" for clip in meeting_clips)
    total = sum(len(clip) for clip in meeting_clips) / 16_000
    decoded = body.decode()
    if response_format == "json":
        assert media_type == "application/json"
        usage = {"type": "duration", "seconds": math.ceil(total)}
        assert json.loads(body) == {"text": text, "usage": usage}
    elif response_format == "text":
        assert media_type == "text/plain; charset=utf-8"
        assert decoded == text + "\n"
    elif response_format == "verbose_json":
        assert json.loads(body)["text"] == text
    else:
        vtt = response_format == "vtt"
        assert media_type == ("text/vtt" if vtt else "text/plain") + "; charset=utf-8"
        cues = parse_cues(decoded, vtt=vtt)
        assert [cue[2] for cue in cues] == text.split(" ")
        assert cues[0][0] == 0.0
        assert cues[-1][1] == pytest.approx(total, abs=1e-3)
        for (_, end, _), (start, _, _) in itertools.pairwise(cues):
            assert end == start  # clips are contiguous


async def test_gemma_clips_run_with_bounded_concurrency(
    meeting: bytes, meeting_clips: list[npt.NDArray[np.float32]]
) -> None:
    gemma = FakeGemma(delay=0.05)
    body, _ = await service(gemma, clip_concurrency=2).transcribe(
        meeting, None, request(response_format="text")
    )
    assert gemma.most_in_flight == 2
    # Stitched in audio order whatever order the clips finished in.
    assert body.decode() == " ".join(f"n{len(clip)}" for clip in meeting_clips) + "\n"


async def test_hints_and_translation_reach_gemma(meeting: bytes) -> None:
    gemma = FakeGemma(reply="Hello there.")
    form = {"model": MODEL, "language": "fr", "prompt": "Gemma", "response_format": "verbose_json"}
    body, _ = await service(gemma).transcribe(
        meeting, "m.m4a", parse_transcription_form(form, task="translate")
    )
    verbose = json.loads(body)
    assert verbose["task"] == "translate"
    assert verbose["language"] == "french"  # the English name, as OpenAI reports it
    assert verbose["text"] == "Hello there. Hello there. Hello there."
    assert {call.instruction for call in gemma.calls} == {
        gemma_instruction("translate", "fr", "Gemma")
    }
    assert {call.language for call in gemma.calls} == {"fr"}


async def test_silent_clips_and_awkward_text(meeting: bytes) -> None:
    """Empty answers leave no segment; "-->", markup and newlines cannot break the subtitles."""

    class Awkward(FakeGemma):
        async def __call__(self, url: str, *args: Any) -> str:
            await super().__call__(url, *args)
            return ["  ", "a --> b\n\n<i>&", "last\nline"][len(self.calls) - 1]

    vtt, _ = await service(Awkward(), clip_concurrency=1).transcribe(
        meeting, None, request(response_format="vtt")
    )
    cues = parse_cues(vtt.decode(), vtt=True)
    # Gemma's whitespace is normalised (speech has no line structure); VTT text is escaped.
    assert [cue[2] for cue in cues] == ["a -&gt; b &lt;i&gt;&amp;", "last line"]
    assert cues[0][0] > 20  # the first clip, silent, has no cue
    srt, _ = await service(Awkward(), clip_concurrency=1).transcribe(
        meeting, None, request(response_format="srt")
    )
    assert [cue[2] for cue in parse_cues(srt.decode(), vtt=False)] == ["a -> b <i>&", "last line"]
    verbose, _ = await service(Awkward(), clip_concurrency=1).transcribe(
        meeting, None, request(response_format="verbose_json")
    )
    body = json.loads(verbose)
    assert body["text"] == "a --> b <i>& last line"
    assert [s["id"] for s in body["segments"]] == [0, 1]


async def test_a_failing_clip_fails_the_request_with_its_own_error(meeting: bytes) -> None:
    gemma = FakeGemma(fail_on_call=2, delay=0.05)
    with pytest.raises(errors.UpstreamUnavailable) as caught:  # not an ExceptionGroup
        await service(gemma, clip_concurrency=1).transcribe(meeting, None, request())
    assert caught.value.status_code == 503
    assert len(gemma.calls) == 2  # the third clip was never sent


async def test_short_audio_in_any_format_is_one_clip() -> None:
    gemma = FakeGemma(reply="hi")
    for fmt in ("wav", "mp3", "webm", "ogg"):
        data = factory.encode(factory.tone(1.5, rate=48_000), fmt, rate=48_000)
        # Browsers name FormData files "blob": the bytes decide the format.
        body, _ = await service(gemma).transcribe(data, "blob", request())
        assert json.loads(body) == {"text": "hi", "usage": {"type": "duration", "seconds": 2}}
    assert len(gemma.calls) == 4
    assert all(len(call.samples) == pytest.approx(24_000, abs=1600) for call in gemma.calls)


async def test_gemma_needs_audio_enabled(meeting: bytes) -> None:
    gemma = FakeGemma()
    with pytest.raises(errors.InvalidRequest) as caught:
        await service(gemma, enable_audio=False).transcribe(meeting, None, request())
    assert (caught.value.param, caught.value.code) == ("model", "audio_disabled")
    assert not gemma.calls


# --- limits and bad uploads -----------------------------------------------------------------------


async def test_upload_over_the_limit_is_413() -> None:
    gemma = FakeGemma()
    data = factory.encode(factory.tone(1.0), "wav")  # 32 KB
    with pytest.raises(errors.PayloadTooLarge) as caught:
        await service(gemma, max_audio_bytes=16_000).transcribe(data, "a.wav", request())
    assert caught.value.status_code == 413
    assert caught.value.body()["error"]["type"] == "invalid_request_error"
    assert caught.value.param == "file"
    assert not gemma.calls
    body, _ = await service(gemma, max_audio_bytes=len(data)).transcribe(data, "a.wav", request())
    assert json.loads(body)["text"]


@pytest.mark.parametrize(
    ("data", "code"),
    [(b"", "invalid_audio"), (b"definitely not audio" * 10, "invalid_audio")],
)
async def test_empty_or_garbage_files_are_400s(data: bytes, code: str) -> None:
    gemma = FakeGemma()
    with pytest.raises(errors.InvalidRequest) as caught:
        await service(gemma).transcribe(data, "speech.mp3", request())
    assert (caught.value.status_code, caught.value.param, caught.value.code) == (400, "file", code)
    assert not gemma.calls


async def test_audio_over_the_duration_limit_is_400(meeting: bytes) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        await service(FakeGemma(), max_audio_seconds=60).transcribe(meeting, None, request())
    assert (caught.value.param, caught.value.code) == ("file", "audio_too_long")


async def test_unknown_model_is_404() -> None:
    data = factory.encode(factory.tone(1.0), "wav")
    with pytest.raises(errors.ModelNotFound) as caught:
        await service(FakeGemma()).transcribe(data, None, request(model="gpt-4o-transcribe"))
    assert (caught.value.status_code, caught.value.code) == (404, "model_not_found")
    assert caught.value.param == "model"


async def test_whisper_not_enabled_or_not_installed_is_400(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = factory.encode(factory.tone(1.0), "wav")
    with pytest.raises(errors.InvalidRequest, match="not enabled") as caught:
        await service(FakeGemma()).transcribe(data, None, request(model="whisper-1"))
    assert (caught.value.param, caught.value.code) == ("model", "whisper_not_available")
    assert MODEL in caught.value.message  # tells the client what does work

    monkeypatch.setattr(WhisperTranscriber, "is_installed", staticmethod(lambda: False))
    whisper = WhisperTranscriber(settings())
    with pytest.raises(errors.InvalidRequest, match="not installed"):
        await service(FakeGemma(), whisper=whisper).transcribe(data, None, request(model="base"))


# --- Whisper --------------------------------------------------------------------------------------


@needs_whisper
@pytest.mark.parametrize("response_format", ["json", "text", "srt", "vtt", "verbose_json"])
async def test_whisper_every_response_format(checkpoint: Path, response_format: str) -> None:
    gemma = FakeGemma()
    whisper = WhisperTranscriber(settings(whisper_model=str(checkpoint)))
    data = factory.encode(factory.tone(3.0, rate=48_000), "webm", rate=48_000)
    body, media_type = await service(gemma, whisper=whisper).transcribe(
        data,
        "clip.webm",
        request(
            model="whisper-1", language="en", temperature="0.5", response_format=response_format
        ),
    )
    assert not gemma.calls
    decoded = body.decode()
    if response_format == "json":
        parsed = json.loads(body)
        assert set(parsed) == {"text", "usage"}
        assert isinstance(parsed["text"], str)
        assert parsed["usage"] == {"type": "duration", "seconds": 3}
    elif response_format == "text":
        assert media_type.startswith("text/plain")
        assert decoded.endswith("\n")
    elif response_format == "verbose_json":
        verbose = json.loads(body)
        assert (verbose["task"], verbose["language"]) == ("transcribe", "english")
        assert verbose["duration"] == pytest.approx(3.0)
        assert verbose["segments"]
        for segment in verbose["segments"]:
            assert 0 <= segment["start"] <= segment["end"] <= 3.0
            assert segment["tokens"] and all(isinstance(t, int) for t in segment["tokens"])
            assert segment["temperature"] == 0.5
    else:
        for _, end, _ in parse_cues(decoded, vtt=response_format == "vtt"):
            assert end <= 3.0


@needs_whisper
async def test_a_whisper_model_name_and_translation_go_to_whisper(checkpoint: Path) -> None:
    whisper = WhisperTranscriber(settings(whisper_model=str(checkpoint)))
    form = {
        "model": "tiny",
        "language": "fr",
        "temperature": "0.5",
        "response_format": "verbose_json",
    }
    body, _ = await service(FakeGemma(), whisper=whisper).transcribe(
        factory.encode(factory.tone(2.0), "flac"),
        "a.flac",
        parse_transcription_form(form, task="translate"),
    )
    verbose = json.loads(body)
    assert (verbose["task"], verbose["language"]) == ("translate", "french")


@needs_whisper
async def test_an_unloadable_whisper_model_is_a_server_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    whisper = WhisperTranscriber(settings(whisper_model=str(broken)))
    with pytest.raises(errors.GatewayError) as caught:
        await service(FakeGemma(), whisper=whisper).transcribe(
            factory.encode(factory.tone(1.0), "wav"), None, request(model="whisper-1")
        )
    assert (caught.value.status_code, caught.value.code) == (500, "whisper_unavailable")


def test_languages_are_named_as_openai_names_them() -> None:
    assert language_name("en") == "english" and language_name("ZH") == "chinese"
    assert language_name("haw") == "hawaiian" and language_name("xx") == "xx"
    assert "this language: french." in gemma_instruction("transcribe", "fr", None)
