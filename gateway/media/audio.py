"""Audio in: decode any accepted format to 16 kHz mono float32, split it into clips, encode clips.

Owns everything between a client's audio bytes and what Gemma 3n or Whisper can take:

* `decode_audio_sync` / `AudioDecoder.decode`: sniff the container from the bytes (a declared
  format is checked for being one we accept, never trusted), decode with PyAV (FFmpeg's libraries,
  no `ffmpeg` program), down-mix to mono, resample to 16 kHz with soxr, and enforce the limits
  (bytes per part, seconds of audio, zero length, truncation). Every failure is an
  `errors.InvalidRequest` (400) whose `param` names the part.
* `split_into_clips`: cut long audio into clips of at most 30 s at the quietest point near each
  boundary, because Gemma 3n hears at most 30 s per clip (../shared/SGLANG.md).
* `clip_to_wav_bytes` / `clip_to_wav_data_url`: a clip as 16-bit PCM WAV, the one audio form both
  old and new SGLang builds load from a `data:` URL.

Routing (native vs Whisper), fetching URLs and the request shape belong to the callers.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import math
import wave
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
import anyio.to_thread

from gateway import errors
from gateway.media.memory import MediaLease
from gateway.settings import Settings

# PyAV, NumPy and soxr are imported where audio is decoded, not here (idle memory, issue 7).
if TYPE_CHECKING:
    import av
    import numpy as np
    import numpy.typing as npt
    import soxr

    Samples = npt.NDArray[np.float32]

log = logging.getLogger(__name__)

SAMPLE_RATE: Final = 16_000
# Rates outside these are no real recording: a WAV declaring 1 Hz makes 10 minutes of 16 kHz
# samples out of a kilobyte.
MIN_SAMPLE_RATE: Final = 4_000
MAX_SAMPLE_RATE: Final = 768_000
# What a second of decoded audio holds at its peak: float32 samples, twice (the resampled pieces
# and their concatenation).
DECODED_BYTES_PER_SECOND: Final = SAMPLE_RATE * 4 * 2
_ACCOUNT_STEP_SECONDS: Final = 30.0  # audio is accounted for in steps of this much
"""Gemma 3n's and Whisper's input rate (Hz)."""

MAX_CLIP_SECONDS: Final = 30.0
"""The longest clip Gemma 3n's audio encoder takes; SGLang does not truncate longer ones."""

T = TypeVar("T")

# Names a client may declare (OpenAI's `input_audio.format`, a file extension, a MIME subtype),
# mapped to the family they claim. The family only goes into logs: the bytes decide.
DECLARED_FORMATS: Final[dict[str, str]] = {
    "wav": "wav", "wave": "wav", "x-wav": "wav", "vnd.wave": "wav",
    "mp3": "mp3", "mpeg": "mp3", "mpga": "mp3",
    "flac": "flac", "x-flac": "flac",
    "ogg": "ogg", "oga": "ogg", "opus": "ogg", "vorbis": "ogg",
    "webm": "webm", "mkv": "webm", "matroska": "webm", "x-matroska": "webm",
    "m4a": "m4a", "mp4": "m4a", "x-m4a": "m4a", "aac": "aac",
    "aiff": "aiff", "aif": "aiff", "aifc": "aiff", "x-aiff": "aiff",
}  # fmt: skip

# FFmpeg demuxers we let run. Passing one explicitly (and whitelisting only these) means FFmpeg
# never probes the bytes itself, so a crafted part cannot reach demuxers that open other files or
# URLs (hls, concat, ...) or rarely audited parsers.
_DEMUXERS: Final = ("wav", "aiff", "flac", "mp3", "aac", "ogg", "matroska", "mov")
_FORMAT_WHITELIST: Final = ",".join(_DEMUXERS)

