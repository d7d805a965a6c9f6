"""Image input: every image a client sends becomes a small, clean JPEG data: URL for SGLang.

Owns `ImagePreparer`, which takes the `url` of an OpenAI ``image_url`` part (a ``data:`` URL or an
``http(s)`` URL, fetched through `fetch.MediaFetcher`) and returns the ``data:`` URL the
gateway forwards. SGLang is never given anything it would fetch or read itself.

What a prepared image is, and why:

- the format is sniffed from the bytes (a client's media type is often wrong or missing) and only
  that format's Pillow decoder may open it, so no exotic decoder (EPS runs Ghostscript) is reached;
- the size is checked twice: encoded bytes before decoding, width x height from the header before
  the pixels are decoded (decompression bombs);
- the first frame is taken (animations), EXIF orientation applied, transparency flattened on
  white, CMYK / palette / 16-bit / grey converted to RGB;
- the longer side is scaled down to `image_max_side` (768: Gemma 3n sees every image as 768x768),
  JPEGs through libjpeg's DCT scaling (`draft`) so a 24 MP photo is never fully decoded;
- it is re-encoded as JPEG, which also drops every metadata block (GPS position, thumbnails).

Decoding runs in a pool of `media_workers` worker processes, not threads. Measured on 2 cores
(benchmarks/bench_images.py): threads do as well on JPEG, but Pillow holds the GIL through a whole
WebP decode (a 1 MB WebP stalls every other request's stream for 40+ ms; bigger ones for longer)
and PNG decoding convoys on the GIL, so 8 large images stall the loop 15-70 ms with threads and
2-10 ms with processes, at the same throughput. And a decoder that crashes on a hostile file
(libwebp and libheif have had such bugs) takes down one worker, which is replaced, not the
gateway. The payload reaches a worker through a temporary file (see `prepare_file`).

Prepared images are kept in a bounded LRU cache keyed by a hash of their content (and by URL, for a
short time, for fetched ones): multi-turn chats resend every image on every turn.

The pool is driven through asyncio (`asyncio.wrap_future`), which is what uvicorn runs.
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import hashlib
import importlib
import io
import logging
import multiprocessing
import os
import time
from collections import OrderedDict
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

import anyio.to_thread

from gateway import errors
from gateway.media.memory import BYTES_PER_PIXEL, MediaLease, declared_pixels
from gateway.server.child_process import start_child
from gateway.tempfiles import write_temporary

# Pillow, pillow-heif and pybase64 are imported where images are decoded (in the pool's workers),
# not here (idle memory, issue 7).
if TYPE_CHECKING:
    from PIL import Image

    from gateway.media.fetch import MediaFetcher
    from gateway.settings import Settings

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS = "JPEG, PNG, WebP, GIF, BMP, TIFF, AVIF, HEIC"
_OUTPUT_PREFIX = "data:image/jpeg;base64,"

# Resampling in two steps, each a proper low-pass: first an integer reduction to no less than the
# target (JPEG: libjpeg's DCT scaling while decoding; others: `reduce()`, an area average), then
# an antialiased bicubic for the remaining factor (< 2), where it is indistinguishable from
# Lanczos and 25% cheaper (10 vs 13 ms on a 12 MP photo here). A larger gap (thumbnail() uses
# 2.0) costs 3-6x more resize time on a 4K image (34 vs 6 ms here) for a difference nobody sees
# once Gemma 3n has resized the picture to 768x768 again itself.
_RESAMPLE = "BICUBIC"  # an Image.Resampling member
_REDUCING_GAP = 1.0

_ORIENTATION_TAG = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {  # EXIF orientation -> Image.Transpose member
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})

_HASH_INLINE_LIMIT = 256 * 1024  # below this, hashing on the event loop beats a thread hop
# Base64 goes through pybase64 (SIMD; 0.2 ms for what binascii does in 11 ms here).
_WHITESPACE = b" \t\r\n"
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


class ImageRejected(Exception):
    """An image the gateway will not forward; `code` is the OpenAI error code."""

    def __init__(self, message: str, code: str = "invalid_image") -> None:
        super().__init__(message, code)  # both in args, so it pickles back from a worker
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class ImageOptions:
    """What a prepared image must satisfy; plain data, so it can cross to a worker."""

    max_bytes: int
    max_pixels: int
    max_side: int
    jpeg_quality: int


# -- the work done in the pool ----------------------------------------------------------------


def prepare_file(path: str, encoding: str, options: ImageOptions) -> str:
    """Worker entry point: the payload is in the file at `path` (the parent deletes it).

    `encoding` says what it is: "base64" or "percent" (a data: URL's payload) or "raw" (the
    image file itself). A file, not an argument: pickling megabytes through the pool's pipe
    holds the parent's GIL (and so its event loop) for milliseconds per image, while the
    parent's os.write() releases it.
    """
    with open(path, "rb") as spilled:
        payload = spilled.read()
    return prepare_payload(payload, encoding, options)


def prepare_payload(payload: bytes, encoding: str, options: ImageOptions) -> str:
    """A data: URL payload or an image file -> the data: URL of the prepared JPEG."""
    if encoding == "base64":
        data = decode_base64(payload, max_bytes=options.max_bytes)
    elif encoding == "percent":
        data = unquote_to_bytes(payload)
    else:
        data = payload
    return prepare_image_bytes(data, options)


def prepare_image_bytes(data: bytes, options: ImageOptions) -> str:
    """Encoded image bytes in any supported format -> the data: URL of the prepared JPEG."""
    import pybase64

    _check_encoded_size(len(data), options.max_bytes)
    if not data:
        raise ImageRejected("The image is empty (zero bytes).")
    image_format = sniff_format(data[:128])
    if image_format is None:
        raise ImageRejected(
            f"The data is not an image in a supported format ({SUPPORTED_FORMATS})."
        )
    if image_format == "HEIF" and not _register_heif():
        raise ImageRejected(
            "HEIC images are not supported by this gateway.", code="unsupported_image"
        )
    jpeg = _normalise(data, image_format, options)
    return _OUTPUT_PREFIX + pybase64.b64encode(jpeg).decode("ascii")


def decode_base64(text: bytes, *, max_bytes: int) -> bytes:
    """Strict base64, forgiving what real clients send.

    Accepted: line breaks and spaces anywhere, missing padding, the URL-safe alphabet. Refused:
    any other character, or a length no base64 string can have.
    """
    import pybase64

    text = text.rstrip(b" \t\r\n=")  # padding is redone below
    # Each translate() is a full pass; the membership tests are memchr, 10x cheaper.
    if b"\n" in text or b"\r" in text or b" " in text or b"\t" in text:
        text = text.translate(None, _WHITESPACE)
    if b"-" in text or b"_" in text:
        text = text.translate(_URLSAFE_TO_STANDARD)
    if len(text) % 4 == 1:
        raise ImageRejected("The base64 image data is invalid: its length is impossible.")
    # Cheap before decoding: 4 characters make 3 bytes.
    _check_encoded_size(len(text) // 4 * 3, max_bytes)
    try:
        return pybase64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except binascii.Error as exc:
        raise ImageRejected(
            "The base64 image data is invalid: it contains characters outside base64."
        ) from exc


def sniff_format(head: bytes) -> str | None:
    """Pillow's name of the format the first bytes announce, or None for anything else."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM") and len(head) >= 26:
        return "BMP"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if head[4:8] == b"ftyp":
        # ISO-BMFF: the major brand, then compatible brands, up to the end of the ftyp box.
        box_end = min(int.from_bytes(head[:4], "big"), len(head))
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, box_end - 3, 4)}
        if brands & {b"avif", b"avis"}:
            return "AVIF"
        if brands & _HEIF_BRANDS:
            return "HEIF"
    return None


