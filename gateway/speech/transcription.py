"""Speech to text for `POST /v1/audio/transcriptions` (and `/v1/audio/translations`).

Owns the service behind those routes, from the form fields to the bytes of the response:
`parse_transcription_form` checks OpenAI's fields (plain strings, no FastAPI) with OpenAI-style
400s; `TranscriptionService.transcribe` applies the upload limit (413), routes by `model`, decodes
(`audio.py`), transcribes, and renders the format asked for (`formats.py`).

`whisper-1` or an official Whisper name (tiny, base.en, large-v3, turbo, ...) runs the one
configured WHISPER_MODEL locally (`whisper_asr.py`), whichever Whisper name was given, as OpenAI's
`whisper-1` names no size. MODEL_NAME runs Gemma 3n: the audio is cut into clips of at most 30 s at
quiet points and each goes, as a 16 kHz WAV `data:` URL, to the injected `GemmaClipTranscriber` (a
chat completion; ../shared/SGLANG.md, "Transcription"). Other models are 404s. ENABLE_AUDIO=false
closes the Gemma route only, since it sends audio to SGLang; Whisper runs locally either way.

Gemma clips run with bounded concurrency (`GEMMA_CLIP_CONCURRENCY`): SGLang batches concurrent
requests, so four clips in flight cost the GPU about what one does and a 10-minute file (20 clips)
returns about four times sooner, yet one long upload cannot flood SGLang's queue ahead of chat
users. Clips are independent (no transcript is carried into the next), stitched in audio order.

A Gemma transcript has one segment per clip that holds speech, timed by the clip's bounds. Gemma
gives none of Whisper's per-segment numbers, so they are neutral: `tokens` [], `avg_logprob`
and `no_speech_prob` 0.0, the request's `temperature`, `seek` the clip's start in Whisper's 10 ms
frames, and `compression_ratio` computed from the text as Whisper does (it flags repetition loops).
`language` is the English name of the client's hint ("english", as OpenAI reports it), else
"unknown": Gemma does not report what it heard.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast, get_args

import anyio

from gateway import errors
from gateway.media.audio import (
    DECLARED_FORMATS,
    SAMPLE_RATE,
    AudioDecoder,
    DecodedAudio,
    clip_to_wav_data_url,
    split_into_clips,
)
from gateway.media.memory import MediaBudget, media_budget
from gateway.settings import Settings
from gateway.speech.formats import ResponseFormat, Task, render
from gateway.speech.languages import language_name
from gateway.speech.whisper_asr import TranscriptResult, TranscriptSegment, WhisperTranscriber

if TYPE_CHECKING:  # audio.py defines it only for type checkers (NumPy loads lazily, issue 7)
    from gateway.media.audio import Samples

log = logging.getLogger(__name__)

GemmaClipTranscriber = Callable[[str, str | None, str, float], Awaitable[str]]
"""(clip as a WAV `data:` URL, language hint or None, instruction, temperature) -> clip's text.