# Demuxers whose header states the length exactly (sample counts, chunk sizes, sample tables,
# a segment duration), so decoding well short of it means the bytes were cut off. MP3 and ADTS
# are bare frame streams whose length FFmpeg guesses from the bit rate, and Ogg's comes from its
# last page, so a cut-off file of those is just shorter audio.
_LENGTH_IN_HEADER: Final = frozenset({"wav", "aiff", "flac", "mov", "matroska"})
_TRUNCATION_TOLERANCE_S: Final = 0.1  # above codec priming/padding (AAC: 2112 samples = 48 ms)

_MP4_BOXES: Final = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")


@dataclass(frozen=True, eq=False)
class DecodedAudio:
    """One audio part, decoded: `samples` is float32, mono, 16 kHz and read-only."""

    samples: Samples
    duration: float
    """Seconds: len(samples) / 16000."""
    container: str
    """The FFmpeg demuxer the bytes were read with (wav, mp3, ogg, matroska, mov, ...)."""


# --- sniffing ----------------------------------------------------------------------------------


def _skip_id3v2(data: bytes) -> int:
    """Offset of the first byte after any ID3v2 tags (MP3, ADTS and FLAC files may start so)."""
    pos = 0
    for _ in range(4):  # files carry one, rarely two; a crafted run of them is not walked
        if data[pos : pos + 3] != b"ID3" or len(data) < pos + 10:
            break
        size = 0
        for byte in data[pos + 6 : pos + 10]:  # "syncsafe": 7 bits per byte
            size = (size << 7) | (byte & 0x7F)
        footer = 10 if data[pos + 5] & 0x10 else 0
        pos += 10 + size + footer
    return pos


def sniff_container(data: bytes) -> str | None:
    """The demuxer for `data` judged from its magic bytes, or None when it is none we accept."""
    head = data[:12]
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska and WebM
        return "matroska"
    if head[4:8] in _MP4_BOXES:
        return "mov"
    start = _skip_id3v2(data)
    tagged = start > 0
    body = data[start : start + 4]
    if body[:4] == b"fLaC":
        return "flac"
    if len(body) >= 2 and body[0] == 0xFF:
        if body[1] & 0xF6 == 0xF0:  # 12 sync bits and layer 00: ADTS (raw AAC)
            return "aac"
        # 11 sync bits; version, layer, bit rate and sample rate none of them "reserved"
        if (
            len(body) >= 3
            and body[1] & 0xE0 == 0xE0
            and body[1] & 0x18 != 0x08
            and body[1] & 0x06 != 0
            and body[2] >> 4 != 0xF
            and body[2] & 0x0C != 0x0C
        ):
            return "mp3"
    # An ID3v2 tag is MP3's own header: let the MP3 demuxer resync past padding after it.
    return "mp3" if tagged else None


# --- decoding ----------------------------------------------------------------------------------


@functools.cache
def _sample_dtypes() -> dict[str, np.dtype[Any]]:
    """FFmpeg sample formats (planar ones end in "p") as NumPy dtypes."""
    import numpy as np

    return {
        "u8": np.dtype(np.uint8),
        "s16": np.dtype(np.int16),
        "s32": np.dtype(np.int32),
        "s64": np.dtype(np.int64),
        "flt": np.dtype(np.float32),
        "dbl": np.dtype(np.float64),
    }


@functools.cache
def _full_scale() -> dict[np.dtype[Any], float]:
    """Integer PCM decodes to these dtypes; dividing by full scale gives [-1, 1)."""
    import numpy as np

    return {
        np.dtype(np.int16): 2.0**15,
        np.dtype(np.int32): 2.0**31,
        np.dtype(np.int64): 2.0**63,
    }


def _to_float(array: npt.NDArray[np.generic]) -> Samples:
    """PCM of any FFmpeg sample type as float32 in [-1, 1]."""
    import numpy as np

    full_scale = _full_scale()
    if array.dtype == np.uint8:
        return (array.astype(np.float32) - np.float32(128.0)) / np.float32(128.0)
    if array.dtype in full_scale:
        return array.astype(np.float32) / np.float32(full_scale[array.dtype])
    return array.astype(np.float32, copy=False)