def _check_encoded_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImageRejected(
            f"The image is larger than the limit of {max_bytes} bytes.", code="image_too_large"
        )


def _too_many_pixels(width: int, height: int, max_pixels: int) -> ImageRejected:
    return ImageRejected(
        f"The image is {width}x{height} pixels, more than the limit of {max_pixels} pixels.",
        code="image_too_large",
    )


def _normalise(data: bytes, image_format: str, options: ImageOptions) -> bytes:
    from PIL import Image

    name = "HEIC" if image_format == "HEIF" else image_format
    try:
        image = Image.open(io.BytesIO(data), formats=[image_format])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard fires inside open(), before our check can; its warning is an
        # exception wherever warnings are errors (pytest here, `-W error` anywhere).
        raise ImageRejected(
            f"The image has more pixels than the limit of {options.max_pixels}.",
            code="image_too_large",
        ) from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for bad input
        raise ImageRejected(f"The data is not a valid {name} image.") from exc
    with image:
        width, height = image.size
        if width * height > options.max_pixels:
            raise _too_many_pixels(width, height, options.max_pixels)
        try:
            prepared = _to_prepared_rgb(image, options.max_side)
        except MemoryError:
            raise
        except ImageRejected:
            raise
        except Exception as exc:
            raise ImageRejected(f"The {name} image is truncated or corrupt.") from exc
        # Pillow carries some metadata over by itself (a JPEG comment, for one): drop it all.
        prepared.info = {}
        out = io.BytesIO()
        prepared.save(out, "JPEG", quality=options.jpeg_quality)
    return out.getvalue()


