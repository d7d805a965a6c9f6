"""Test audio made on the spot: tones, noise, silence, espeak-ng speech, encoded with PyAV.

Owns the material the audio tests and the benchmark feed the gateway, so no audio file is stored
in the repository and every accepted format is produced by a real encoder (FFmpeg's, bundled in
PyAV; no `ffmpeg` program is needed).
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Encoding:
    """How one accepted format is written: muxer, encoder and the rate the encoder wants."""

    container: str
    codec: str
    rate: int | None = None  # None: keep the source rate
    options: tuple[tuple[str, str], ...] = ()
    sample_format: str | None = None  # None: the encoder's first choice


# One entry per format a client may send; the key is the `format` name a client would declare.
ENCODINGS: dict[str, Encoding] = {
    "wav": Encoding("wav", "pcm_s16le"),
    "mp3": Encoding("mp3", "libmp3lame", options=(("b", "128k"),)),
    "flac": Encoding("flac", "flac"),
    # FFmpeg's own Vorbis encoder (no libvorbis in PyAV's wheels) is flagged experimental.
    "ogg": Encoding("ogg", "vorbis", 44_100, (("strict", "experimental"),)),
    "opus": Encoding("opus", "libopus", 48_000, (("b", "48k"),)),
    "webm": Encoding("webm", "libopus", 48_000, (("b", "48k"),)),
    "m4a": Encoding("ipod", "aac", options=(("b", "128k"),)),
    "aac": Encoding("adts", "aac", options=(("b", "128k"),)),
    "aiff": Encoding("aiff", "pcm_s16be"),
}

# WAV with the other sample types FFmpeg hands back (u8, s32 for 24-bit, float), so every
# conversion path of the decoder runs.
PCM_VARIANTS: dict[str, Encoding] = {
    "wav-u8": Encoding("wav", "pcm_u8"),
    "wav-s24": Encoding("wav", "pcm_s24le"),
    "wav-f32": Encoding("wav", "pcm_f32le"),
    "flac-s24": Encoding("flac", "flac", sample_format="s32"),
}


def tone(seconds: float, *, freq: float = 440.0, rate: int = 16_000, amp: float = 0.5) -> Samples:
    t = np.arange(round(seconds * rate), dtype=np.float64) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float, *, rate: int = 16_000, amp: float = 0.3, seed: int = 0) -> Samples:
    rng = np.random.default_rng(seed)
    return (amp * rng.uniform(-1.0, 1.0, round(seconds * rate))).astype(np.float32)


def silence(seconds: float, *, rate: int = 16_000) -> Samples:
    return np.zeros(round(seconds * rate), dtype=np.float32)


def tone_with_gaps(
    seconds: float, gaps: list[float], *, gap_seconds: float = 0.3, rate: int = 16_000
) -> Samples:
    """A loud tone with silent gaps centred on the given times: the only quiet places to cut."""
    out = tone(seconds, freq=330.0, rate=rate, amp=0.6)
    for centre in gaps:
        lo = max(0, round((centre - gap_seconds / 2) * rate))
        out[lo : round((centre + gap_seconds / 2) * rate)] = 0.0
    return out


class _Pipe(io.RawIOBase):
    """A write-only, unseekable sink: muxers cannot go back to fill in lengths, as in a stream."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.data += b
        return len(b)


def encode(
    samples: npt.ArrayLike, fmt: str, *, rate: int = 16_000, streamed: bool = False
) -> bytes:
    """`samples` (mono, or shape (channels, n)) at `rate`, written as format `fmt`.

    `streamed` writes to a pipe, as a browser's MediaRecorder does: WebM then has no duration.
    """
    enc = ENCODINGS.get(fmt) or PCM_VARIANTS[fmt]
    planar = np.atleast_2d(np.asarray(samples, dtype=np.float32))
    layout = {1: "mono", 2: "stereo"}[planar.shape[0]]
    out_rate = enc.rate or rate
    buf: io.BytesIO | _Pipe = _Pipe() if streamed else io.BytesIO()
    with av.open(buf, "w", format=enc.container) as container:
        stream = container.add_stream(enc.codec, rate=out_rate, layout=layout)
        stream.codec_context.options = dict(enc.options)
        if enc.sample_format is not None:
            stream.codec_context.format = enc.sample_format
        if enc.codec == "vorbis":  # the native Vorbis encoder takes stereo only
            stream.codec_context.layout = "stereo"
        stream.codec_context.open()
        resampler = av.AudioResampler(
            format=stream.codec_context.format,
            layout=stream.codec_context.layout,
            rate=out_rate,
            frame_size=stream.codec_context.frame_size or 1024,
        )
        step = 4096
        for start in range(0, planar.shape[1], step):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(planar[:, start : start + step]), format="fltp", layout=layout
            )
            frame.sample_rate = rate
            for out in resampler.resample(frame):
                container.mux(stream.encode(out))
        for out in resampler.resample(None):
            container.mux(stream.encode(out))
        container.mux(stream.encode(None))
    return bytes(buf.data) if isinstance(buf, _Pipe) else buf.getvalue()


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speech_wav(text: str) -> bytes:
    """`text` spoken by espeak-ng, as the WAV it writes (22.05 kHz mono)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed")
    done = subprocess.run([exe, "--stdout", text], capture_output=True, check=True, timeout=30)
    return done.stdout