class _To16kMono:
    """Turns decoded frames into 16 kHz mono float32, in batches of about a second.

    Frames are viewed in place (no `to_ndarray` copy) and converted, down-mixed and resampled a
    batch at a time, because per-frame NumPy and soxr calls cost more than the work itself (MP3
    frames hold 1152 samples). Rate, sample format or channel count may change mid-stream
    (chained Ogg, concatenated MP3s): the batch is closed and, for a new rate, so is the resampler.
    """

    _BATCH_SECONDS: Final = 1.0

    def __init__(self) -> None:
        self.out: list[Samples] = []
        self._key: tuple[int, str, int] | None = None  # (rate, sample format, channels)
        self._stream: soxr.ResampleStream | None = None
        self._pending: list[tuple[npt.NDArray[np.generic], ...]] = []
        self._pending_len = 0

    def add(self, frame: av.AudioFrame) -> None:
        import numpy as np
        import soxr

        rate, channels, count = frame.sample_rate, frame.layout.nb_channels, frame.samples
        key = (rate, frame.format.name, channels)
        if key != self._key:
            new_rate = self._key is None or self._key[0] != rate
            self._flush(last=new_rate)
            if new_rate:
                # soxr "HQ": a proper band-limited resampler (20-bit precision), not linear.
                self._stream = (
                    None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1)
                )
            self._key = key
        dtype = _sample_dtypes()[frame.format.name.removesuffix("p")]
        # Plane buffers may be padded past the samples, hence the explicit counts.
        if frame.format.is_planar:
            planes = tuple(
                np.frombuffer(memoryview(p), dtype, count) for p in frame.planes[:channels]
            )
        else:
            planes = (np.frombuffer(memoryview(frame.planes[0]), dtype, count * channels),)
        self._pending.append(planes)
        self._pending_len += count
        if self._pending_len >= rate * self._BATCH_SECONDS:
            self._flush(last=False)

    def finish(self) -> None:
        self._flush(last=True)

    def _flush(self, *, last: bool) -> None:
        import numpy as np

        if self._key is None:
            return
        _, sample_format, channels = self._key
        if not self._pending:
            mono = np.zeros(0, np.float32)
        elif sample_format.endswith("p"):
            per_channel = [np.concatenate(c) for c in zip(*self._pending, strict=True)]
            # A plain mean keeps the level of correlated channels (swresample's default
            # down-mix matrix, 0.707 per channel, would push them past full scale).
            mono = _to_float(per_channel[0])
            for other in per_channel[1:]:
                mono = mono + _to_float(other)
            if channels > 1:
                mono *= np.float32(1.0 / channels)
        else:
            interleaved = _to_float(np.concatenate([p[0] for p in self._pending]))
            mono = interleaved.reshape(-1, channels).mean(axis=1, dtype=np.float32)
        self._pending, self._pending_len = [], 0
        if self._stream is None:
            self.out.append(np.ascontiguousarray(mono))
        else:
            self.out.append(self._stream.resample_chunk(np.ascontiguousarray(mono), last=last))


def _invalid(message: str, param: str, code: str = "invalid_audio") -> errors.InvalidRequest:
    return errors.InvalidRequest(message, param=param, code=code)


def _ffmpeg_reason(exc: av.FFmpegError) -> str:
    # FFmpeg's own words ("Invalid data found when processing input"), without PyAV's file name.
    return str(exc.strerror or type(exc).__name__)