def _to_prepared_rgb(image: Image.Image, max_side: int) -> Image.Image:
    from PIL import Image

    width, height = image.size
    target = _fit_within(width, height, max_side)
    box: tuple[float, float, float, float] | None = None
    if target != image.size and image.format in ("JPEG", "MPO"):
        # Decode at 1/2, 1/4 or 1/8 scale, never below the target: a 12 MP photo costs
        # a quarter of its decode, and the pixels are never all in memory.
        drafted = image.draft(None, target)
        if drafted is not None:
            box = drafted[1]
    orientation = _orientation(image)
    image.load()  # surfaces truncation here, where the caller turns it into a clear message
    work = _to_resizable_mode(image)
    if target != (width, height):
        resample = Image.Resampling[_RESAMPLE]
        work = work.resize(target, resample, box=box, reducing_gap=_REDUCING_GAP)
    if orientation in _TRANSPOSE_FOR_ORIENTATION:
        work = work.transpose(Image.Transpose[_TRANSPOSE_FOR_ORIENTATION[orientation]])
    if work.mode in ("RGBA", "LA"):
        # Flattened after resizing: Pillow resizes alpha images premultiplied, so the result is
        # the same as flattening first, on far fewer pixels.
        rgba = work.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return work if work.mode == "RGB" else work.convert("RGB")


def _fit_within(width: int, height: int, max_side: int) -> tuple[int, int]:
    longer = max(width, height)
    if longer <= max_side:
        return width, height
    scale = max_side / longer
    return max(1, round(width * scale)), max(1, round(height * scale))


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block must not cost the picture: keep it unrotated
        return 1
    return value if isinstance(value, int) else 1


def _to_resizable_mode(image: Image.Image) -> Image.Image:
    """A mode Pillow resizes with a real filter (it falls back to NEAREST for "P" and "1")."""
    mode = image.mode
    if mode in ("RGB", "L"):
        # A PNG tRNS colour key is transparency too.
        return image.convert("RGBA") if image.has_transparency_data else image
    if mode in ("RGBA", "LA"):
        return image
    if mode in ("P", "PA"):
        return image.convert("RGBA" if image.has_transparency_data else "RGB")
    if mode == "1":
        return image.convert("L")
    if mode in ("RGBa", "La"):
        return image.convert(mode.upper())
    if mode.startswith("I") or mode == "F":
        return _wide_grey_to_l(image)
    return image.convert("RGB")  # CMYK (Adobe inversion is undone by the decoder), YCbCr, LAB...


def _wide_grey_to_l(image: Image.Image) -> Image.Image:
    # Pillow's own I;16/I/F -> L conversion clips at 255, which turns most 16-bit pictures white:
    # scale the sample range down instead.
    wide = image.convert("F")
    extrema = wide.getextrema()  # one band: (min, max)
    high = float(extrema[1]) if isinstance(extrema[1], int | float) else 255.0
    if high <= 1.0 and image.mode == "F":
        scale = 255.0  # float images are usually 0..1
    elif high > 255:
        scale = 255.0 / 65535.0 if high <= 65535 else 255.0 / high
    else:
        scale = 1.0
    return wide.point(lambda value: value * scale).convert("L")


@functools.cache
def _register_heif() -> bool:
    """Teach Pillow HEIC (iPhone photos) if pillow-heif is installed; AVIF is built in."""
    try:
        import pillow_heif  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


# -- the cache ----------------------------------------------------------------------------------


