"""Prepare a conversation's image and audio parts for SGLang, in place, before it is sent.

SGLang must only ever receive small, clean `data:` URLs (it would otherwise download any URL it
is handed, or read local paths), and Gemma 3n hears audio only as 16 kHz clips of at most 30 s.
So, for the parts `conversation.py` listed:

- `image_url`: fetched (if http(s)) under `media/fetch.py`'s guards, checked, normalised and
  re-encoded by `images.py`; the part then carries a JPEG `data:` URL;
- `input_audio` / `audio_url`: the bytes (base64, `data:` URL or guarded fetch) are decoded by
  `audio.py`, then, by `AUDIO_MODE`:
  * native: split into clips of at most 30 s at quiet points, each sent as a WAV `data:` URL in an
    `audio_url` part (the one form old and new SGLang builds both load);
  * whisper: transcribed locally, the part replaced by a text part marked as a transcript;
  * auto: native when SGLang reports audio understanding and the request's audio fits
    `MAX_NATIVE_AUDIO_SECONDS`, otherwise Whisper when it is installed, otherwise a clear 400.

Parts are prepared concurrently; the heavy work runs in `images.py`'s and `audio.py`'s pools.
"""

from __future__ import annotations

import binascii
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio

from gateway.chat.conversation import Conversation, MediaPart, join_adjacent_text
from gateway.errors import GatewayError, InvalidRequest, UnsupportedContent
from gateway.media.audio import (
    DECLARED_FORMATS,
    AudioDecoder,
    DecodedAudio,
    clip_to_wav_data_url,
    split_into_clips,
)
from gateway.media.fetch import MediaFetcher
from gateway.media.images import ImagePreparer
from gateway.media.memory import MediaBudget, MediaLease, media_budget
from gateway.server.metrics import Metrics
from gateway.settings import Settings
from gateway.sglang.health import Capabilities
from gateway.speech.whisper_asr import WhisperTranscriber

logger = logging.getLogger("gateway.media")

T = TypeVar("T")

TRANSCRIPT_LABEL = "Transcript of the user's audio (automatic speech recognition):"