def decode_audio_sync(
    data: bytes,
    *,
    declared_format: str | None,
    param: str,
    settings: Settings,
    max_seconds: float | None = None,
    lease: MediaLease | None = None,
) -> DecodedAudio:
    """Decode one audio part to 16 kHz mono float32; blocking, so call it off the event loop.

    `max_seconds` is what the request may still carry (default: settings.max_audio_seconds);
    decoding stops as soon as the audio passes it. The samples are accounted against `lease`
    before they are decoded (`gateway.media.memory`), which may raise 413 or 429. Raises
    `errors.InvalidRequest` with `param`.
    """
    limit = settings.max_audio_seconds if max_seconds is None else max_seconds
    declared: str | None = None
    if declared_format is not None:
        declared = declared_format.strip().lower().removeprefix("audio/")
        if declared not in DECLARED_FORMATS:
            accepted = "wav, mp3, flac, ogg, opus, webm, m4a, aac, aiff"
            raise _invalid(
                f"Unsupported audio format {declared_format!r}; accepted formats: {accepted}.",
                param,
                "unsupported_audio_format",
            )
    if not data:
        raise _invalid("The audio is empty (0 bytes).", param)
    if len(data) > settings.max_audio_bytes:
        raise _invalid(
            f"The audio is {len(data)} bytes; the limit is {settings.max_audio_bytes} bytes "
            "per audio part.",
            param,
            "audio_too_large",
        )
    container_name = sniff_container(data)
    if container_name == "wav" and (missing := _wav_bytes_missing(data)):
        # FFmpeg clamps a WAV's stated length to the bytes it has, so check the header here.
        raise _invalid(
            f"The WAV header promises {missing} more bytes of samples than the file holds: "
            "it is truncated.",
            param,
        )
    if container_name is None:
        raise _invalid(
            "The audio is in no supported format (wav, mp3, flac, ogg/opus, webm, m4a/aac, aiff): "
            "its bytes match none of them.",
            param,
        )
    if declared is not None and DECLARED_FORMATS[declared] not in _families(container_name):
        log.debug("audio declared as %s holds %s; decoding what it holds", declared, container_name)

    import av

    try:
        return _decode(
            data, container_name, param=param, limit=limit, settings=settings, lease=lease
        )
    except av.FFmpegError as exc:
        raise _invalid(
            f"The audio could not be decoded as {container_name}: {_ffmpeg_reason(exc)}.", param
        ) from exc


def _wav_bytes_missing(data: bytes) -> int:
    """How many bytes of samples the `data` chunk of a RIFF WAV states beyond the file's end."""
    pos = 12
    for _ in range(64):  # a WAV has a handful of chunks; don't walk a crafted maze for long
        if pos + 8 > len(data):
            return 0
        chunk_id, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if chunk_id == b"data":
            # 0, 0xFFFFFFFF (RF64) and near-2**31 placeholders mean "length unknown": streamed
            # recordings write them, and FFmpeg then reads to the end.
            if size == 0 or size >= 0x7FFF0000:
                return 0
            return max(0, size - (len(data) - pos - 8))
        pos += 8 + size + (size & 1)  # chunks are padded to even sizes
    return 0


def _families(container_name: str) -> tuple[str, ...]:
    return {
        "matroska": ("webm",),
        "mov": ("m4a", "aac"),
        "aac": ("aac", "m4a"),
    }.get(container_name, (container_name,))


