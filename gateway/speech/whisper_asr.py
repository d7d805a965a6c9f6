"""Local speech to text with openai-whisper, the optional fallback when Gemma 3n cannot listen.

Owns the Whisper model's life: it is found (a checkpoint path, or an official name in the
download folder; nothing is downloaded at request time), loaded lazily on first use, run in worker
threads with bounded concurrency, and fed the 16 kHz float32 samples `audio.py` decoded, so
Whisper never calls the `ffmpeg` program. openai-whisper (and PyTorch) are an optional install
(requirements-whisper.txt); this module imports them only inside the worker threads.

What the transcript becomes (a chat text part, an OpenAI transcription response) is the callers'.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
import anyio.to_thread

from gateway import errors
from gateway.settings import Settings

if TYPE_CHECKING:  # NumPy is imported where audio is handled, not here (idle memory, issue 7)
    import numpy as np
    import numpy.typing as npt

log = logging.getLogger(__name__)

SAMPLE_RATE: Final = 16_000  # whisper.audio.SAMPLE_RATE, without importing torch to know it
Task = Literal["transcribe", "translate"]

# temperature=0 in OpenAI's API means: start greedy and let the model raise the temperature when
# the output looks like a loop or nonsense. That is Whisper's own fallback schedule.
_FALLBACK_TEMPERATURES: Final = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class TranscriptSegment:
    """One segment, with the fields of OpenAI's `verbose_json` segments."""

    id: int
    start: float
    end: float
    text: str
    seek: int = 0
    tokens: tuple[int, ...] = ()
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0


@dataclass(frozen=True)
class TranscriptResult:
    """A transcription: `language` is the English name OpenAI reports ("english")."""

    text: str
    language: str
    duration: float
    segments: tuple[TranscriptSegment, ...]


def _default_download_root() -> str:
    # The same folder whisper.load_model uses when given none.
    cache = os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return os.path.join(cache, "whisper")


