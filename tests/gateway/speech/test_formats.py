"""Tests of speech/formats.py: OpenAI's five response formats from a transcript, directly.

The service tests (test_transcription.py) render real transcripts; these pin the edges of the
subtitle formats that real transcripts rarely reach: hours, rounding, empty and awkward text.
"""

from __future__ import annotations

import json

import pytest

from gateway.speech.formats import format_srt, format_vtt, render
from gateway.speech.whisper_asr import TranscriptResult, TranscriptSegment


def segment(id_: int, start: float, end: float, text: str) -> TranscriptSegment:
    return TranscriptSegment(id=id_, start=start, end=end, text=text, tokens=(1, 2))


SEGMENTS = (
    segment(0, 0.0, 1.5, "Hello."),
    segment(1, 1.5, 3661.0015, " two\n\nlines --> here "),
    segment(2, 3661.0015, 3661.5, "   "),  # Whisper's odd empty segment: no cue
    segment(3, 3661.5, 3662.9996, "a < b & c"),
)


def test_srt() -> None:
    assert format_srt(SEGMENTS) == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello.\n"
        "\n"
        "2\n00:00:01,500 --> 01:01:01,002\ntwo\nlines -> here\n"
        "\n"
        "3\n01:01:01,500 --> 01:01:03,000\na < b & c\n"
    )


def test_vtt() -> None:
    assert format_vtt(SEGMENTS) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:01.500\nHello.\n"
        "\n"
        "00:00:01.500 --> 01:01:01.002\ntwo\nlines -&gt; here\n"
        "\n"
        "01:01:01.500 --> 01:01:03.000\na &lt; b &amp; c\n"
    )


def test_no_segments() -> None:
    assert format_srt(()) == ""
    assert format_vtt(()) == "WEBVTT\n\n"


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [
        ("json", "application/json"),
        ("verbose_json", "application/json"),
        ("text", "text/plain; charset=utf-8"),
        ("srt", "text/plain; charset=utf-8"),
        ("vtt", "text/vtt; charset=utf-8"),
    ],
)
def test_render_media_types(fmt: str, media_type: str) -> None:
    result = TranscriptResult("Hello. Ünïcode", "english", 2.0004, SEGMENTS[:1])
    body, got = render(result, fmt, "transcribe")  # type: ignore[arg-type]
    assert got == media_type
    if fmt not in ("srt", "vtt"):
        assert "Ünïcode".encode() in body  # UTF-8 as is, not \u escapes


def test_json_and_verbose_json() -> None:
    result = TranscriptResult("Hello.", "english", 1.25, SEGMENTS[:1])
    assert json.loads(render(result, "json", "transcribe")[0]) == {
        "text": "Hello.",
        "usage": {"type": "duration", "seconds": 2},
    }
    assert json.loads(render(result, "verbose_json", "translate")[0]) == {
        "task": "translate",
        "language": "english",
        "duration": 1.25,
        "text": "Hello.",
        "segments": [
            {
                "id": 0,
                "seek": 0,
                "start": 0.0,
                "end": 1.5,
                "text": "Hello.",
                "tokens": [1, 2],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 0.0,
                "no_speech_prob": 0.0,
            }
        ],
        "usage": {"type": "duration", "seconds": 2},
    }
    assert render(result, "text", "transcribe")[0] == b"Hello.\n"
