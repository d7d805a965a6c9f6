"""The memory budget for decoded media: what requests may hold at once, counted before decoding.

Encoded media are small and decoded media are not: a 1,242-byte WAV that declares a 1 Hz rate
is ten minutes of audio, 38 MB of 16 kHz float samples, and forty such transcriptions held
2 GB. So every decoded byte is accounted against two limits before it is decoded:

- per request (`MAX_DECODED_MEDIA_BYTES_PER_REQUEST`): beyond it the request is a 413;
- per process (`MAX_DECODED_MEDIA_BYTES`): beyond it the request is a 429 with Retry-After,
  while the requests already holding memory finish, instead of growth until the kernel kills
  the gateway.

A request takes its share through a `MediaLease` (`MediaBudget.lease()`), piece by piece as
it decodes (audio is counted as it is decoded, from what its header declares first, so a header
that lies cannot get past the budget either), and gives it all back when it no longer holds the
media. Images are counted while a worker decodes them, from the width and height their header
declares (`declared_pixels`), read before any pixel is.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from gateway import errors
from gateway.settings import Settings

BYTES_PER_PIXEL = 4  # RGBA while decoding, the most a decoder holds per pixel


class MediaBudget:
    """The process's budget; leases are taken from any thread."""

    def __init__(self, limit: int, per_request: int, *, retry_after: int = 1) -> None:
        self.limit = limit
        self.per_request = per_request
        self.retry_after = retry_after
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    @contextmanager
    def lease(self) -> Iterator[MediaLease]:
        """A lease for one request, returned however the request ends."""
        lease = MediaLease(self)
        try:
            yield lease
        finally:
            lease.release()

    def _take(self, size: int) -> bool:
        with self._lock:
            if self._used + size > self.limit:
                return False
            self._used += size
            return True

    def _give(self, size: int) -> None:
        with self._lock:
            self._used -= size


class MediaLease:
    """One request's share of the budget."""

    def __init__(self, budget: MediaBudget) -> None:
        self._budget = budget
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def take(self, size: int, *, param: str | None) -> None:
        """Account `size` more bytes before they are decoded, or raise 413 / 429."""
        budget = self._budget
        with self._lock:
            if self._held + size > budget.per_request:
                raise errors.PayloadTooLarge(
                    f"The request's media decode to more than the "
                    f"{budget.per_request // 2**20} MiB one request may hold; send shorter "
                    "audio or fewer or smaller images.",
                    param=param,
                )
            if not budget._take(size):
                raise errors.RateLimited(
                    "The gateway is holding as much decoded media as it may; retry shortly.",
                    headers={"Retry-After": str(budget.retry_after)},
                )
            self._held += size

    def give_back(self, size: int) -> None:
        """Return `size` bytes of what was taken (an image decoded and gone)."""
        with self._lock:
            size = min(size, self._held)
            self._held -= size
        self._budget._give(size)

    def release(self) -> None:
        self.give_back(self._held)


def declared_pixels(head: bytes) -> int | None:
    """Width x height as the image's header declares them, for PNG, GIF, BMP, WebP and JPEG
    (None for other formats or a header not read yet): cheap, before any decoding."""
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
        elif head[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", head[6:10])
        elif head[:2] == b"BM":
            width, height = struct.unpack("<ii", head[18:26])
        elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            width, height = _webp_size(head)
        elif head[:3] == b"\xff\xd8\xff":
            width, height = _jpeg_size(head)
        else:
            return None
    except (struct.error, ValueError):
        return None
    return abs(int(width)) * abs(int(height))


def _webp_size(head: bytes) -> tuple[int, int]:
    chunk = head[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if chunk == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    raise ValueError("unknown WebP chunk")


def _jpeg_size(head: bytes) -> tuple[int, int]:
    position = 2
    while position + 9 < len(head):
        if head[position] != 0xFF:
            raise ValueError("not a marker")
        marker = head[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(head[position + 2 : position + 4], "big")
        # SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", head[position + 5 : position + 9])
            return width, height
        position += 2 + length
    raise ValueError("no frame header in the bytes read")


def media_budget(settings: Settings) -> MediaBudget:
    """The budget `settings` describe (the app builds one and shares it)."""
    return MediaBudget(
        settings.max_decoded_media_bytes,
        settings.max_decoded_media_bytes_per_request,
        retry_after=settings.retry_after_seconds,
    )