The instruction already carries the language and prompt hints; `language` is there for the
callable's own use (logs, metrics), not to be added to the prompt a second time.
"""

GEMMA_CLIP_CONCURRENCY: Final = 4
"""Clips of one request in flight to SGLang at once (see the module docstring)."""

WHISPER_ALIAS: Final = "whisper-1"
# whisper.available_models(), without importing whisper (and PyTorch) to know them.
_WHISPER_NAME: Final = re.compile(
    r"(?:tiny|base|small|medium)(?:\.en)?|large(?:-v[123])?|large-v3-turbo|turbo"
)
_FORMATS: Final[tuple[str, ...]] = get_args(ResponseFormat)
_GRANULARITY_KEYS: Final = ("timestamp_granularities[]", "timestamp_granularities")
_LANGUAGE: Final = re.compile(r"[A-Za-z][A-Za-z _()-]{0,31}")  # "en", "zh-TW", "haitian creole"
_PROMPT_HINT_CHARS: Final = 1000  # Whisper too keeps only the prompt's end (its last 223 tokens)
_HOP: Final = 160  # samples per Whisper mel frame (10 ms), the unit of `seek`

_INSTRUCTIONS: Final[dict[Task, str]] = {
    "transcribe": "Transcribe this audio verbatim. Output only the transcript.",
    "translate": "Translate the speech in this audio into English. Output only the translation.",
}


@dataclass(frozen=True)
class TranscriptionRequest:
    """The checked form fields of one transcription or translation request."""

    model: str
    language: str | None
    prompt: str | None
    response_format: ResponseFormat
    temperature: float
    timestamp_granularities: tuple[str, ...]
    task: Task


def is_whisper_model(model: str) -> bool:
    """Whether `model` names Whisper: `whisper-1` or an official Whisper model name."""
    return model == WHISPER_ALIAS or _WHISPER_NAME.fullmatch(model) is not None


# --- the form ----------------------------------------------------------------------------------


def _invalid(message: str, param: str, code: str | None = None) -> errors.InvalidRequest:
    return errors.InvalidRequest(message, param=param, code=code)


def _single(fields: Mapping[str, str | list[str]], name: str) -> str | None:
    value = fields.get(name)
    if isinstance(value, list):
        if len(value) > 1:
            raise _invalid(f"`{name}` was given {len(value)} times; give it once.", name)
        value = value[0] if value else None
    return value


def parse_transcription_form(
    fields: Mapping[str, str | list[str]], *, task: Task = "transcribe"
) -> TranscriptionRequest:
    """Check OpenAI's transcription/translation form fields (every one but the uploaded file).

    `fields` maps each text field's name to its value, or to the list of its values when it was
    sent more than once (e.g. ``[(k, v) for k, v in form.multi_items() if isinstance(v, str)]``
    grouped by key). `timestamp_granularities[]` (the name the `openai` SDK sends; a bare
    `timestamp_granularities` is read too) is a list with one granularity per value, or a
    single string: "segment" is supported, "word" is a 400. A `file` that arrived as a text field
    (a part without a filename) is a 400. Unknown fields are ignored, as OpenAI does; `stream`
    true is a 400. `language` is also accepted for translations, as a hint of the spoken language.
    """
    if isinstance(fields.get("file"), str | list):
        raise _invalid(
            "`file` must be uploaded as a file (a multipart part with a filename).", "file"
        )

    model = (_single(fields, "model") or "").strip()
    if not model:
        raise _invalid("You must provide a model parameter.", "model")

    response_format = (_single(fields, "response_format") or "json").strip() or "json"
    if response_format not in _FORMATS:
        raise _invalid(
            f"{response_format!r} is not a supported response_format; use one of "
            f"{', '.join(_FORMATS)}.",
            "response_format",
        )

    temperature = _temperature(_single(fields, "temperature"))

    language = (_single(fields, "language") or "").strip() or None
    if language is not None and not _LANGUAGE.fullmatch(language):
        raise _invalid(
            f"{language!r} is not a language: give an ISO-639-1 code such as 'en'.", "language"
        )

    prompt = (_single(fields, "prompt") or "").strip() or None

    stream = (_single(fields, "stream") or "false").strip().lower()
    if stream not in ("false", "0", ""):
        raise _invalid("Streaming transcriptions are not supported; omit `stream`.", "stream")

    return TranscriptionRequest(
        model=model,
        language=language,
        prompt=prompt,
        response_format=cast(ResponseFormat, response_format),  # checked against _FORMATS
        temperature=temperature,
        timestamp_granularities=_granularities(fields),
        task=task,
    )


def _temperature(raw: str | None) -> float:
    if raw is None or not raw.strip():
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise _invalid(f"temperature must be a number, not {raw!r}.", "temperature") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise _invalid("temperature must be between 0 and 1.", "temperature")
    return value


def _granularities(fields: Mapping[str, str | list[str]]) -> tuple[str, ...]:
    param = _GRANULARITY_KEYS[0]
    values: list[str] = []
    for key in _GRANULARITY_KEYS:
        raw = fields.get(key)
        values += [raw] if isinstance(raw, str) else (raw or [])
    granularities: list[str] = []
    for value in (v.strip() for v in values):
        if value == "word":
            raise _invalid(
                "Word-level timestamps are not supported by this server; use "
                "timestamp_granularities[]=segment.",
                param,
                "unsupported_value",
            )
        if value != "segment":
            raise _invalid(f"{value!r} is not a timestamp granularity; use 'segment'.", param)
        if value not in granularities:
            granularities.append(value)
    # OpenAI's default; segment timestamps are what srt, vtt and verbose_json carry anyway.
    return tuple(granularities) or ("segment",)


# --- the service -------------------------------------------------------------------------------


class TranscriptionService:
    """Transcribes uploaded audio with Whisper or Gemma 3n and renders OpenAI's response."""

    def __init__(
        self,
        settings: Settings,
        decoder: AudioDecoder,
        whisper: WhisperTranscriber | None,
        gemma: GemmaClipTranscriber,
        *,
        clip_concurrency: int = GEMMA_CLIP_CONCURRENCY,
        budget: MediaBudget | None = None,
    ) -> None:
        if clip_concurrency < 1:
            raise ValueError("clip_concurrency must be at least 1")
        self._settings = settings
        self._budget = budget or media_budget(settings)
        self._decoder = decoder
        self._whisper = whisper
        self._gemma = gemma
        self._clip_concurrency = clip_concurrency

    async def transcribe(
        self, audio: bytes, filename: str | None, request: TranscriptionRequest
    ) -> tuple[bytes, str]:
        """The response body and its media type for `audio` (the uploaded file's bytes).

        Raises `errors.PayloadTooLarge` over MAX_AUDIO_BYTES, `errors.ModelNotFound` for a model
        that is neither Whisper nor the served one, `errors.InvalidRequest` for an empty or
        undecodable file or Whisper missing, and whatever Whisper or `gemma` raise.
        """
        limit = self._settings.max_audio_bytes
        if len(audio) > limit:
            raise errors.PayloadTooLarge(
                f"The file is {len(audio)} bytes; the limit is {limit} bytes.", param="file"
            )
        if not audio:
            raise _invalid("The uploaded file is empty (0 bytes).", "file", "invalid_audio")
        use_whisper = self._route(request.model)
        with self._budget.lease() as lease:  # the samples are held until the transcript is done
            decoded = await self._decoder.decode(
                audio, declared_format=_declared_format(filename), param="file", lease=lease
            )
            return await self._transcribe(decoded, use_whisper, request)

    async def _transcribe(
        self, decoded: DecodedAudio, use_whisper: bool, request: TranscriptionRequest
    ) -> tuple[bytes, str]:
        log.debug("transcribing %.1f s with %s", decoded.duration, request.model)
        if use_whisper:
            assert self._whisper is not None  # checked by _route
            result = await self._whisper.transcribe(
                decoded.samples,
                language=request.language,
                prompt=request.prompt,
                temperature=request.temperature,
                task=request.task,
            )
        else:
            result = await self._with_gemma(decoded, request)
        return render(result, request.response_format, request.task)

    def _route(self, model: str) -> bool:
        """True for Whisper, False for Gemma; raises when the model cannot be served here."""
        if model == self._settings.model_name:
            if not self._settings.enable_audio:
                raise _invalid(
                    f"Audio input is disabled on this server, so `{model}` cannot transcribe.",
                    "model",
                    "audio_disabled",
                )
            return False
        if is_whisper_model(model):
            if self._whisper is None or not self._whisper.is_installed():
                why = "not enabled" if self._whisper is None else "not installed"
                raise _invalid(
                    f"Whisper transcription is {why} on this server; use the model "
                    f"`{self._settings.model_name}`.",
                    "model",
                    "whisper_not_available",
                )
            return True
        raise errors.ModelNotFound(model)

    async def _with_gemma(
        self, decoded: DecodedAudio, request: TranscriptionRequest
    ) -> TranscriptResult:
        clips = await self._decoder.run(split_into_clips, decoded.samples)
        texts = await self._clip_texts(
            clips, request, gemma_instruction(request.task, request.language, request.prompt)
        )
        segments: list[TranscriptSegment] = []
        start = 0
        for clip, text in zip(clips, texts, strict=True):
            end = start + len(clip)
            if text:
                segments.append(
                    TranscriptSegment(
                        id=len(segments),
                        start=start / SAMPLE_RATE,
                        end=end / SAMPLE_RATE,
                        text=text,
                        seek=start // _HOP,
                        temperature=request.temperature,
                        compression_ratio=_compression_ratio(text),
                    )
                )
            start = end
        return TranscriptResult(
            text=" ".join(s.text for s in segments),
            language=language_name(request.language) if request.language else "unknown",
            duration=decoded.duration,
            segments=tuple(segments),
        )

    async def _clip_texts(
        self, clips: Sequence[Samples], request: TranscriptionRequest, instruction: str
    ) -> list[str]:
        """Each clip's transcript (whitespace-normalised), in order; the first failure wins."""
        texts = [""] * len(clips)
        failures: list[Exception] = []
        limiter = anyio.CapacityLimiter(self._clip_concurrency)

        async def one(index: int, scope: anyio.CancelScope) -> None:
            async with limiter:
                try:
                    # Encoded here, not up front: only the clips in flight are held as WAV.
                    url = await self._decoder.run(clip_to_wav_data_url, clips[index])
                    text = await self._gemma(
                        url, request.language, instruction, request.temperature
                    )
                except Exception as exc:
                    # Recorded, not raised: a task group would wrap it in an ExceptionGroup,
                    # and the error handler must see the GatewayError itself.
                    failures.append(exc)
                    scope.cancel()
                    return
                texts[index] = " ".join(text.split())

        async with anyio.create_task_group() as group:
            for index in range(len(clips)):
                group.start_soon(one, index, group.cancel_scope)
        if failures:
            raise failures[0]
        return texts


def gemma_instruction(task: Task, language: str | None, prompt: str | None) -> str:
    """The instruction sent with every clip: the task, then the client's hints."""
    parts = [_INSTRUCTIONS[task], "If there is no speech, output nothing."]
    if language:
        parts.append(f"The speech is in this language: {language_name(language)}.")
    if prompt:
        parts.append(
            "Context for spelling and style (it is not part of the audio; do not repeat it): "
            + prompt[-_PROMPT_HINT_CHARS:]
        )
    return " ".join(parts)


def _declared_format(filename: str | None) -> str | None:
    """The upload's extension when it names a format we know; the bytes decide either way.

    Other names ("blob" from a browser's FormData, "recording.bin") declare nothing rather than
    fail as an unsupported format.
    """
    if not filename or "." not in filename:
        return None
    extension = filename.rsplit(".", 1)[1].strip().lower()
    return extension if extension in DECLARED_FORMATS else None


def _compression_ratio(text: str) -> float:
    # Whisper's own measure (whisper.utils.compression_ratio): repetitive text compresses well.
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))
