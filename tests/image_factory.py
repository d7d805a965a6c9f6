"""Images made in the tests, in every format and mode the gateway accepts, plus hostile ones."""

from __future__ import annotations

import base64
import io
import struct
import zlib

from PIL import Image

RED = (220, 30, 40)
BLUE = (20, 40, 200)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def decode_data_url(url: str) -> Image.Image:
    """The image a prepared data: URL holds; it must be a JPEG data URL."""
    prefix = "data:image/jpeg;base64,"
    assert url.startswith(prefix), url[:40]
    image = Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :], validate=True)))
    assert image.format == "JPEG"
    image.load()
    return image


def marked(width: int, height: int) -> Image.Image:
    """Blue with a red block in the top-left corner: shows where the top-left went."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 4, height // 4))
    return image


def red_corner(image: Image.Image) -> str:
    """Which corner of `image` is red: "tl", "tr", "bl" or "br"."""
    width, height = image.size
    corners = {
        "tl": (width // 16, height // 16),
        "tr": (width - 1 - width // 16, height // 16),
        "bl": (width // 16, height - 1 - height // 16),
        "br": (width - 1 - width // 16, height - 1 - height // 16),
    }
    found = [name for name, xy in corners.items() if is_close(image.getpixel(xy), RED)]
    assert len(found) == 1, (found, [image.getpixel(xy) for xy in corners.values()])
    return found[0]


def is_close(pixel: object, expected: tuple[int, ...], tolerance: int = 24) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(int(a) - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def jpeg_with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=90, exif=exif.tobytes())


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels in a few dozen bytes (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def animated(fmt: str, colours: list[tuple[int, int, int]], size: tuple[int, int]) -> bytes:
    frames = [Image.new("RGB", size, colour) for colour in colours]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