class PreparedCache:
    """Bounded LRU of prepared data: URLs, with an optional lifetime per entry.

    Used only from the event loop thread, so it needs no lock.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: str, ttl: float | None = None) -> None:
        if self.max_entries <= 0 or (ttl is not None and ttl <= 0):
            return
        expires = float("inf") if ttl is None else time.monotonic() + ttl
        self._entries[key] = (value, expires)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


# -- the front ----------------------------------------------------------------------------------


class ImagePreparer:
    """Turns a client's image URL into the data: URL sent to SGLang; owns the pool and cache."""

    def __init__(
        self, settings: Settings, fetcher: MediaFetcher, *, executor: Executor | None = None
    ) -> None:
        """`executor`, if given, runs the decoding instead of the preparer's own process pool
        (the benchmark compares threads this way); its owner shuts it down."""
        self._fetcher = fetcher
        self.options = ImageOptions(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            max_side=settings.image_max_side,
            jpeg_quality=settings.image_jpeg_quality,
        )
        self.workers = settings.media_workers or _usable_cores()
        # Processes start with `warm` (the app's lifespan, MEDIA_PRESTART) or on the first images.
        self._owns_pool = executor is None
        self._pool: Executor = executor or self._new_pool()
        self.cache = PreparedCache(settings.image_cache_entries)
        self._url_ttl = settings.image_cache_ttl

    async def prepare(self, url: str, *, param: str, lease: MediaLease | None = None) -> str:
        """Any accepted image URL (data: or http(s)) -> the data: URL to send SGLang.

        Raises `errors.InvalidRequest` (400) naming `param` for anything wrong with the image;
        the pixels a decode will hold are taken from `lease` first (413/429 beyond it).
        """
        try:
            head = url[:8].lower()
            if head.startswith("data:"):
                return await self._prepare_data_url(url, lease, param)
            if head.startswith(("http://", "https://")):
                return await self._prepare_remote(url, param, lease)
            raise _refused_scheme(url)
        except ImageRejected as exc:
            raise errors.InvalidRequest(exc.message, param=param, code=exc.code) from exc

    async def warm(self) -> None:
        """Start every worker process now and let each load its decoders, so that the first
        image costs what the tenth does (starting a worker took ~6 s under load)."""
        loop = asyncio.get_running_loop()
        pool = self._pool
        await asyncio.gather(*(loop.run_in_executor(pool, _ready) for _ in range(self.workers)))

    def close(self) -> None:
        """Stop the worker processes (waiting for the image each is on) and drop the cache."""
        if self._owns_pool:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.cache.clear()

    async def _prepare_data_url(self, url: str, lease: MediaLease | None, param: str) -> str:
        comma = url.find(",", 5, 5 + 256)  # media types are short; don't scan megabytes for one
        if comma < 0:
            raise ImageRejected(
                "The data: URL is malformed; expected data:<media type>;base64,<data>."
            )
        # The declared media type is ignored: the bytes are sniffed instead.
        is_base64 = "base64" in (p.strip().lower() for p in url[5:comma].split(";")[1:])
        start = comma + 1
        # A payload far past what max_bytes can encode to is refused without decoding it
        # (base64 is 4/3 of the bytes, plus room for line breaks).
        expansion = 1.5 if is_base64 else 3.0
        if len(url) - start > self.options.max_bytes * expansion + 1024:
            _check_encoded_size(self.options.max_bytes + 1, self.options.max_bytes)
        key = _data_url_key(url)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        encoding = "base64" if is_base64 else "percent"
        prepared = await self._run(url, start, encoding, lease, param)
        self.cache.put(key, prepared)
        return prepared

    async def _prepare_remote(self, url: str, param: str, lease: MediaLease | None) -> str:
        url_key = "u:" + url
        cached = self.cache.get(url_key)
        if cached is not None:
            return cached
        fetched = await self._fetcher.fetch(
            url,
            param=param,
            max_bytes=self.options.max_bytes,
            what="image",
            too_large_code="image_too_large",
        )
        if not fetched.data:
            raise ImageRejected("The image URL returned an empty body.")
        if sniff_format(fetched.data[:128]) is None:
            raise ImageRejected(
                f"The image URL returned {fetched.content_type or 'data of no stated type'}, "
                f"not an image in a supported format ({SUPPORTED_FORMATS})."
            )
        content_key = "c:" + await self._hash(fetched.data)
        prepared = self.cache.get(content_key)
        if prepared is None:
            prepared = await self._run(fetched.data, 0, "raw", lease, param)
            self.cache.put(content_key, prepared)
        ttl = self._url_ttl if fetched.max_age is None else min(self._url_ttl, fetched.max_age)
        self.cache.put(url_key, prepared, ttl=ttl)
        return prepared

    async def _hash(self, content: bytes) -> str:
        if len(content) <= _HASH_INLINE_LIMIT:
            return hashlib.sha256(content).hexdigest()
        # In a thread, not the pool: a cache hit must not queue behind big decodes, and hashlib
        # releases the GIL on large inputs, so the loop runs on meanwhile.
        return await anyio.to_thread.run_sync(_sha256_hex, content)

    async def _run(
        self,
        payload: str | bytes,
        start: int,
        encoding: str,
        lease: MediaLease | None = None,
        param: str | None = None,
    ) -> str:
        """Prepare `payload[start:]` in the pool (see `prepare_file`), its pixels accounted."""
        size = 0
        if lease is not None:
            pixels = declared_pixels(_head_bytes(payload, start, encoding))
            size = min(pixels or self.options.max_pixels, self.options.max_pixels) * BYTES_PER_PIXEL
            lease.take(size, param=param)
        try:
            path = await anyio.to_thread.run_sync(_spill, payload, start)
            try:
                return await self._submit(path, encoding)
            finally:
                os.unlink(path)
        finally:
            if lease is not None:
                lease.give_back(size)  # decoded and gone: only the small JPEG is left

    async def _submit(self, path: str, encoding: str) -> str:
        """Run `prepare_file` in the pool; a pool broken by a crashed worker is replaced, once."""
        for attempt in range(2):
            pool = self._pool
            try:
                # If this task is cancelled (client gone), wrap_future cancels the job too,
                # unless a worker already took it.
                return await asyncio.wrap_future(
                    pool.submit(prepare_file, path, encoding, self.options)
                )
            except BrokenProcessPool:
                # Every job in flight fails with the pool; each caller retries once on a new
                # one. The image that crashes a worker crashes the second pool too, and only
                # its own request gets the error.
                if self._pool is pool and self._owns_pool:
                    logger.error("an image worker process died; starting a new pool")
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = self._new_pool()
                if attempt:
                    raise ImageRejected(
                        "The image could not be decoded: the decoder failed on it."
                    ) from None
        raise AssertionError("unreachable")

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: forking a process that runs threads (uvicorn, anyio's workers) can
        # copy a held lock into the child.
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(os.getpid(),),
        )