def _decode(
    data: bytes,
    container_name: str,
    *,
    param: str,
    limit: float,
    settings: Settings,
    lease: MediaLease | None,
) -> DecodedAudio:
    import av
    import numpy as np

    with av.open(
        io.BytesIO(data),
        "r",
        format=container_name,
        container_options={"format_whitelist": _FORMAT_WHITELIST},
    ) as container:
        if not container.streams.audio:
            raise _invalid("The file holds no audio track.", param)
        stream = container.streams.audio[0]
        rate = stream.sample_rate or 0
        if rate and not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise _invalid(
                f"The audio declares a sample rate of {rate} Hz; accepted rates are "
                f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz.",
                param,
                "unsupported_sample_rate",
            )
        declared = _stated_seconds(container, stream, container_name)
        if declared is not None and declared > limit + _TRUNCATION_TOLERANCE_S:
            raise _invalid(_too_long_message(limit, settings), param, "audio_too_long")
        accounted = _Accounted(lease, param)
        if declared is not None:
            accounted.cover(declared)
        resampler = _To16kMono()
        seconds = 0.0
        packets = bad_packets = 0
        last_error: av.FFmpegError | None = None
        for packet in container.demux(stream):
            packets += 1
            try:
                frames = packet.decode()
            except av.InvalidDataError as exc:
                # Real files carry the odd damaged frame (a glued-on second MP3, a radio rip);
                # like the ffmpeg program, skip it. Mostly damage is answered below.
                bad_packets += 1
                last_error = exc
                continue
            for frame in frames:
                if frame.sample_rate <= 0 or frame.samples <= 0:
                    continue
                seconds += frame.samples / frame.sample_rate
                if seconds > limit:
                    # Stop now: a tiny file may hold hours of audio, and decoding it all is the
                    # denial of service the limit exists for.
                    raise _invalid(_too_long_message(limit, settings), param, "audio_too_long")
                accounted.cover(seconds)  # a header that understated the length gets no further
                resampler.add(frame)
        resampler.finish()
        stated = _stated_seconds(container, stream, container_name)

    if last_error is not None and (bad_packets > max(2, packets // 100) or seconds == 0.0):
        raise _invalid(
            f"The audio could not be decoded as {container_name}: {bad_packets} of its "
            f"{packets} packets are damaged ({_ffmpeg_reason(last_error)}).",
            param,
        )
    samples = np.concatenate(resampler.out) if resampler.out else np.zeros(0, np.float32)
    if samples.size == 0:
        raise _invalid("The audio holds no samples (zero length).", param)
    if stated is not None and seconds < stated - max(_TRUNCATION_TOLERANCE_S, 0.01 * stated):
        raise _invalid(
            f"The audio ends after {seconds:.2f} s but its header says {stated:.2f} s: "
            "the file is truncated or corrupt.",
            param,
        )
    if not np.isfinite(samples).all():  # float PCM may carry NaN/inf; they'd poison WAV/Whisper
        samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    samples.flags.writeable = False
    return DecodedAudio(samples, samples.size / SAMPLE_RATE, container_name)


class _Accounted:
    """The seconds of decoded audio taken from a request's lease so far, taken in steps."""

    __slots__ = ("_lease", "_param", "_seconds")

    def __init__(self, lease: MediaLease | None, param: str) -> None:
        self._lease = lease
        self._param = param
        self._seconds = 0.0

    def cover(self, seconds: float) -> None:
        if self._lease is None or seconds <= self._seconds:
            return
        wanted = max(seconds, self._seconds + _ACCOUNT_STEP_SECONDS)
        self._lease.take(
            math.ceil((wanted - self._seconds) * DECODED_BYTES_PER_SECOND), param=self._param
        )
        self._seconds = wanted


def _too_long_message(limit: float, settings: Settings) -> str:
    message = f"The audio is longer than the {limit:g} s allowed"
    if limit < settings.max_audio_seconds:
        message += f" (the audio of one request may total {settings.max_audio_seconds:g} s)"
    return message + "."


def _stated_seconds(
    container: av.container.InputContainer, stream: av.AudioStream, container_name: str
) -> float | None:
    """The length the header states, for formats where it is exact; else None."""
    import av

    if container_name not in _LENGTH_IN_HEADER:
        return None
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    # Matroska states the duration of the segment only (browsers' MediaRecorder: none at all).
    if container_name == "matroska" and container.duration is not None:
        return container.duration / av.time_base
    return None


class AudioDecoder:
    """Decodes audio parts in worker threads, at most `settings.audio_workers` at once.

    Built once (in the app's lifespan) and shared; it holds no threads of its own, only the
    limit, so there is nothing to close.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # anyio's limiter, unlike a semaphore around run_in_executor, stays held until the thread
        # really ends even if the request is cancelled, so the bound on busy cores is true.
        self._limiter = anyio.CapacityLimiter(settings.audio_workers)

    async def decode(
        self,
        data: bytes,
        *,
        declared_format: str | None,
        param: str,
        max_seconds: float | None = None,
        lease: MediaLease | None = None,
    ) -> DecodedAudio:
        """`decode_audio_sync` in a worker thread; see there."""
        work = functools.partial(
            decode_audio_sync,
            data,
            declared_format=declared_format,
            param=param,
            settings=self._settings,
            max_seconds=max_seconds,
            lease=lease,
        )
        return await anyio.to_thread.run_sync(work, limiter=self._limiter)

    async def run(self, func: Callable[..., T], *args: object) -> T:
        """Any other blocking audio work (splitting, WAV encoding) under the same bound."""
        return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter)


# --- splitting ---------------------------------------------------------------------------------


def split_into_clips(
    samples: Samples,
    *,
    max_seconds: float = MAX_CLIP_SECONDS,
    search_seconds: float = 5.0,
    sample_rate: int = SAMPLE_RATE,
    window_seconds: float = 0.025,
) -> list[Samples]:
    """Cut `samples` into consecutive clips of at most `max_seconds`, at quiet points.

    Each cut goes in the middle of the longest quiet stretch (level within 5 % of the way from
    the quietest `window_seconds` to the typical one) in the last `search_seconds` before the clip
    would grow too long: a pause between phrases rather than the short silence of a stop
    consonant inside a word. The clips are views of `samples` and concatenate back to it exactly.
    """
    if not 0 < search_seconds < max_seconds:
        raise ValueError("search_seconds must be above 0 and below max_seconds")
    max_len = int(max_seconds * sample_rate)
    search_len = int(search_seconds * sample_rate)
    window = max(1, min(int(window_seconds * sample_rate), search_len))
    clips: list[Samples] = []
    start = 0
    total = len(samples)
    while total - start > max_len:
        cut = _quietest_cut(samples, start + max_len - search_len, start + max_len, window)
        clips.append(samples[start:cut])
        start = cut
    clips.append(samples[start:])
    return clips


def _quietest_cut(samples: Samples, lo: int, hi: int, window: int) -> int:
    """The index in (lo, hi] in the middle of the longest quiet stretch of samples[lo:hi]."""
    import numpy as np

    region = np.asarray(samples[lo:hi], dtype=np.float64)
    energy_sum = np.concatenate(([0.0], np.cumsum(region * region)))
    energy = energy_sum[window:] - energy_sum[:-window]  # energy of the window starting at i
    floor = float(energy.min())
    # Relative to the typical level, so a noise floor's wobble still counts as quiet; the small
    # absolute term absorbs cumsum rounding where the quiet part is digital silence.
    threshold = floor + 0.05 * (float(np.median(energy)) - floor) + window * 1e-10
    quiet = np.concatenate(([False], energy <= threshold, [False]))
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]  # runs of quiet windows: [start, end)
    lengths = ends - starts
    # The longest run; among equals the last, which keeps clips long and few.
    best = len(lengths) - 1 - int(np.argmax(lengths[::-1]))
    # The run's windows cover [start, end - 1 + window); cut in the middle of that.
    middle = (int(starts[best]) + int(ends[best]) - 1 + window) // 2
    return lo + max(1, min(middle, hi - lo))


# --- encoding ----------------------------------------------------------------------------------


def clip_to_wav_bytes(clip: Samples, *, sample_rate: int = SAMPLE_RATE) -> bytes:
    """`clip` (float32 mono) as a 16-bit PCM WAV file."""
    import numpy as np

    pcm = np.clip(np.nan_to_num(clip), -1.0, 1.0) * 32767.0
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(np.rint(pcm).astype("<i2").tobytes())
    return buffer.getvalue()


def clip_to_wav_data_url(clip: Samples, *, sample_rate: int = SAMPLE_RATE) -> str:
    """`clip` as ``data:audio/wav;base64,...``, the audio form every SGLang build loads."""
    encoded = base64.b64encode(clip_to_wav_bytes(clip, sample_rate=sample_rate)).decode("ascii")
    return "data:audio/wav;base64," + encoded
