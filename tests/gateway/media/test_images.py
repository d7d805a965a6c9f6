"""images.ImagePreparer: every accepted image becomes a clean RGB JPEG data: URL, or a clear 400."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import os
import time
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any
from urllib.parse import quote_from_bytes

import pytest
from image_factory import (
    BLUE,
    RED,
    animated,
    data_url,
    decode_data_url,
    encode,
    is_close,
    jpeg_with_orientation,
    marked,
    png_header_only,
    red_corner,
)
from local_http import ServerState, serve, static
from PIL import Image, ImageOps

from gateway import errors
from gateway.media import images
from gateway.media.fetch import MediaFetcher
from gateway.media.images import ImagePreparer, PreparedCache, sniff_format
from gateway.settings import Settings

pytestmark = pytest.mark.anyio

PARAM = "messages[1].content[2].image_url"


def make_preparer(**overrides: Any) -> tuple[ImagePreparer, MediaFetcher]:
    values: dict[str, Any] = {"media_workers": 2, "media_allowed_networks": ["127.0.0.1/32"]}
    values.update(overrides)
    settings = Settings(**values)
    fetcher = MediaFetcher(settings)
    return ImagePreparer(settings, fetcher), fetcher


@pytest.fixture(scope="module")
def preparer() -> Iterator[ImagePreparer]:
    """One real process pool for the module (workers start once); the cache is off so every
    call decodes. Its fetcher is never used here: the async client would outlive each test's
    event loop."""
    prepared, _ = make_preparer(image_cache_entries=0)
    yield prepared
    prepared.close()


async def prepare(preparer: ImagePreparer, url: str) -> Image.Image:
    image = decode_data_url(await preparer.prepare(url, param=PARAM))
    assert image.mode == "RGB"
    return image


async def rejected(preparer: ImagePreparer, url: str, code: str) -> str:
    with pytest.raises(errors.InvalidRequest) as caught:
        await preparer.prepare(url, param=PARAM)
    assert caught.value.status_code == 400
    assert caught.value.param == PARAM
    assert caught.value.code == code, caught.value.message
    return caught.value.message


# -- formats and modes ---------------------------------------------------------------------------

COLOUR = (200, 60, 40)
GREY = Image.new("RGB", (1, 1), COLOUR).convert("L").getpixel((0, 0))


def _rgb(mode: str) -> Image.Image:
    return Image.new("RGB", (1200, 600), COLOUR).convert(mode)


FORMAT_CASES: dict[str, tuple[bytes, tuple[int, int, int]]] = {
    "jpeg-rgb": (encode(_rgb("RGB"), "JPEG", quality=95), COLOUR),
    "jpeg-grey": (encode(_rgb("L"), "JPEG"), (GREY,) * 3),  # type: ignore[dict-item]
    "jpeg-cmyk": (encode(Image.new("CMYK", (1200, 600), (0, 255, 255, 0)), "JPEG"), (255, 0, 0)),
    "jpeg-progressive": (encode(_rgb("RGB"), "JPEG", progressive=True), COLOUR),
    "png-rgb": (encode(_rgb("RGB"), "PNG"), COLOUR),
    "png-rgba-opaque": (encode(_rgb("RGBA"), "PNG"), COLOUR),
    "png-grey": (encode(_rgb("L"), "PNG"), (GREY,) * 3),  # type: ignore[dict-item]
    "png-grey-alpha": (encode(_rgb("LA"), "PNG"), (GREY,) * 3),  # type: ignore[dict-item]
    "png-palette": (encode(_rgb("RGB").convert("P"), "PNG"), COLOUR),
    "png-1bit": (encode(Image.new("1", (1200, 600), 1), "PNG"), (255, 255, 255)),
    "png-16bit-grey": (encode(Image.new("I;16", (1200, 600), 40000), "PNG"), (155, 155, 155)),
    "gif": (encode(_rgb("RGB").convert("P"), "GIF"), COLOUR),
    "webp": (encode(_rgb("RGB"), "WEBP", quality=95), COLOUR),
    "webp-lossless-rgba": (encode(_rgb("RGBA"), "WEBP", lossless=True), COLOUR),
    "bmp": (encode(_rgb("RGB"), "BMP"), COLOUR),
    "bmp-palette": (encode(_rgb("RGB").convert("P"), "BMP"), COLOUR),
    "tiff-rgb": (encode(_rgb("RGB"), "TIFF"), COLOUR),
    "tiff-lzw": (encode(_rgb("RGB"), "TIFF", compression="tiff_lzw"), COLOUR),
    "tiff-cmyk": (encode(Image.new("CMYK", (1200, 600), (0, 255, 255, 0)), "TIFF"), (255, 0, 0)),
    "tiff-16bit-grey": (encode(Image.new("I;16", (1200, 600), 40000), "TIFF"), (155, 155, 155)),
    "tiff-float": (encode(Image.new("F", (1200, 600), 0.5), "TIFF"), (128, 128, 128)),
    "avif": (encode(_rgb("RGB"), "AVIF", quality=90), COLOUR),
}


@pytest.mark.parametrize("case", sorted(FORMAT_CASES))
async def test_every_format_and_mode_becomes_rgb_at_most_768(
    preparer: ImagePreparer, case: str
) -> None:
    data, colour = FORMAT_CASES[case]
    image = await prepare(preparer, data_url(data, "image/whatever"))
    assert image.size == (768, 384)
    assert is_close(image.getpixel((384, 192)), colour), (case, image.getpixel((384, 192)))


async def test_heic(preparer: ImagePreparer) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    image = await prepare(preparer, data_url(encode(_rgb("RGB"), "HEIF", quality=90)))
    assert image.size == (768, 384)
    assert is_close(image.getpixel((384, 192)), COLOUR)


async def test_small_images_keep_their_size_and_portraits_fit(preparer: ImagePreparer) -> None:
    small = await prepare(preparer, data_url(encode(_rgb("RGB").resize((300, 200)), "PNG")))
    assert small.size == (300, 200)
    tall = await prepare(preparer, data_url(encode(marked(600, 2000), "JPEG")))
    assert tall.size == (230, 768)
    assert red_corner(tall) == "tl"


async def test_large_jpeg_is_decoded_at_reduced_scale(preparer: ImagePreparer) -> None:
    # 6000x4000 (24 MP): the draft path must still give the right size and content.
    photo = marked(6000, 4000)
    image = await prepare(preparer, data_url(encode(photo, "JPEG", quality=80), "image/jpeg"))
    assert image.size == (768, 512)
    assert red_corner(image) == "tl"


@pytest.mark.parametrize("orientation", range(1, 9))
async def test_exif_orientation_is_applied(preparer: ImagePreparer, orientation: int) -> None:
    data = jpeg_with_orientation(marked(1600, 800), orientation)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    image = await prepare(preparer, data_url(data, "image/jpeg"))
    assert image.size == ((768, 384) if orientation < 5 else (384, 768))
    assert red_corner(image) == red_corner(expected)


async def test_transparency_is_flattened_on_white(preparer: ImagePreparer) -> None:
    picture = Image.new("RGBA", (1000, 500), (0, 0, 0, 0))  # fully transparent black
    picture.paste((255, 0, 0, 128), (500, 0, 1000, 500))  # half-transparent red on the right
    image = await prepare(preparer, data_url(encode(picture, "PNG")))
    assert is_close(image.getpixel((100, 192)), (255, 255, 255))
    assert is_close(image.getpixel((600, 192)), (255, 127, 127))


async def test_palette_transparency_is_flattened_on_white(preparer: ImagePreparer) -> None:
    picture = Image.new("P", (400, 200), 0)
    picture.putpalette([0, 0, 0, *RED] + [0, 0, 0] * 254)
    picture.paste(1, (200, 0, 400, 200))
    data = encode(picture, "GIF", transparency=0)
    image = await prepare(preparer, data_url(data, "image/gif"))
    assert is_close(image.getpixel((50, 100)), (255, 255, 255))
    assert is_close(image.getpixel((300, 100)), RED)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
async def test_animations_give_their_first_frame(preparer: ImagePreparer, fmt: str) -> None:
    data = animated(fmt, [RED, (0, 200, 0), BLUE], (300, 200))
    image = await prepare(preparer, data_url(data))
    assert image.size == (300, 200)
    assert is_close(image.getpixel((150, 100)), RED)


async def test_metadata_is_dropped(preparer: ImagePreparer) -> None:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x8825] = {1: "N", 2: (59.0, 20.0, 0.0)}  # GPS position
    data = encode(marked(800, 600), "JPEG", exif=exif.tobytes(), comment=b"secret")
    image = await prepare(preparer, data_url(data))
    assert not image.getexif()
    assert "comment" not in image.info
    assert "exif" not in image.info


# -- base64 and data: URL forms ------------------------------------------------------------------


async def test_base64_forms_real_clients_send(preparer: ImagePreparer) -> None:
    data = encode(marked(400, 300), "PNG")
    plain = base64.b64encode(data).decode()
    forms = [
        "data:image/png;base64," + base64.encodebytes(data).decode(),  # MIME line breaks
        "data:image/png;base64," + plain.rstrip("="),  # no padding
        "data:image/png;base64," + base64.urlsafe_b64encode(data).decode(),  # URL-safe
        "data:image/jpeg;base64," + plain,  # wrong type: sniffed
        "data:;base64," + plain,  # no type
        "data:application/octet-stream;base64," + plain,
        "DATA:IMAGE/PNG;BASE64," + plain,
        "data:image/png;charset=binary;base64," + plain,
        "data:image/png," + quote_from_bytes(data),  # percent-encoded, no base64
    ]
    for url in forms:
        image = await prepare(preparer, url)
        assert image.size == (400, 300)
        assert red_corner(image) == "tl"


@pytest.mark.parametrize(
    ("url", "code", "words"),
    [
        ("data:image/png;base64,", "invalid_image", "empty"),
        ("data:image/png;base64,@@@@####", "invalid_image", "characters outside base64"),
        ("data:image/png;base64,iVBORw0KGgo=AAAA", "invalid_image", "outside base64"),
        ("data:image/png;base64,iVBORw0KG", "invalid_image", "length is impossible"),
        ("data:image/png;base64,iVBORw0KGgoé", "invalid_image", "not ASCII"),
        ("data:image/png;base64", "invalid_image", "malformed"),
        (data_url(b"hello, I am a PNG, honest"), "invalid_image", "not an image"),
        (data_url(b"<html><body>hi</body></html>"), "invalid_image", "not an image"),
        (data_url(b"\x89PNG\r\n\x1a\n" + b"junk" * 20), "invalid_image", "not a valid PNG"),
        (data_url(b"\xff\xd8\xff\xe0" + b"\x00" * 40), "invalid_image", "JPEG"),
        ("file:///etc/passwd", "url_not_allowed", "file: URLs are not accepted"),
        ("ftp://example.com/a.png", "url_not_allowed", "ftp: URLs"),
        ("gopher://example.com/", "url_not_allowed", "gopher: URLs"),
        ("/etc/passwd", "url_not_allowed", "not a URL"),
        ("C:\\images\\cat.png", "url_not_allowed", "c: URLs"),
        ("cat.png", "url_not_allowed", "not a URL"),
    ],
)
async def test_bad_input_gets_a_clear_400(
    preparer: ImagePreparer, url: str, code: str, words: str
) -> None:
    message = await rejected(preparer, url, code)
    assert words in message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"])
async def test_truncated_images_are_refused(preparer: ImagePreparer, fmt: str) -> None:
    data = encode(marked(1000, 800).convert("RGB"), fmt)
    message = await rejected(preparer, data_url(data[: len(data) // 2]), "invalid_image")
    assert "truncated or corrupt" in message or "not a valid" in message


# -- limits -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        (100_000, 100_000),  # 10 G pixels: past Pillow's own error limit
        (12_000, 10_000),  # 120 M: Pillow only warns (an error under pytest's warning filter)
        (10_000, 6_000),  # 60 M: Pillow is silent; the gateway's 50 M limit catches it
    ],
)
async def test_decompression_bombs_are_refused_before_decoding(
    preparer: ImagePreparer, size: tuple[int, int]
) -> None:
    bomb = png_header_only(*size)
    assert len(bomb) < 100
    message = await rejected(preparer, data_url(bomb), "image_too_large")
    assert "pixels" in message


def test_pillow_warning_is_handled_when_warnings_are_not_errors() -> None:
    # In production the DecompressionBombWarning is only a warning: the gateway's own check
    # must still refuse the image after Image.open() returned it.
    options = images.ImageOptions(
        max_bytes=1 << 20, max_pixels=50_000_000, max_side=768, jpeg_quality=90
    )
    with (
        pytest.warns(Image.DecompressionBombWarning),
        pytest.raises(images.ImageRejected) as caught,
    ):
        images.prepare_image_bytes(png_header_only(12_000, 10_000), options)
    assert caught.value.code == "image_too_large"
    assert "12000x10000" in caught.value.message


async def test_pixel_and_byte_limits_come_from_settings() -> None:
    small, fetcher = make_preparer(max_image_pixels=10_000, max_image_bytes=2_000, media_workers=1)
    try:
        big_pixels = data_url(encode(Image.new("L", (200, 200)), "PNG"))  # tiny file, 40 K px
        message = await rejected(small, big_pixels, "image_too_large")
        assert "200x200" in message
        big_file = data_url(encode(Image.effect_noise((80, 80), 50), "PNG"))
        message = await rejected(small, big_file, "image_too_large")
        assert "2000 bytes" in message
        huge_string = "data:image/png;base64," + "A" * 100_000  # refused without decoding
        await rejected(small, huge_string, "image_too_large")
    finally:
        small.close()
        await fetcher.aclose()


# -- the cache --------------------------------------------------------------------------------


async def test_a_repeated_image_comes_from_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    cached, fetcher = make_preparer(media_workers=1)
    try:
        url = data_url(encode(marked(2000, 1500), "JPEG"))
        first = await cached.prepare(url, param=PARAM)

        async def no_pool(*args: object) -> str:
            raise AssertionError("decoded again")

        monkeypatch.setattr(cached, "_run", no_pool)
        again = "".join([url[:10], url[10:]])  # equal, but a new string, as from a new request
        start = time.perf_counter()
        assert await cached.prepare(again, param=PARAM) == first
        assert time.perf_counter() - start < 0.05
    finally:
        cached.close()
        await fetcher.aclose()


def test_prepared_cache_is_a_bounded_lru_with_lifetimes(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    cache = PreparedCache(2)
    cache.put("a", "A")
    cache.put("b", "B", ttl=10)
    assert cache.get("a") == "A"  # a is now the most recent
    cache.put("c", "C")
    assert cache.get("b") is None  # least recently used went
    assert len(cache) == 2
    cache.put("d", "D", ttl=10)
    assert cache.get("d") == "D"
    now[0] += 11
    assert cache.get("d") is None  # expired
    cache.put("e", "E", ttl=0)
    assert cache.get("e") is None  # a zero lifetime is not stored
    off = PreparedCache(0)
    off.put("a", "A")
    assert off.get("a") is None


# -- fetched images -----------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    with serve() as served:
        yield served


async def test_fetched_images_are_prepared_and_cached_by_url(
    server: tuple[str, ServerState],
) -> None:
    base, state = server
    photo = encode(marked(1600, 1200), "JPEG")
    state.routes["/photo.jpg"] = static(photo, "image/jpeg")
    state.routes["/copy.jpg"] = static(photo, "application/octet-stream")  # wrong type: sniffed
    state.routes["/no-store.jpg"] = static(photo, "image/jpeg", Cache_Control="no-store")
    remote, fetcher = make_preparer(media_workers=1)
    try:
        first = await remote.prepare(base + "/photo.jpg", param=PARAM)
        image = decode_data_url(first)
        assert image.size == (768, 576)
        assert red_corner(image) == "tl"
        assert await remote.prepare(base + "/photo.jpg", param=PARAM) == first
        assert await remote.prepare(base + "/copy.jpg", param=PARAM) == first
        assert await remote.prepare(base + "/no-store.jpg", param=PARAM) == first
        assert await remote.prepare(base + "/no-store.jpg", param=PARAM) == first
        paths = [path for path, _ in state.requests]
        # Fetched once by URL; a no-store response is fetched every time.
        assert paths == ["/photo.jpg", "/copy.jpg", "/no-store.jpg", "/no-store.jpg"]
    finally:
        remote.close()
        await fetcher.aclose()


async def test_fetched_non_images_name_what_came_back(server: tuple[str, ServerState]) -> None:
    base, state = server
    state.routes["/page"] = static(b"<html>login</html>", "text/html")
    state.routes["/big.png"] = static(
        encode(Image.effect_noise((300, 300), 80), "PNG"), "image/png"
    )
    remote, fetcher = make_preparer(media_workers=1, max_image_bytes=10_000)
    try:
        message = await rejected(remote, base + "/page", "invalid_image")
        assert "returned text/html, not an image" in message
        message = await rejected(remote, base + "/big.png", "image_too_large")
        assert "10000 bytes" in message
        message = await rejected(remote, "http://169.254.169.254/latest/", "url_not_allowed")
        assert "link-local" in message
    finally:
        remote.close()
        await fetcher.aclose()


# -- the worker pool ----------------------------------------------------------------------------


async def test_a_crashed_worker_is_replaced() -> None:
    crashing, fetcher = make_preparer(media_workers=1)
    try:
        url = data_url(encode(marked(400, 300), "PNG"))
        await crashing.prepare(url, param=PARAM)
        dying = crashing._pool.submit(os._exit, 3)  # what a segfaulting decoder does
        with pytest.raises(BrokenProcessPool):
            dying.result(timeout=10)
        image = decode_data_url(await crashing.prepare(url + "", param=PARAM))
        assert image.size == (400, 300)
    finally:
        crashing.close()
        await fetcher.aclose()


class _AlwaysBroken(concurrent.futures.Executor):
    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        raise BrokenProcessPool("worker died")


async def test_an_image_that_kills_workers_gets_a_400() -> None:
    settings = Settings(image_cache_entries=0)
    fetcher = MediaFetcher(settings)
    broken = ImagePreparer(settings, fetcher, executor=_AlwaysBroken())
    try:
        message = await rejected(broken, data_url(encode(marked(40, 30), "PNG")), "invalid_image")
        assert "decoder failed" in message
    finally:
        broken.close()
        await fetcher.aclose()


# -- sniffing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG"),
        (b"GIF89a\x01\x00", "GIF"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"BM" + b"\x00" * 30, "BMP"),
        (b"II*\x00\x08\x00\x00\x00", "TIFF"),
        (b"MM\x00*\x00\x00\x00\x08", "TIFF"),
        (b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heic", "HEIF"),
        (b"\x00\x00\x00\x20ftypavif\x00\x00\x00\x00avifmif1miafMA1B", "AVIF"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1avif", "AVIF"),
        (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00isommp42", None),  # a video
        (b"%PDF-1.7", None),
        (b"%!PS-Adobe-3.0 EPSF-3.0", None),  # EPS would run Ghostscript: never opened
        (b"", None),
    ],
)
def test_sniff_format(head: bytes, fmt: str | None) -> None:
    assert sniff_format(head) == fmt


async def test_warm_workers_make_the_first_image_cost_what_the_tenth_does() -> None:
    warmed, fetcher = make_preparer(image_cache_entries=0, media_workers=2)
    try:
        started = time.perf_counter()
        await warmed.warm()
        warm_up = time.perf_counter() - started
        url = data_url(encode(marked(640, 480), "PNG"))
        costs = []
        for _ in range(10):
            started = time.perf_counter()
            await warmed.prepare(url, param="image")
            costs.append(time.perf_counter() - started)
        # Starting a worker (spawn, import Pillow) is the warm-up's; the first image pays none.
        assert costs[0] < 3 * sorted(costs)[5] + 0.05, (warm_up, costs)
    finally:
        warmed.close()
        await fetcher.aclose()
