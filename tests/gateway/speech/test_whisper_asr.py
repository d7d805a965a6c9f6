"""Tests of whisper_asr.py: the real openai-whisper code on a tiny random checkpoint, on the CPU.

The checkpoint is built here with whisper's own model classes (tests/whisper_factory.py) and
loaded through WhisperTranscriber's normal loading code, so nothing is downloaded. Its text is
noise; the segments, timestamps, languages and the loading rules around it are real. Skipped only
where openai-whisper is not installed and this is not CI (CI installs it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import audio_factory as factory
import numpy as np
import pytest

from gateway import errors
from gateway.media import audio
from gateway.settings import Settings
from gateway.speech.whisper_asr import TranscriptResult, WhisperTranscriber

if not WhisperTranscriber.is_installed() and os.environ.get("CI") != "true":
    pytest.skip("openai-whisper is not installed (it is in CI)", allow_module_level=True)

import whisper_factory

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return whisper_factory.build_tiny_checkpoint(tmp_path_factory.mktemp("whisper") / "tiny.pt")


@pytest.fixture(scope="module")
def english_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("whisper-en") / "tiny.en.pt"
    return whisper_factory.build_tiny_checkpoint(path, multilingual=False)


def settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]


def assert_well_formed(result: TranscriptResult, duration: float) -> None:
    assert result.duration == pytest.approx(duration)
    assert isinstance(result.text, str)
    assert result.text == result.text.strip()
    assert result.segments
    assert [s.id for s in result.segments] == list(range(len(result.segments)))
    previous_start = 0.0
    for segment in result.segments:
        assert 0.0 <= segment.start <= segment.end <= duration
        assert segment.start >= previous_start
        previous_start = segment.start
        assert segment.tokens
        assert 0.0 <= segment.no_speech_prob <= 1.0
        assert segment.temperature in (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)


def test_is_installed() -> None:
    assert WhisperTranscriber.is_installed()


async def test_transcribes_decoded_audio_and_loads_the_model_once(checkpoint: Path) -> None:
    transcriber = WhisperTranscriber(settings(whisper_model=str(checkpoint)))
    assert transcriber.loaded_models == 0  # nothing is loaded before the first request

    # Decoded by audio.py from a browser-style WebM/Opus: Whisper gets samples, not a file.
    decoded = audio.decode_audio_sync(
        factory.encode(factory.tone(4.0, rate=48_000), "webm", rate=48_000),
        declared_format="webm",
        param="file",
        settings=settings(),
    )
    first = await transcriber.transcribe(decoded.samples, language="en")
    assert_well_formed(first, decoded.duration)
    assert first.language == "english"

    second = await transcriber.transcribe(factory.noise(3.0), language="English", temperature=0.5)
    assert_well_formed(second, 3.0)
    assert {s.temperature for s in second.segments} == {0.5}
    assert transcriber.loaded_models == 1


async def test_audio_longer_than_one_window_gets_later_timestamps(checkpoint: Path) -> None:
    transcriber = WhisperTranscriber(settings(whisper_model=str(checkpoint)))
    result = await transcriber.transcribe(factory.tone(45.0), language="en", temperature=0.5)
    assert_well_formed(result, 45.0)
    assert result.segments[-1].start >= 30.0  # the second 30 s window was decoded too


async def test_language_is_detected_when_not_given(checkpoint: Path) -> None:
    from whisper.tokenizer import LANGUAGES

    transcriber = WhisperTranscriber(settings(whisper_model=str(checkpoint)))
    result = await transcriber.transcribe(factory.tone(2.0), temperature=0.5)
    assert result.language in LANGUAGES.values()


async def test_translate_and_prompt_are_accepted(checkpoint: Path) -> None:
    transcriber = WhisperTranscriber(settings(whisper_model=str(checkpoint)))
    result = await transcriber.transcribe(
        factory.tone(2.0),
        language="fr",
        prompt="Gemma, SGLang, Whisper.",
        temperature=0.5,
        task="translate",
    )
    assert_well_formed(result, 2.0)
    assert result.language == "french"


async def test_bad_arguments_are_400s(checkpoint: Path) -> None:
    transcriber = WhisperTranscriber(settings(whisper_model=str(checkpoint)))
    samples = factory.tone(1.0)
    with pytest.raises(errors.InvalidRequest) as caught:
        await transcriber.transcribe(samples, language="klingon")
    assert caught.value.param == "language"
    with pytest.raises(errors.InvalidRequest) as caught:
        await transcriber.transcribe(samples, temperature=1.5)
    assert caught.value.param == "temperature"
    with pytest.raises(errors.InvalidRequest) as caught:
        await transcriber.transcribe(samples, task="summarise")  # type: ignore[arg-type]
    assert caught.value.param == "task"
    with pytest.raises(ValueError, match="mono"):
        await transcriber.transcribe(np.zeros((2, 16_000), np.float32))


async def test_english_only_model_transcribes_english(english_checkpoint: Path) -> None:
    transcriber = WhisperTranscriber(settings(whisper_model=str(english_checkpoint)))
    result = await transcriber.transcribe(
        factory.tone(2.0), language="de", task="translate", temperature=0.5
    )
    assert_well_formed(result, 2.0)
    assert result.language == "english"


async def test_each_concurrent_slot_gets_its_own_model(checkpoint: Path) -> None:
    transcriber = WhisperTranscriber(settings(whisper_model=str(checkpoint), whisper_concurrency=2))
    results: list[TranscriptResult] = []

    async def one(seconds: float) -> None:
        results.append(
            await transcriber.transcribe(factory.tone(seconds), language="en", temperature=0.5)
        )

    async with anyio.create_task_group() as group:
        for seconds in (2.0, 3.0, 4.0):
            group.start_soon(one, seconds)
    assert sorted(r.duration for r in results) == [2.0, 3.0, 4.0]
    for result in results:
        assert_well_formed(result, result.duration)
    assert 1 <= transcriber.loaded_models <= 2


async def test_preload_loads_before_the_first_request(checkpoint: Path) -> None:
    transcriber = WhisperTranscriber(settings(whisper_model=str(checkpoint)))
    await transcriber.preload()
    assert transcriber.loaded_models == 1
    await transcriber.transcribe(factory.tone(1.0), language="en", temperature=0.5)
    assert transcriber.loaded_models == 1


async def test_a_missing_official_model_is_not_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import whisper

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("the gateway must not download a model at request time")

    monkeypatch.setattr(whisper, "_download", no_download)
    transcriber = WhisperTranscriber(
        settings(whisper_model="tiny", whisper_download_root=str(tmp_path))
    )
    with pytest.raises(errors.GatewayError) as caught:
        await transcriber.transcribe(factory.tone(1.0))
    assert caught.value.status_code == 500
    assert caught.value.code == "whisper_unavailable"
    assert str(tmp_path) not in caught.value.message  # server paths stay in the log
    assert transcriber.loaded_models == 0


def test_an_official_model_in_the_download_folder_is_loaded_from_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # whisper.load_model("tiny", download_root=...) is the path users hit; its checksum check
    # lives in whisper._download, stood in for here because our checkpoint is not OpenAI's.
    import whisper

    whisper_factory.build_tiny_checkpoint(tmp_path / "tiny.pt", text_layers=4, text_heads=6)
    seen: list[tuple[str, str]] = []

    def local_only(url: str, root: str, in_memory: bool) -> str:
        seen.append((url, root))
        return os.path.join(root, os.path.basename(url))

    monkeypatch.setattr(whisper, "_download", local_only)
    transcriber = WhisperTranscriber(
        settings(whisper_model="tiny", whisper_download_root=str(tmp_path))
    )

    async def run() -> TranscriptResult:
        return await transcriber.transcribe(factory.tone(1.0), language="en", temperature=0.5)

    assert_well_formed(anyio.run(run), 1.0)
    assert seen == [(whisper._MODELS["tiny"], str(tmp_path))]


@pytest.fixture
def corrupt_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"not a checkpoint")
    return path


@pytest.mark.parametrize("name", ["no-such-model", "corrupt"])
async def test_unusable_models_are_clear_server_errors(corrupt_checkpoint: Path, name: str) -> None:
    if name == "corrupt":
        name = str(corrupt_checkpoint)
    transcriber = WhisperTranscriber(settings(whisper_model=name))
    with pytest.raises(errors.GatewayError) as caught:
        await transcriber.transcribe(factory.tone(1.0))
    assert caught.value.code == "whisper_unavailable"
    assert "Whisper model" in caught.value.message
