"""OpenAI's transcription response formats: json, text, srt, vtt and verbose_json.

Owns how a `whisper_asr.TranscriptResult` (from Whisper or from Gemma 3n clips) is written out for
`/v1/audio/transcriptions` and `/v1/audio/translations` in the shapes OpenAI's `whisper-1` answers
with: JSON with duration `usage`, plain text with a final newline, SubRip and WebVTT subtitle
files whose cues are the segments. Pure functions, no I/O.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Sequence
from typing import Any, Literal

import orjson

from gateway.speech.whisper_asr import TranscriptResult, TranscriptSegment

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
Task = Literal["transcribe", "translate"]


def render(result: TranscriptResult, fmt: ResponseFormat, task: Task) -> tuple[bytes, str]:
    """`result` as OpenAI returns it in response format `fmt`: (body, media type)."""
    if fmt == "text":
        return (result.text + "\n").encode(), "text/plain; charset=utf-8"
    if fmt == "srt":
        return format_srt(result.segments).encode(), "text/plain; charset=utf-8"
    if fmt == "vtt":
        # text/vtt, not OpenAI's text/plain: browsers' <track> elements load nothing else.
        return format_vtt(result.segments).encode(), "text/vtt; charset=utf-8"
    # whisper-1 reports the billed duration in whole seconds, rounded up.
    usage = {"type": "duration", "seconds": math.ceil(result.duration)}
    body: dict[str, Any]
    if fmt == "json":
        body = {"text": result.text, "usage": usage}
    else:
        body = {
            "task": task,
            "language": result.language,
            "duration": round(result.duration, 3),
            "text": result.text,
            "segments": [_segment_json(s) for s in result.segments],
            "usage": usage,
        }
    return orjson.dumps(body), "application/json"


def _segment_json(segment: TranscriptSegment) -> dict[str, Any]:
    rounded = {"start": round(segment.start, 3), "end": round(segment.end, 3)}
    return {**dataclasses.asdict(segment), **rounded, "tokens": list(segment.tokens)}


def _timestamp(seconds: float, decimal_mark: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_mark}{millis:03d}"


def _cues(segments: Sequence[TranscriptSegment]) -> list[tuple[float, float, str]]:
    cues = []
    for segment in segments:
        # A blank line ends a cue and "-->" starts a timing line, in SRT and WebVTT alike.
        lines = (" ".join(line.split()) for line in segment.text.splitlines())
        text = "\n".join(line for line in lines if line).replace("-->", "->")
        if text:  # a cue without text is no cue; Whisper emits the odd empty segment
            cues.append((segment.start, segment.end, text))
    return cues


def format_srt(segments: Sequence[TranscriptSegment]) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, separated by blank lines."""
    return "\n".join(
        f"{n}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n"
        for n, (start, end, text) in enumerate(_cues(segments), start=1)
    )


def format_vtt(segments: Sequence[TranscriptSegment]) -> str:
    """WebVTT: the header, then cues ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` with escaped text."""
    # https://www.w3.org/TR/webvtt1/#cue-text: "&" and "<" start markup, so they are escaped.
    cues = (
        f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{html.escape(text, quote=False)}\n"
        for start, end, text in _cues(segments)
    )
    return "WEBVTT\n\n" + "\n".join(cues)