def _head_bytes(payload: str | bytes, start: int, encoding: str) -> bytes:
    """The first bytes of the image (enough for any header `declared_pixels` reads)."""
    chunk = payload[start : start + _HEAD_CHARS]
    if encoding == "raw":
        return bytes(chunk) if isinstance(chunk, bytes) else chunk.encode("latin-1")
    text = chunk.encode("ascii", "ignore") if isinstance(chunk, str) else chunk
    if encoding == "percent":
        return unquote_to_bytes(text)
    text = b"".join(text.split())
    try:
        return binascii.a2b_base64(text[: len(text) // 4 * 4])
    except binascii.Error:
        return b""  # not base64 after all: the worker says so; accounted at the most


_HEAD_CHARS = 96 * 1024  # base64 of 72 KB: past a JPEG's EXIF block to its frame header


def _spill(payload: str | bytes, start: int) -> str:
    """Write `payload[start:]` to a new temporary file (TMPDIR: a tmpfs is best) for a worker."""
    if isinstance(payload, str):
        try:
            encoded = payload.encode("ascii")
        except UnicodeEncodeError as exc:
            raise ImageRejected("The data: URL contains characters that are not ASCII.") from exc
    else:
        encoded = payload
    return write_temporary(memoryview(encoded)[start:], "gateway-image-")


def _usable_cores() -> int:
    affinity = getattr(os, "sched_getaffinity", None)  # honours taskset and cgroup cpusets
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def _worker_init(parent: int) -> None:
    start_child(parent)  # Ctrl-C ignored; exits when the gateway is gone
    # The decoders this module leaves unimported (idle memory, issue 7) load as the worker
    # starts, not on its first image.
    for module in ("pybase64", "PIL.Image"):
        importlib.import_module(module)
    _register_heif()


def _ready() -> int:
    """A worker's answer once started (its initializer has run)."""
    return os.getpid()


def _sha256_hex(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _data_url_key(url: str) -> str:
    # The key of a data: URL is a hash of the whole string, computed where it is: SHA-256 would
    # first need a bytes copy and runs at 1.8 GB/s here, so a 4 MB photo's cache hit would cost
    # ~3 ms; Python's string hash (SipHash-1-3 with a random 128-bit key per process, so nobody
    # can aim a collision) runs at 4 GB/s on the str itself. With the length in the key, two
    # different images share a key with odds of about 2^-64 per pair.
    return f"d:{len(url)}:{hash(url):x}"


def _refused_scheme(url: str) -> ImageRejected:
    scheme, colon, _ = url[:32].partition(":")
    if colon and scheme.isascii() and scheme.replace("+", "").replace("-", "").isalnum():
        what = f"{scheme.lower()}: URLs are"
    else:
        what = "A path or text that is not a URL is"
    return ImageRejected(
        f"{what} not accepted as images; send a data: URL (base64) or an http(s) URL.",
        code="url_not_allowed",
    )
