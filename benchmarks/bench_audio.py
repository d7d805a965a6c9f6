"""Benchmark of audio.py: decode + down-mix + resample, splitting and WAV encoding (not a test).

Issue 4's goal: 60 s of compressed audio ready (16 kHz mono float32) in under 150 ms on one core.
Run it pinned to one core, from the repository root:

    taskset -c 1 .venv/bin/python benchmarks/bench_audio.py [--repeat 7]

The material is made here with the tests' factory: a stereo mix of tones and noise at 44.1 kHz
(what a phone or a music file holds) for MP3 and M4A, and 48 kHz mono Opus in WebM (what a
browser's MediaRecorder sends).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import audio_factory  # noqa: E402  (tests/ is on the path only from here on)

from gateway.media import audio  # noqa: E402
from gateway.settings import Settings  # noqa: E402


def programme(seconds: float, rate: int, channels: int) -> np.ndarray:
    """Tones that change every second plus a little noise: something codecs must work for."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    freq = 220.0 + 110.0 * (np.floor(t) % 7)
    mix = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * np.random.default_rng(1).standard_normal(n)
    left = mix.astype(np.float32)
    if channels == 1:
        return left
    return np.stack([left, np.roll(left, 441)])


def timed(func: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median, best) wall seconds of `repeat` calls after one warm-up call."""
    func()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    settings = Settings(max_audio_seconds=3600, max_audio_bytes=200 * 1024 * 1024)

    cases = [
        ("60 s MP3 (44.1 kHz stereo, 128 kb/s)", "mp3", 60.0, 44_100, 2),
        ("60 s WebM/Opus (48 kHz mono, 48 kb/s)", "webm", 60.0, 48_000, 1),
        ("60 s M4A/AAC (44.1 kHz stereo, 128 kb/s)", "m4a", 60.0, 44_100, 2),
        ("10 min M4A/AAC (44.1 kHz stereo, 128 kb/s)", "m4a", 600.0, 44_100, 2),
    ]
    print(f"{'decode + down-mix + resample to 16 kHz':46} {'median':>9} {'best':>9}  x realtime")
    decoded = None
    for label, fmt, seconds, rate, channels in cases:
        data = audio_factory.encode(programme(seconds, rate, channels), fmt, rate=rate)

        def decode(data: bytes = data, fmt: str = fmt) -> audio.DecodedAudio:
            return audio.decode_audio_sync(
                data, declared_format=fmt, param="bench", settings=settings
            )

        decoded = decode()
        median, best = timed(decode, args.repeat if seconds <= 60 else max(3, args.repeat // 2))
        print(f"{label:46} {median * 1e3:7.1f}ms {best * 1e3:7.1f}ms  {seconds / median:8.0f}")

    assert decoded is not None  # the 10-minute case
    samples = decoded.samples
    median, best = timed(lambda: audio.split_into_clips(samples), args.repeat)
    clips = audio.split_into_clips(samples)
    label = f"split 10 min into {len(clips)} clips"
    print(f"{label:46} {median * 1e3:7.2f}ms {best * 1e3:7.2f}ms")
    median, best = timed(lambda: [audio.clip_to_wav_data_url(c) for c in clips], args.repeat)
    print(f"{'10 min of clips to WAV data: URLs':46} {median * 1e3:7.1f}ms {best * 1e3:7.1f}ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
