"""memory.py and its callers: decoded media are accounted before decoding (issue 13, finding 3)."""

from __future__ import annotations

import io
import struct
import threading
import wave
from typing import Any

import anyio
import audio_factory as factory
import pytest
from image_factory import encode, marked

from gateway import errors
from gateway.media import audio
from gateway.media.memory import MediaBudget, declared_pixels
from gateway.settings import Settings
from gateway.speech.transcription import TranscriptionService, parse_transcription_form

pytestmark = pytest.mark.anyio
MODEL = "google/gemma-3n-E4B-it"
MIB = 1 << 20


def settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, model_name=MODEL, **overrides)  # type: ignore[call-arg]


def wav(seconds: float, rate: int = 16_000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\0\0" * int(seconds * rate))
    return buffer.getvalue()


def test_a_lease_is_held_against_both_limits_and_given_back() -> None:
    budget = MediaBudget(10 * MIB, 4 * MIB)
    with budget.lease() as first, budget.lease() as second:
        first.take(3 * MIB, param="a")
        with pytest.raises(errors.PayloadTooLarge):
            first.take(2 * MIB, param="a")  # 5 MiB > 4 MiB for one request
        second.take(4 * MIB, param="b")
        with budget.lease() as third:
            third.take(3 * MIB, param="c")
            with pytest.raises(errors.RateLimited) as refused:
                third.take(1, param="c")  # 10 MiB held in all
            assert refused.value.headers["Retry-After"]
        assert budget.used == 7 * MIB
    assert budget.used == 0


def test_absurd_sample_rates_are_refused_before_decoding() -> None:
    one_hertz = wav(599, rate=1)  # 1,242 bytes of header and samples: 10 minutes at 16 kHz
    assert len(one_hertz) < 1300
    with pytest.raises(errors.InvalidRequest) as raised:
        audio.decode_audio_sync(one_hertz, declared_format=None, param="file", settings=settings())
    assert raised.value.code == "unsupported_sample_rate"


def test_a_declared_length_over_the_limit_is_refused_before_decoding() -> None:
    long = wav(31, rate=8000)
    with pytest.raises(errors.InvalidRequest) as raised:
        audio.decode_audio_sync(
            long, declared_format=None, param="file", settings=settings(), max_seconds=30
        )
    assert raised.value.code == "audio_too_long"


def test_decoding_takes_from_the_lease_as_it_goes() -> None:
    budget = MediaBudget(64 * MIB, 32 * MIB)
    data = factory.encode(factory.tone(45.0), "flac")
    with budget.lease() as lease:
        decoded = audio.decode_audio_sync(
            data, declared_format=None, param="file", settings=settings(), lease=lease
        )
        assert decoded.duration == pytest.approx(45.0, abs=0.1)
        assert lease.held >= decoded.samples.nbytes * 2  # the peak, accounted before it
    tight = MediaBudget(64 * MIB, 4 * MIB)  # 45 s need 5.8 MB
    with tight.lease() as small, pytest.raises(errors.PayloadTooLarge):
        audio.decode_audio_sync(
            data, declared_format=None, param="file", settings=settings(), lease=small
        )
    assert tight.used == 0
    assert budget.used == 0


class HeldGemma:
    """Holds every transcription on its first clip until released."""

    def __init__(self) -> None:
        self.started = 0
        self.release = anyio.Event()

    async def __call__(self, url: str, language: str | None, instruction: str, t: float) -> str:
        self.started += 1
        await self.release.wait()
        return "words"


async def test_concurrent_transcriptions_hold_decoded_audio_within_the_budget() -> None:
    # Each 60 s upload decodes to 7.7 MB (16 kHz float32, twice at the peak); 40 of them at once
    # held 2 GB before there was a budget.
    config = settings(
        max_decoded_media_bytes=32 * MIB, max_decoded_media_bytes_per_request=16 * MIB
    )
    gemma = HeldGemma()
    service = TranscriptionService(config, audio.AudioDecoder(config), None, gemma)
    upload = wav(60)
    outcomes: list[str] = []
    form = parse_transcription_form({"model": MODEL}, task="transcribe")

    async def one() -> None:
        try:
            await service.transcribe(upload, "a.wav", form)
            outcomes.append("ok")
        except errors.RateLimited:
            outcomes.append("429")

    async with anyio.create_task_group() as tasks:
        for _ in range(40):
            tasks.start_soon(one)
        with anyio.fail_after(20):
            while len(outcomes) + gemma.started < 40:  # noqa: ASYNC110 - counting, no event
                await anyio.sleep(0.05)
        held = service._budget.used
        gemma.release.set()
    assert held <= 32 * MIB
    assert outcomes.count("429") >= 30 and "ok" in outcomes
    assert service._budget.used == 0


def test_declared_pixels_from_headers() -> None:
    image = marked(300, 200)
    for fmt in ("PNG", "GIF", "BMP", "WEBP", "JPEG"):
        assert declared_pixels(encode(image, fmt)[:2048]) == 60_000, fmt
    assert declared_pixels(encode(image, "WEBP", lossless=True)) == 60_000
    assert declared_pixels(b"not an image") is None
    # A lying PNG header is what is accounted: the worker refuses it if it is over the limit.
    png = bytearray(encode(image, "PNG"))
    png[16:24] = struct.pack(">II", 100_000, 100_000)
    assert declared_pixels(bytes(png)) == 10**10


async def test_images_are_accounted_while_they_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_images import make_preparer

    preparer, fetcher = make_preparer(image_cache_entries=0)
    budget = MediaBudget(1 << 30, 256 * MIB)
    seen: list[int] = []
    submit = preparer._submit

    async def watched(path: str, encoding: str) -> str:
        seen.append(budget.used)
        return await submit(path, encoding)

    monkeypatch.setattr(preparer, "_submit", watched)
    try:
        url = (
            "data:image/png;base64,"
            + __import__("base64").b64encode(encode(marked(640, 480), "PNG")).decode()
        )
        with budget.lease() as lease:
            await preparer.prepare(url, param="p", lease=lease)
            assert lease.held == 0  # given back once decoded
        assert seen == [640 * 480 * 4]
    finally:
        preparer.close()
        await fetcher.aclose()


def test_threads_share_one_budget() -> None:
    budget = MediaBudget(1000, 1000)
    taken: list[int] = []

    def grab() -> None:
        with budget.lease() as lease:
            for _ in range(100):
                try:
                    lease.take(1, param=None)
                    taken.append(1)
                except errors.RateLimited:
                    pass
            assert budget.used <= 1000

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert budget.used == 0 and len(taken) >= 100