class MediaPreparer:
    """Turns the media parts of a conversation into what SGLang and Gemma 3n can take."""

    def __init__(
        self,
        settings: Settings,
        *,
        fetcher: MediaFetcher,
        images: ImagePreparer,
        audio: AudioDecoder,
        whisper: WhisperTranscriber | None,
        capabilities: Callable[[], Capabilities],
        metrics: Metrics | None = None,
        budget: MediaBudget | None = None,
    ) -> None:
        self._settings = settings
        self._budget = budget or media_budget(settings)
        self._fetcher = fetcher
        self._images = images
        self._audio = audio
        self._whisper = whisper
        self._capabilities = capabilities
        self._metrics = metrics
        kinds = {"image_url"}
        if settings.enable_audio:
            kinds |= {"input_audio", "audio_url"}
        self.accepted_kinds = frozenset(kinds)

    async def prepare(self, conversation: Conversation) -> None:
        """Rewrite every media part of `conversation` in place, or raise a 400 naming the part.

        The decoded media are held against the memory budget (`gateway.media.memory`) until
        they are prepared; what stays is the small encoded form SGLang gets.
        """
        if not conversation.media:
            return
        with self._budget.lease() as lease:
            await self._prepare(conversation, lease)

    async def _prepare(self, conversation: Conversation, lease: MediaLease) -> None:
        capabilities = self._capabilities()
        images = [part for part in conversation.media if part.kind == "image_url"]
        sounds = [part for part in conversation.media if part.kind != "image_url"]
        if images:
            self._check_images(images, capabilities)
        jobs: list[Callable[[], Awaitable[Any]]] = [self._image_job(p, lease) for p in images]
        jobs += [self._audio_job(p, lease) for p in sounds]
        started = time.perf_counter()
        results = await _gather(jobs)
        seconds = time.perf_counter() - started
        image_urls, decoded = results[: len(images)], results[len(images) :]
        for part, url in zip(images, image_urls, strict=True):
            part.part["image_url"] = {"url": url}
            part.prepared = [part.part]
        if self._metrics is not None:
            # Prepared concurrently, so both kinds are charged the same wall time.
            self._metrics.images_prepared(len(images), seconds)
            audio_seconds = sum(sound.duration for sound in decoded)
            self._metrics.audio_prepared(len(sounds), seconds, audio_seconds)
        if sounds:
            replacements = await self._audio_replacements(sounds, decoded, capabilities)
            for part, new_parts in zip(sounds, replacements, strict=True):
                _replace_part(conversation.messages, part.part, new_parts)
                part.prepared = new_parts
            for message in conversation.messages:
                if isinstance(message["content"], list):
                    message["content"] = join_adjacent_text(message["content"])

    # --- images ---------------------------------------------------------------------------

    def _check_images(self, images: list[MediaPart], capabilities: Capabilities) -> None:
        if capabilities.images is False:
            raise UnsupportedContent(
                "The model server reports that this model does not understand images.",
                param=images[0].param,
            )
        limit = self._settings.max_images_per_request
        if len(images) > limit:
            raise InvalidRequest(
                f"Too many images: {len(images)}. At most {limit} images are accepted per request.",
                param=images[limit].param,
                code="too_many_images",
            )

    def _image_job(self, part: MediaPart, lease: MediaLease) -> Callable[[], Awaitable[str]]:
        url = part.part["image_url"]["url"]
        return lambda: self._images.prepare(url, param=part.param, lease=lease)

    # --- audio ----------------------------------------------------------------------------

    def _audio_job(
        self, part: MediaPart, lease: MediaLease
    ) -> Callable[[], Awaitable[DecodedAudio]]:
        async def job() -> DecodedAudio:
            data, declared = await self._audio_bytes(part)
            return await self._audio.decode(
                data,
                declared_format=declared,
                param=part.param,
                max_seconds=self._settings.max_audio_seconds,
                lease=lease,
            )

        return job

    async def _audio_bytes(self, part: MediaPart) -> tuple[bytes, str | None]:
        limit = self._settings.max_audio_bytes
        if part.kind == "input_audio":
            payload = part.part["input_audio"]
            data = decode_base64(payload["data"], max_bytes=limit, param=f"{part.param}.data")
            return data, payload["format"]
        url: str = part.part["audio_url"]["url"]
        param = f"{part.param}.url"
        if url.startswith("data:"):
            media_type, data = parse_data_url(url, max_bytes=limit, param=param)
            subtype = media_type.partition("/")[2]
            return data, subtype if subtype in DECLARED_FORMATS else None
        if url.startswith(("http://", "https://")):
            fetched = await self._fetcher.fetch(
                url, param=param, max_bytes=limit, what="audio", too_large_code="audio_too_large"
            )
            return fetched.data, None
        raise InvalidRequest(
            "Audio URLs must be data: URLs or http(s) URLs.", param=param, code="invalid_url"
        )

    async def _audio_replacements(
        self,
        parts: list[MediaPart],
        decoded: Sequence[DecodedAudio],
        capabilities: Capabilities,
    ) -> list[list[dict[str, Any]]]:
        total = 0.0
        for part, sound in zip(parts, decoded, strict=True):
            total += sound.duration
            if total > self._settings.max_audio_seconds:
                raise InvalidRequest(
                    f"Too much audio: more than {self._settings.max_audio_seconds:g} seconds in "
                    "one request (MAX_AUDIO_SECONDS).",
                    param=part.param,
                    code="audio_too_long",
                )
        if self._audio_mode(total, capabilities, parts[0].param) == "native":
            return await _gather([self._native_clips(sound) for sound in decoded])
        return await _gather([self._transcript(sound) for sound in decoded])

    def _audio_mode(self, total: float, capabilities: Capabilities, param: str) -> str:
        mode = self._settings.audio_mode
        native_understood = capabilities.audio is not False
        if mode == "auto":
            if native_understood and total <= self._settings.max_native_audio_seconds:
                return "native"
            if self._whisper is not None:
                return "whisper"
            reason = (
                "the model server reports no audio understanding"
                if not native_understood
                else f"the request carries {total:.0f} s of audio, more than the "
                f"{self._settings.max_native_audio_seconds:g} s sent to Gemma 3n natively "
                "(MAX_NATIVE_AUDIO_SECONDS)"
            )
            raise UnsupportedContent(
                f"This audio cannot be processed: {reason}, and Whisper (the fallback) is not "
                "installed on this gateway.",
                param=param,
            )
        if mode == "native" and not native_understood:
            raise UnsupportedContent(
                "The model server reports that this model does not understand audio.",
                param=param,
            )
        if mode == "whisper" and self._whisper is None:
            raise UnsupportedContent(
                "AUDIO_MODE is whisper but Whisper is not installed on this gateway.",
                param=param,
            )
        return mode

    def _native_clips(self, sound: DecodedAudio) -> Callable[[], Awaitable[list[dict[str, Any]]]]:
        async def job() -> list[dict[str, Any]]:
            urls = await self._audio.run(_clip_urls, sound)
            return [{"type": "audio_url", "audio_url": {"url": url}} for url in urls]

        return job

    def _transcript(self, sound: DecodedAudio) -> Callable[[], Awaitable[list[dict[str, Any]]]]:
        async def job() -> list[dict[str, Any]]:
            assert self._whisper is not None
            result = await self._whisper.transcribe(sound.samples)
            return [{"type": "text", "text": f"{TRANSCRIPT_LABEL}\n{result.text.strip()}"}]

        return job


