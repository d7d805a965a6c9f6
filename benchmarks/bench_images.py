"""Benchmark of the image pipeline (`images.ImagePreparer`); not a test.

Measures what issue 3 asks for: the median time to prepare a 12-megapixel JPEG, a 4K PNG and a
1 MB WebP; a cache hit; and the worst event-loop stall seen by a concurrent ticker (standing in
for another request's text stream) while 8 large images are prepared. It also compares the worker
pool the gateway uses (processes) with threads and with no pool at all.

Goals: 12 MP JPEG < 60 ms on one core, cache hit < 1 ms, no stall > 20 ms.

    taskset -c 1 .venv/bin/python benchmarks/bench_images.py --only timings   # one core
    .venv/bin/python benchmarks/bench_images.py --only stall                   # both cores
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import functools
import io
import itertools
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.media.fetch import MediaFetcher
from gateway.media.images import ImagePreparer, prepare_payload
from gateway.settings import Settings

CACHE_DIR = Path(os.environ.get("BENCH_IMAGES_CACHE", "/tmp/bench_images_cache"))  # noqa: S108


# -- test images, made once and kept in CACHE_DIR ---------------------------------------------


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """Something with the statistics of a photo: smooth light, edges, fine texture."""
    base = Image.merge(
        "RGB",
        (
            Image.radial_gradient("L").resize((width, height)),
            Image.linear_gradient("L").resize((width, height)).rotate(90, expand=False),
            Image.linear_gradient("L").resize((width, height)),
        ),
    )
    draw = ImageDraw.Draw(base)
    step = max(width, height) // 12
    for i in range(0, 40):
        x = (i * 7919 * (seed + 1)) % width
        y = (i * 104729 * (seed + 3)) % height
        colour = ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)
        draw.ellipse((x, y, x + step, y + step * 2 // 3), fill=colour)
    # Fine grain in about the amount a phone sensor leaves: a 12 MP JPEG at quality 92 comes
    # out near 3.5 MB, like a phone's.
    texture = Image.effect_noise((width, height), 28).filter(ImageFilter.GaussianBlur(0.6))
    return Image.blend(base, Image.merge("RGB", (texture, texture, texture)), 0.4)


def _screenshot(width: int, height: int) -> Image.Image:
    """A 4K screen: flat panels, lines of text, one photo inset (what 4K PNGs usually are)."""
    image = Image.new("RGB", (width, height), (246, 247, 249))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width, 90), fill=(32, 33, 36))
    draw.rectangle((0, 90, 420, height), fill=(232, 234, 237))
    for row in range(120, height - 40, 34):
        draw.text(
            (460, row),
            "The quick brown fox jumps over the lazy dog. 0123456789 " * 4,
            fill=(30, 30, 30),
        )
    image.paste(_photo(1600, 900, 5), (width - 1700, 300))
    return image


def _encoded(name: str, make: Callable[[], bytes]) -> bytes:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / name
    if not path.exists():
        path.write_bytes(make())
    return path.read_bytes()


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _webp_near_1mb() -> bytes:
    photo = _photo(2400, 1600, 9)
    for quality in (95, 90, 85, 80, 75, 70, 60, 50):
        data = _save(photo, "WEBP", quality=quality)
        if len(data) <= 1_100_000:
            return data
    return data


def load_images() -> dict[str, bytes]:
    return {
        "12 MP JPEG (4000x3000)": _encoded(
            "photo12mp.jpg", lambda: _save(_photo(4000, 3000, 1), "JPEG", quality=92)
        ),
        "4K PNG (3840x2160)": _encoded(
            "screen4k.png", lambda: _save(_screenshot(3840, 2160), "PNG")
        ),
        "~1 MB WebP (2400x1600)": _encoded("photo.webp", _webp_near_1mb),
        "small JPEG (1024x768)": _encoded(
            "small.jpg", lambda: _save(_photo(1024, 768, 2), "JPEG", quality=85)
        ),
    }


def data_url(data: bytes) -> str:
    return "data:image/unknown;base64," + base64.b64encode(data).decode("ascii")


# -- measurements ---------------------------------------------------------------------------


async def _median_ms(
    run: Callable[[str], Awaitable[object]], url: str, repeats: int
) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        # A new str each time, as each request parses its own body: Python caches a string's
        # hash on the object, and the cache keys data: URLs by that hash.
        fresh = "".join((url[:5], url[5:]))
        start = time.perf_counter()
        await run(fresh)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


async def timings(images: dict[str, bytes], repeats: int) -> None:
    settings = Settings(image_cache_entries=0, media_workers=1)
    fetcher = MediaFetcher(settings)
    preparer = ImagePreparer(settings, fetcher)
    print(f"prepare (cache off), median / best of {repeats}:")
    for name, data in images.items():
        url = data_url(data)
        await preparer.prepare(url, param="bench")  # warm: plugin import, first-use costs
        median, best = await _median_ms(lambda u: preparer.prepare(u, param="bench"), url, repeats)
        print(f"  {name:<26} {len(data) / 1e6:6.2f} MB  {median:7.1f} ms  (best {best:.1f})")

    cached = ImagePreparer(Settings(media_workers=1), fetcher)
    print(f"cache hit, median / best of {repeats * 10}:")
    for name, data in images.items():
        url = data_url(data)
        await cached.prepare(url, param="bench")
        median, best = await _median_ms(
            lambda u: cached.prepare(u, param="bench"), url, repeats * 10
        )
        print(f"  {name:<26} {len(url) / 1e6:6.2f} MB URL  {median:7.3f} ms  (best {best:.3f})")
    preparer.close()
    cached.close()
    await fetcher.aclose()


async def _ticker(stop: anyio.Event, period: float, worst: list[float]) -> None:
    """Wakes every `period` like a stream sending tokens; records how late each wake-up is."""
    while not stop.is_set():
        start = time.perf_counter()
        await anyio.sleep(period)
        worst.append((time.perf_counter() - start - period) * 1000)


async def stall(images: dict[str, bytes], count: int, rounds: int) -> None:
    big = [images[name] for name in list(images)[:3]]  # 12 MP JPEG, 4K PNG, 1 MB WebP
    urls = [data_url(big[i % len(big)]) for i in range(count)]
    settings = Settings(image_cache_entries=0)
    fetcher = MediaFetcher(settings)
    preparer = ImagePreparer(settings, fetcher)
    threads = concurrent.futures.ThreadPoolExecutor(preparer.workers)
    threaded = ImagePreparer(settings, fetcher, executor=threads)
    small = data_url(images["small JPEG (1024x768)"])
    for warm in (preparer, threaded):  # start every worker first: start-up is not the question
        async with anyio.create_task_group() as group:
            for _ in range(preparer.workers * 2):
                group.start_soon(functools.partial(warm.prepare, small, param="bench"))

    async def with_processes(url: str) -> object:
        return await preparer.prepare(url, param="bench")

    async def with_threads(url: str) -> object:
        return await threaded.prepare(url, param="bench")

    async def on_the_loop(url: str) -> object:
        return prepare_payload(url[url.index(",") + 1 :].encode(), "base64", preparer.options)

    print(
        f"{count} large images at once (12 MP JPEG, 4K PNG, 1 MB WebP in turn), {rounds} rounds;"
        f" {preparer.workers} workers, {os.cpu_count()} CPUs, affinity"
        f" {sorted(os.sched_getaffinity(0))}; a ticker wakes every 5 ms:"
    )
    for (label, run), gap in itertools.product(
        (
            ("processes (the gateway's pool)", with_processes),
            ("threads", with_threads),
            ("no pool: on the event loop", on_the_loop),
        ),
        (0.0, 0.01),
    ):
        lateness: list[float] = []
        walls: list[float] = []
        worst: list[float] = []
        for _ in range(1 if run is on_the_loop else rounds):
            fresh = ["".join((url[:5], url[5:])) for url in urls]  # as if parsed from new bodies
            ticks: list[float] = []
            stop = anyio.Event()
            async with anyio.create_task_group() as group:
                group.start_soon(_ticker, stop, 0.005, ticks)
                await anyio.sleep(0.05)
                start = time.perf_counter()
                async with anyio.create_task_group() as work:
                    for url in fresh:
                        work.start_soon(run, url)
                        # 0: all in the same loop iteration (the worst case); 10 ms: requests
                        # arriving apart, as separate clients' do.
                        await anyio.sleep(gap)
                walls.append((time.perf_counter() - start) * 1000)
                stop.set()
            lateness += ticks
            worst.append(max(ticks))
        lateness.sort()
        p99 = lateness[int(len(lateness) * 0.99) - 1]
        arrival = "at once" if gap == 0 else f"{gap * 1000:.0f} ms apart"
        print(
            f"  {label:<30} {arrival:<12} all done in {statistics.median(walls):6.0f} ms (median)"
            f"   worst stall per round {', '.join(f'{w:.1f}' for w in worst)} ms"
            f"   p99 {p99:4.1f} ms"
        )
    preparer.close()
    threaded.close()
    threads.shutdown()
    await fetcher.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("timings", "stall"), default=None)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--images", type=int, default=8, help="images prepared at once (stall)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the stall test")
    args = parser.parse_args(argv)
    images = load_images()
    if args.only in (None, "timings"):
        anyio.run(timings, images, args.repeats)
    if args.only in (None, "stall"):
        anyio.run(stall, images, args.images, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