class WhisperTranscriber:
    """Transcribes decoded audio with a local Whisper model, at most `whisper_concurrency` at once.

    Each concurrent slot holds its own model: Whisper's decoder keeps its key/value cache in
    forward hooks installed on the model's modules, so two decodes on one model would mix caches.
    With the default concurrency of 1 the model is loaded exactly once.
    """

    def __init__(self, settings: Settings) -> None:
        self._name = settings.whisper_model
        self._device = settings.whisper_device
        self._download_root = settings.whisper_download_root or _default_download_root()
        self._limiter = anyio.CapacityLimiter(settings.whisper_concurrency)
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._loaded = 0

    @staticmethod
    def is_installed() -> bool:
        """Whether openai-whisper is importable (checked without importing PyTorch)."""
        try:
            importlib.metadata.distribution("openai-whisper")
        except importlib.metadata.PackageNotFoundError:
            return False
        return importlib.util.find_spec("whisper") is not None

    @property
    def loaded_models(self) -> int:
        """How many copies of the model are in memory (0 until the first transcription)."""
        return self._loaded

    async def preload(self) -> None:
        """Load one model now (e.g. at start-up) instead of on the first request."""

        def load() -> None:
            self._release(self._checkout())

        await anyio.to_thread.run_sync(load, limiter=self._limiter)

    async def transcribe(
        self,
        samples: npt.NDArray[np.float32],
        *,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
        task: Task = "transcribe",
    ) -> TranscriptResult:
        """Speech in `samples` (16 kHz mono float32) as text with segment timestamps.

        `language` is an ISO 639-1 code or an English name (None: detected); `prompt` guides
        spelling and style; `temperature` 0 means greedy with Whisper's fallback schedule;
        `task` "translate" gives English. Bad arguments raise `errors.InvalidRequest`; a model
        that cannot be found or loaded raises `errors.GatewayError` (code whisper_unavailable).
        """
        import numpy as np

        if task not in ("transcribe", "translate"):
            raise errors.InvalidRequest(f"Unknown task {task!r}.", param="task")
        if not 0.0 <= temperature <= 1.0:
            raise errors.InvalidRequest("temperature must be between 0 and 1.", param="temperature")
        audio = np.ascontiguousarray(samples, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError("samples must be mono: a 1-D array")
        if not audio.flags.writeable:
            # torch.from_numpy warns on read-only arrays (audio.DecodedAudio's are read-only).
            audio = audio.copy()
        work = functools.partial(
            self._transcribe_sync, audio, language, prompt or None, temperature, task
        )
        # Not abandoned on cancellation: the limiter stays held until the thread really ends,
        # so no more than `whisper_concurrency` transcriptions ever use the CPU at once.
        return await anyio.to_thread.run_sync(work, limiter=self._limiter)

    # --- worker-thread side ------------------------------------------------------------------

    def _transcribe_sync(
        self,
        audio: npt.NDArray[np.float32],
        language: str | None,
        prompt: str | None,
        temperature: float,
        task: Task,
    ) -> TranscriptResult:
        import whisper  # optional and heavy (PyTorch): imported in the worker thread
        from whisper.tokenizer import LANGUAGES

        code = _language_code(language)
        model = self._checkout()
        try:
            if not model.is_multilingual:
                # An English-only model (*.en) can neither transcribe other languages nor
                # translate; it would silently use English anyway.
                code, task = "en", "transcribe"
            result = whisper.transcribe(
                model,
                audio,
                language=code,
                task=task,
                initial_prompt=prompt,
                temperature=_FALLBACK_TEMPERATURES if temperature == 0.0 else (temperature,),
                fp16=self._device != "cpu",  # fp16 on CPU only warns and falls back
                verbose=None,  # neither a progress bar nor printed text
            )
        finally:
            self._release(model)
        duration = len(audio) / SAMPLE_RATE
        return TranscriptResult(
            text=str(result["text"]).strip(),
            language=LANGUAGES.get(str(result["language"]), str(result["language"])),
            duration=duration,
            segments=tuple(_segment(raw, duration) for raw in result["segments"]),
        )

    def _checkout(self) -> Any:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            # The limiter caps the threads in here, so this never loads more than the
            # concurrency allows. Loading under the lock keeps a second slot from reading the
            # checkpoint while the first is still failing on it.
            model = self._load()
            self._loaded += 1
            return model

    def _release(self, model: Any) -> None:
        with self._lock:
            self._idle.append(model)

    def _load(self) -> Any:
        import whisper

        name = self._name
        path = os.path.expanduser(name)
        if os.path.isfile(path):
            source = path
        elif name in whisper.available_models():
            # whisper.load_model downloads a missing checkpoint; a gateway answering a request
            # must not (no network in many deployments, minutes of delay in the rest).
            # _MODELS is the table load_model itself reads the file name from.
            expected = os.path.join(self._download_root, os.path.basename(whisper._MODELS[name]))
            if not os.path.isfile(expected):
                log.error(
                    "Whisper model %r is not downloaded: no %s (fetch it ahead of time)",
                    name,
                    expected,
                )
                raise _unavailable(f"The Whisper model {name!r} is not downloaded on this server.")
            source = name
        else:
            log.error("WHISPER_MODEL %r is neither a Whisper model name nor a file", name)
            raise _unavailable(f"The Whisper model {name!r} is not available on this server.")
        log.info("loading Whisper model %r on %s", name, self._device)
        try:
            return whisper.load_model(
                source, device=self._device, download_root=self._download_root
            )
        except Exception as exc:  # a corrupt file, a wrong device: both are the operator's
            log.exception("loading Whisper model %r failed", name)
            raise _unavailable(f"The Whisper model {name!r} could not be loaded.") from exc


def _unavailable(message: str) -> errors.GatewayError:
    return errors.GatewayError(message, code="whisper_unavailable")


def _language_code(language: str | None) -> str | None:
    """ISO 639-1 code of `language` (a code or an English name), for Whisper; None stays None."""
    from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

    if language is None or not language.strip():
        return None
    key = language.strip().lower()
    if key in LANGUAGES:
        return key
    if key in TO_LANGUAGE_CODE:
        return str(TO_LANGUAGE_CODE[key])
    raise errors.InvalidRequest(
        f"Unknown language {language!r}: give an ISO 639-1 code such as 'en'.", param="language"
    )


def _segment(raw: dict[str, Any], duration: float) -> TranscriptSegment:
    # Whisper's timestamps come from tokens and can overshoot the audio's end by a little
    # (or a lot, with a poor model); subtitles must stay within the audio.
    start = min(max(float(raw["start"]), 0.0), duration)
    end = min(max(float(raw["end"]), start), duration)
    return TranscriptSegment(
        id=int(raw["id"]),
        start=start,
        end=end,
        text=str(raw["text"]).strip(),
        seek=int(raw.get("seek", 0)),
        tokens=tuple(int(t) for t in raw.get("tokens", ())),
        temperature=float(raw.get("temperature", 0.0)),
        avg_logprob=float(raw.get("avg_logprob", 0.0)),
        compression_ratio=float(raw.get("compression_ratio", 0.0)),
        no_speech_prob=float(raw.get("no_speech_prob", 0.0)),
    )