def _clip_urls(sound: DecodedAudio) -> list[str]:
    return [clip_to_wav_data_url(clip) for clip in split_into_clips(sound.samples)]


def decode_base64(text: str, *, max_bytes: int, param: str) -> bytes:
    """Base64 with or without padding or line breaks; the size is checked before decoding."""
    compact = "".join(text.split())
    if len(compact) * 3 // 4 > max_bytes:
        raise InvalidRequest(
            f"The media is larger than the {max_bytes}-byte limit.", param=param, code="too_large"
        )
    try:
        return binascii.a2b_base64(compact + "=" * (-len(compact) % 4), strict_mode=False)
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            "The media is not valid base64.", param=param, code="invalid_base64"
        ) from None


def parse_data_url(url: str, *, max_bytes: int, param: str) -> tuple[str, bytes]:
    """`data:[<media type>][;base64],<data>` -> (media type, bytes)."""
    header, comma, payload = url[5:].partition(",")
    if not comma or not header.endswith(";base64"):
        raise InvalidRequest(
            "A data: URL must be base64-encoded: data:<media type>;base64,<data>.",
            param=param,
            code="invalid_url",
        )
    media_type = header.removesuffix(";base64").split(";", 1)[0].strip().lower()
    return media_type, decode_base64(payload, max_bytes=max_bytes, param=param)


def _replace_part(
    messages: list[dict[str, Any]], part: dict[str, Any], new_parts: list[dict[str, Any]]
) -> None:
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            for index, candidate in enumerate(content):
                if candidate is part:
                    content[index : index + 1] = new_parts
                    return


async def _gather(jobs: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run every job concurrently; the results in order, or the first `GatewayError` raised
    (bare, not in an ExceptionGroup), the other jobs cancelled."""
    results: list[Any] = [None] * len(jobs)
    failures: list[GatewayError] = []

    async def run(index: int, job: Callable[[], Awaitable[T]]) -> None:
        try:
            results[index] = await job()
        except GatewayError as exc:
            failures.append(exc)
            tasks.cancel_scope.cancel()

    async with anyio.create_task_group() as tasks:
        for index, job in enumerate(jobs):
            tasks.start_soon(run, index, job)
    if failures:
        raise failures[0]
    return results
