"""The playground in a real browser: Debian's Chromium, headless, driven by Playwright for Python,
against the real gateway (uvicorn on a real port) in front of the fake SGLang.

Each test opens the page in a fresh browser context and asserts on both ends: what the page
shows, and what the fake SGLang received (`fake.chat_requests`), or the upstream connection it
saw closed. A fake microphone (`--use-file-for-fake-audio-capture`) plays a 440 Hz tone made
here, so a recording can be traced through the page's WAV encoder and the gateway to SGLang.
Every test leaves a screenshot in `PLAYGROUND_ARTIFACTS` (default test-artifacts/playground/),
and fails if the page threw, broke its Content-Security-Policy or called any other origin.

Without Playwright or Chromium the tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import audio_factory
import image_factory
import numpy as np
import pytest
from conftest import MODEL, ServerThread, eventually
from fake_sglang import FakeSGLang
from PIL import Image

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Request

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = Path(os.environ.get("PLAYGROUND_ARTIFACTS") or ROOT / "test-artifacts" / "playground")
CHROMIUM = os.environ.get("PLAYGROUND_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Without these, Chromium reaches out to Google's services at start-up and can stall offline.
QUIET_CHROMIUM = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MICROPHONE_HZ = 440.0
KEY = "sk-playground-browser-0123456789"
TIMEOUT_MS = 20_000  # two shared cores: generous, since a slow pass is not a failure here
PAGE_WEIGHT_BUDGET = 40_000  # bytes on the wire for the page and its files, first load


def _missing(message: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: .ci/run must install it)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def fake_microphone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("microphone") / "tone.wav"
    samples = audio_factory.tone(4.0, freq=MICROPHONE_HZ, rate=48_000, amp=0.4)
    path.write_bytes(audio_factory.encode(samples, "wav", rate=48_000))
    return path


@pytest.fixture(scope="module")
def browser(fake_microphone: Path) -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -r requirements-dev.txt)")
    if not Path(CHROMIUM).is_file():
        _missing(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        # Playwright gives every launch a fresh, temporary --user-data-dir.
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                *QUIET_CHROMIUM,
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={fake_microphone}",
            ],
        )
        yield launched
        launched.close()


@dataclass
class Tab:
    """One page in its own browser context, and everything it did."""

    name: str
    server: ServerThread
    context: BrowserContext
    page: Page
    requests: list[Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, path: str = "/") -> None:
        self.page.goto(self.server.url + path)
        self.page.wait_for_selector("html[data-ready=true]")

    def screenshot(self, moment: str) -> Path:
        """A screenshot of this moment of the test, beside the one taken at its end."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.name}--{moment}.png"
        self.page.screenshot(path=path)
        return path

    def wait_for_model(self) -> None:
        self.expect("#model").to_have_text(MODEL, timeout=TIMEOUT_MS)

    def expect(self, selector: str) -> Any:
        from playwright.sync_api import expect

        return expect(self.page.locator(selector))

    def send(self, text: str) -> None:
        self.page.fill("#prompt", text)
        self.page.click("#send")

    @property
    def reply(self) -> Any:
        return self.page.locator(".turn.assistant").last

    def wait_for_reply(self, status: str = "done") -> str:
        from playwright.sync_api import expect

        expect(self.reply).to_have_attribute("data-status", status, timeout=TIMEOUT_MS)
        return str(self.reply.locator(".content").inner_text())

    def chat_posts(self) -> list[dict[str, Any]]:
        """The bodies of the chat requests the page sent, as the page sent them."""
        return [
            r.post_data_json
            for r in self.requests
            if r.method == "POST" and r.url.endswith("/v1/chat/completions")
        ]


@pytest.fixture
def open_tab(
    browser: Browser, request: pytest.FixtureRequest
) -> Iterator[Callable[[ServerThread], Tab]]:
    tabs: list[Tab] = []

    def open_tab(server: ServerThread) -> Tab:
        context = browser.new_context(viewport={"width": 1100, "height": 760})
        context.grant_permissions(["microphone", "clipboard-read", "clipboard-write"])
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        name = re.sub(r"[^\w.-]+", "_", request.node.name) + (f"-{len(tabs)}" if tabs else "")
        tab = Tab(name, server, context, page)
        page.on("request", lambda sent: tab.requests.append(sent))
        page.on("pageerror", lambda error: tab.errors.append(f"uncaught: {error}"))
        page.on(
            "console",
            lambda message: (
                tab.errors.append(f"CSP: {message.text}")
                if "Content Security Policy" in message.text
                else None
            ),
        )
        tabs.append(tab)
        return tab

    yield open_tab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for tab in tabs:
        tab.page.screenshot(path=ARTIFACTS / f"{tab.name}.png")
        outside = [
            r.url
            for r in tab.requests
            if not r.url.startswith((tab.server.url + "/", "data:", "blob:"))
        ]
        tab.context.close()
        assert not tab.errors, tab.errors
        assert not outside, f"the page called another origin: {outside}"


@pytest.fixture
def tab(open_tab: Callable[[ServerThread], Tab], gateway: ServerThread) -> Tab:
    """The page on the default gateway (no keys), loaded, with the model known."""
    opened = open_tab(gateway)
    opened.open()
    opened.wait_for_model()
    return opened


# --- chat ------------------------------------------------------------------------------------


def test_a_reply_streams_in_token_by_token(tab: Tab, fake: FakeSGLang) -> None:
    fake.reply_tokens = ["Streaming", " one", " token", " at", " a", " time", "."]
    fake.token_delay = 0.25
    tab.expect("#backend").to_have_text("ready")
    tab.send("Hello, Gemma")
    # Part of the reply is on screen while the rest is still being generated.
    tab.expect(".turn.assistant .content").to_contain_text("Streaming one")
    tab.expect(".turn.assistant").to_have_attribute("data-status", "streaming")
    assert "a time." not in tab.reply.inner_text()
    tab.expect("#stop").to_be_visible()
    tab.screenshot("streaming")
    assert tab.wait_for_reply() == "Streaming one token at a time."
    tab.expect(".turn.assistant .meta").to_contain_text("completion tokens")
    tab.expect(".turn.user .content").to_have_text("Hello, Gemma")
    tab.expect(".turn.assistant .who").to_have_text(MODEL)
    tab.expect("#send").to_be_visible()
    (sent,) = tab.chat_posts()
    assert sent["stream"] is True
    assert sent["model"] == MODEL
    assert sent["messages"] == [{"role": "user", "content": "Hello, Gemma"}]
    forwarded = fake.chat_requests[-1]
    assert forwarded["messages"] == [{"role": "user", "content": "Hello, Gemma"}]


def test_settings_are_sent_and_kept(tab: Tab, fake: FakeSGLang) -> None:
    fake.reply_tokens = ["one ", "two ", "three ", "four ", "five ", "six"]
    tab.page.click("#settings-toggle")
    tab.page.fill("#system-prompt", "Answer in one sentence.")
    tab.page.fill("#temperature", "0.3")
    tab.page.fill("#max-tokens", "4")
    tab.send("Count")
    assert tab.wait_for_reply() == "one two three four"
    tab.expect(".turn.assistant .meta").to_contain_text("stopped at max tokens")
    (sent,) = tab.chat_posts()
    assert sent["messages"][0] == {"role": "system", "content": "Answer in one sentence."}
    assert sent["temperature"] == 0.3
    assert sent["max_completion_tokens"] == 4
    forwarded = fake.chat_requests[-1]
    # Gemma 3n's template has no system turn: the gateway folds it into the first user turn.
    assert forwarded["messages"] == [
        {"role": "user", "content": "Answer in one sentence.\n\nCount"}
    ]
    assert forwarded["temperature"] == 0.3
    assert forwarded["max_tokens"] == 4
    tab.page.reload()
    tab.page.click("#settings-toggle")
    tab.expect("#system-prompt").to_have_value("Answer in one sentence.")
    tab.expect("#temperature").to_have_value("0.3")
    tab.expect("#max-tokens").to_have_value("4")


def test_the_conversation_is_sent_back_each_turn(tab: Tab, fake: FakeSGLang) -> None:
    fake.reply_tokens = ["First", " answer."]
    tab.send("First question")
    tab.wait_for_reply()
    fake.reply_tokens = ["Second", " answer."]
    tab.page.fill("#prompt", "Second question")
    tab.page.press("#prompt", "Enter")  # Enter sends; Shift+Enter would be a new line
    assert tab.wait_for_reply() == "Second answer."
    assert tab.chat_posts()[-1]["messages"] == [
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "Second question"},
    ]


def test_regenerate_replaces_the_last_reply_and_clear_forgets(tab: Tab, fake: FakeSGLang) -> None:
    fake.reply_tokens = ["Take", " one."]
    tab.send("Say something")
    tab.wait_for_reply()
    fake.reply_tokens = ["Take", " two."]
    tab.page.click("#regenerate")
    assert tab.wait_for_reply() == "Take two."
    tab.expect(".turn.assistant").to_have_count(1)
    first, second = tab.chat_posts()
    assert first["messages"] == second["messages"] == [{"role": "user", "content": "Say something"}]
    tab.page.click("#clear")
    tab.expect(".turn").to_have_count(0)
    tab.expect("#empty").to_be_visible()
    tab.expect("#regenerate").to_be_disabled()
    tab.send("Fresh start")
    tab.wait_for_reply()
    assert tab.chat_posts()[-1]["messages"] == [{"role": "user", "content": "Fresh start"}]


def test_stop_aborts_the_request_and_the_upstream(tab: Tab, fake: FakeSGLang) -> None:
    fake.reply_tokens = [f"word{i} " for i in range(400)]
    fake.token_delay = 0.05
    tab.send("Talk for a long time")
    tab.expect(".turn.assistant .content").to_contain_text("word3")
    tab.page.click("#stop")
    assert fake.wait_for_disconnect(timeout=5.0), "SGLang never saw its connection closed"
    assert eventually(lambda: fake.active_chat_requests == 0, timeout=5.0)
    text = tab.wait_for_reply("stopped")
    tab.screenshot("stopped")
    assert "word3" in text and "word399" not in text
    tab.expect(".turn.assistant .meta").to_contain_text("stopped")
    tab.expect("#send").to_be_visible()
    tab.expect("#stop").to_be_hidden()
    tab.expect(".turn.assistant .error").to_have_count(0)  # stopping is not an error
    # The partial reply is part of the conversation from now on.
    fake.token_delay = 0.0
    fake.reply_tokens = ["ok"]
    tab.send("Go on")
    tab.wait_for_reply()
    history = tab.chat_posts()[-1]["messages"]
    assert history[1]["role"] == "assistant" and history[1]["content"].startswith("word0 word1")


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "message", "details"),
    [
        ("error_mid_stream", "failed while generating", "during the stream · server_error"),
        ("context_overflow", "context length", "HTTP 400 · invalid_request_error"),
        ("overload", "overloaded", "HTTP 503 · server_error"),
    ],
)
def test_the_gateways_errors_are_shown(
    tab: Tab, fake: FakeSGLang, fault: str, message: str, details: str
) -> None:
    fake.fault = fault
    tab.send("Hello")
    tab.wait_for_reply("failed")
    tab.expect(".turn.assistant .error-message").to_contain_text(message)
    tab.expect(".turn.assistant .error-details").to_contain_text(details)
    tab.expect(".turn.assistant .error").to_have_attribute("role", "alert")
    tab.screenshot("error")
    # The failed turn is not sent back as the model's answer; regenerate retries it.
    fake.fault = None
    tab.page.click("#regenerate")
    tab.wait_for_reply()
    assert tab.chat_posts()[-1]["messages"] == [{"role": "user", "content": "Hello"}]


def test_backend_readiness_is_shown_and_refreshed(tab: Tab, fake: FakeSGLang) -> None:
    fake.state = "loading"
    tab.expect("#backend").to_have_text("loading", timeout=TIMEOUT_MS)  # the periodic refresh
    tab.expect("#backend").to_have_attribute("data-state", "loading")
    fake.state = "ready"
    tab.expect("#backend").to_have_text("ready", timeout=TIMEOUT_MS)


# --- keys ------------------------------------------------------------------------------------


def test_keys_a_wrong_key_shows_the_error_and_the_right_one_works(
    open_tab: Callable[[ServerThread], Tab],
    make_gateway: Callable[..., ServerThread],
    fake: FakeSGLang,
) -> None:
    server = make_gateway(api_keys=KEY)
    tab = open_tab(server)
    tab.open()  # the page itself loads without a key
    tab.expect("#model").to_have_text("API key needed")
    tab.expect("#settings").to_be_visible()
    tab.expect("#api-key").to_have_class(re.compile(r"\bwanted\b"))
    tab.expect("#key-hint").to_contain_text("You didn't provide an API key")
    tab.screenshot("no-key")
    tab.page.fill("#api-key", "sk-wrong")
    tab.expect("#key-hint").to_contain_text("Incorrect API key provided")
    tab.send("Hello")
    tab.wait_for_reply("failed")
    tab.expect(".turn.assistant .error-message").to_contain_text("Incorrect API key provided")
    tab.expect(".turn.assistant .error-details").to_contain_text("HTTP 401")
    tab.screenshot("wrong-key")
    assert fake.chat_requests == []
    tab.page.fill("#api-key", KEY)
    tab.wait_for_model()
    tab.expect("#key-hint").to_have_text("")
    tab.page.click("#regenerate")
    tab.wait_for_reply()
    tab.screenshot("right-key")
    assert len(fake.chat_requests) == 1
    # Kept in this browser: a reload finds the key and uses it.
    tab.page.reload()
    tab.wait_for_model()
    tab.expect("#api-key").to_have_value(KEY)
    stored = tab.page.evaluate("localStorage.getItem('gemma3n-playground.api-key')")
    assert stored == KEY
    api = [r for r in tab.requests if "/v1/" in r.url]
    assert api and all(r.url.startswith(server.url + "/") for r in api)
    for r in api:
        assert r.headers.get("authorization") in (None, "Bearer sk-wrong", f"Bearer {KEY}")
        assert KEY not in r.url and "sk-wrong" not in r.url
    last = [r for r in api if r.url.endswith("/v1/chat/completions")][-1]
    assert last.headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in (last.post_data or "")  # the key travels in the header only
    page_loads = [r for r in tab.requests if "/v1/" not in r.url and "/health" not in r.url]
    assert page_loads and all("authorization" not in r.headers for r in page_loads)


def test_keys_off_no_key_field_is_needed(tab: Tab) -> None:
    tab.expect("#settings").to_be_hidden()
    tab.send("Hi")
    tab.wait_for_reply()
    assert all("authorization" not in r.headers for r in tab.requests)


# --- images ----------------------------------------------------------------------------------


def _png(image: Image.Image) -> bytes:
    return image_factory.encode(image, "PNG")


def _data_transfer_event(tab: Tab, kind: str, name: str, data: bytes, mime: str) -> None:
    """Paste or drop a file, as the browser delivers one: a DataTransfer on a real event."""
    tab.page.evaluate(
        """([kind, name, b64, mime]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: mime }));
            const target = document.querySelector("#prompt");
            if (kind === "paste") {
                target.dispatchEvent(new ClipboardEvent("paste",
                    { clipboardData: transfer, bubbles: true, cancelable: true }));
            } else {
                for (const type of ["dragenter", "dragover", "drop"]) {
                    target.dispatchEvent(new DragEvent(type,
                        { dataTransfer: transfer, bubbles: true, cancelable: true }));
                }
            }
        }""",
        [kind, name, base64.b64encode(data).decode(), mime],
    )


def test_images_from_picker_paste_and_drop_are_previewed_and_forwarded(
    tab: Tab, fake: FakeSGLang
) -> None:
    picked = _png(image_factory.marked(96, 64))
    pasted = _png(Image.new("RGB", (40, 40), image_factory.RED))
    dropped = _png(Image.new("RGB", (50, 30), image_factory.BLUE))
    tab.page.set_input_files(
        "#image-input", files=[{"name": "marked.png", "mimeType": "image/png", "buffer": picked}]
    )
    tab.expect(".chip.image").to_have_count(1)
    _data_transfer_event(tab, "paste", "pasted.png", pasted, "image/png")
    tab.expect(".chip.image").to_have_count(2)
    _data_transfer_event(tab, "drop", "dropped.png", dropped, "image/png")
    tab.expect(".chip.image").to_have_count(3)
    widths = tab.page.eval_on_selector_all(
        ".chip.image img", "images => images.map((img) => img.complete && img.naturalWidth)"
    )
    assert widths == [96, 40, 50]  # the previews really are the images
    tab.screenshot("attached")
    tab.send("What is in these pictures?")
    tab.wait_for_reply()
    tab.expect(".chip").to_have_count(0)  # attachments go with the turn that sent them
    tab.expect(".turn.user .media img").to_have_count(3)
    content = fake.chat_requests[-1]["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "What is in these pictures?"}
    images = [image_factory.decode_data_url(part["image_url"]["url"]) for part in content[1:]]
    assert [part["type"] for part in content[1:]] == ["image_url"] * 3
    assert [image.size for image in images] == [(96, 64), (40, 40), (50, 30)]
    marked = images[0].convert("RGB")
    assert _close(marked.getpixel((5, 5)), image_factory.RED)  # top-left stayed top-left
    assert _close(marked.getpixel((90, 60)), image_factory.BLUE)
    assert _close(images[1].convert("RGB").getpixel((20, 20)), image_factory.RED)
    assert _close(images[2].convert("RGB").getpixel((25, 15)), image_factory.BLUE)
    # What the page sent: data: URLs of the original files, nothing fetched from elsewhere.
    sent = tab.chat_posts()[-1]["messages"][0]["content"]
    assert base64.b64decode(sent[1]["image_url"]["url"].split(",", 1)[1]) == picked


def _close(pixel: Any, colour: tuple[int, int, int], tolerance: int = 24) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


def test_an_attachment_can_be_removed_before_sending(tab: Tab, fake: FakeSGLang) -> None:
    image = _png(image_factory.marked(32, 32))
    tab.page.set_input_files(
        "#image-input",
        files=[
            {"name": "a.png", "mimeType": "image/png", "buffer": image},
            {"name": "b.png", "mimeType": "image/png", "buffer": image},
        ],
    )
    tab.expect(".chip.image").to_have_count(2)
    tab.page.click(".chip.image .remove >> nth=0")
    tab.expect(".chip.image").to_have_count(1)
    tab.send("One image")
    tab.wait_for_reply()
    parts = fake.chat_requests[-1]["messages"][0]["content"]
    assert [part["type"] for part in parts] == ["text", "image_url"]


# --- audio -----------------------------------------------------------------------------------


def _wav_samples(data: bytes) -> tuple[int, int, np.ndarray]:
    with wave.open(io.BytesIO(data)) as wav:
        assert wav.getsampwidth() == 2
        frames = wav.readframes(wav.getnframes())
        return wav.getframerate(), wav.getnchannels(), np.frombuffer(frames, "<i2")


def _peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.argmax(spectrum) * rate / len(samples))


def test_the_microphone_records_and_the_model_receives_the_audio(
    tab: Tab, fake: FakeSGLang
) -> None:
    tab.page.click("#record")
    tab.expect("#record").to_have_attribute("aria-pressed", "true")
    tab.expect("#record").to_contain_text("0:01", timeout=TIMEOUT_MS)
    tab.screenshot("recording")
    tab.page.click("#record")
    tab.expect(".chip.audio figcaption").to_contain_text("WAV 16 kHz mono")
    tab.expect("#send").to_have_text("Send")  # the conversion has finished
    duration = tab.page.eval_on_selector(
        ".chip.audio audio",
        "a => new Promise((ok) => a.readyState ? ok(a.duration) "
        ": a.addEventListener('loadedmetadata', () => ok(a.duration)))",
    )
    assert duration >= 0.8  # the preview plays the WAV that is sent, with its length
    tab.screenshot("recorded")
    tab.send("What do you hear?")
    tab.wait_for_reply()
    tab.expect(".turn.user .media audio").to_have_count(1)
    # The page sent OpenAI's input_audio: 16 kHz mono 16-bit WAV of the fake microphone's tone.
    sent = tab.chat_posts()[-1]["messages"][0]["content"]
    assert [part["type"] for part in sent] == ["text", "input_audio"]
    assert sent[1]["input_audio"]["format"] == "wav"
    rate, channels, samples = _wav_samples(base64.b64decode(sent[1]["input_audio"]["data"]))
    assert (rate, channels) == (16_000, 1)
    assert len(samples) >= 16_000 * 0.8  # about a second or more was recorded
    assert abs(_peak_hz(samples, rate) - MICROPHONE_HZ) < 5
    assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 1000  # not silence
    # SGLang received it from the gateway as an audio part: the same tone.
    content = fake.chat_requests[-1]["messages"][0]["content"]
    audio = [part for part in content if part["type"] == "audio_url"]
    assert len(audio) == 1
    url = audio[0]["audio_url"]["url"]
    assert url.startswith("data:audio/wav;base64,")
    rate, channels, forwarded = _wav_samples(base64.b64decode(url.split(",", 1)[1]))
    assert (rate, channels) == (16_000, 1)
    assert abs(_peak_hz(forwarded, rate) - MICROPHONE_HZ) < 5


@pytest.mark.parametrize(
    ("fmt", "sent_format", "note"),
    [("flac", "wav", "WAV 16 kHz mono"), ("mp3", "mp3", "MP3, as it is")],
)
def test_an_audio_file_is_sent(
    tab: Tab, fake: FakeSGLang, fmt: str, sent_format: str, note: str
) -> None:
    tone = audio_factory.tone(1.5, freq=660.0, rate=44_100)
    data = audio_factory.encode(tone, fmt, rate=44_100)
    tab.page.set_input_files(
        "#audio-input", files=[{"name": f"tone.{fmt}", "mimeType": f"audio/{fmt}", "buffer": data}]
    )
    tab.expect(".chip.audio figcaption").to_contain_text(note)
    tab.expect("#send").to_have_text("Send")
    tab.send("Transcribe this")
    tab.wait_for_reply()
    sent = tab.chat_posts()[-1]["messages"][0]["content"][1]["input_audio"]
    assert sent["format"] == sent_format
    if sent_format == "wav":  # converted by the browser: 16 kHz mono, the same tone
        rate, channels, samples = _wav_samples(base64.b64decode(sent["data"]))
        assert (rate, channels) == (16_000, 1)
        assert abs(len(samples) / rate - 1.5) < 0.05
        assert abs(_peak_hz(samples, rate) - 660.0) < 5
    else:
        assert base64.b64decode(sent["data"]) == data
    content = fake.chat_requests[-1]["messages"][0]["content"]
    assert [part["type"] for part in content] == ["text", "audio_url"]


# --- Markdown, safely -------------------------------------------------------------------------

HOSTILE_REPLY = [
    "Here is **bold**, *italic* and `inline <b>code</b>`.\n\n",
    '<img src=x onerror="window.__pwned=1">',
    " and <script>window.__pwned=2</script>",
    ' and <a href="javascript:window.__pwned=3">a raw link</a>.\n\n',
    "- a [safe link](https://example.com/docs)\n",
    "- a [bad link](javascript:window.__pwned=4)\n",
    "- <iframe src=//evil.example></iframe>\n\n",
    "```python\n",
    "print('<img src=x onerror=alert(1)>')\n",
    "```\n",
]


def test_a_hostile_reply_is_rendered_as_text_not_html(tab: Tab, fake: FakeSGLang) -> None:
    fake.reply_tokens = HOSTILE_REPLY
    tab.send("Show me some HTML")
    tab.wait_for_reply()
    content = tab.reply.locator(".content")
    tags = content.evaluate("node => [...node.querySelectorAll('*')].map((e) => e.tagName)")
    allowed = {"P", "STRONG", "EM", "CODE", "UL", "LI", "A", "DIV", "SPAN", "BUTTON", "PRE"}
    assert set(tags) <= allowed, tags
    assert tab.page.evaluate("window.__pwned") is None
    text = content.inner_text()
    assert '<img src=x onerror="window.__pwned=1">' in text
    assert "<script>window.__pwned=2</script>" in text
    assert "[bad link](javascript:window.__pwned=4)" in text  # shown as written, not a link
    links = content.evaluate(
        "node => [...node.querySelectorAll('a')].map((a) => [a.href, a.rel, a.target, a.text])"
    )
    assert links == [["https://example.com/docs", "noopener noreferrer", "_blank", "safe link"]]
    code = content.locator("pre code")
    assert code.get_attribute("class") == "language-python"
    assert code.inner_text() == "print('<img src=x onerror=alert(1)>')"
    assert content.locator(".code-language").inner_text() == "python"
    inline = content.locator("p code").first
    assert inline.inner_text() == "inline <b>code</b>"
    # Every attribute on every element is one the renderer sets; no on* handlers, no style.
    attributes = content.evaluate(
        "node => [...node.querySelectorAll('*')].flatMap((e) => e.getAttributeNames())"
    )
    assert set(attributes) <= {"class", "href", "target", "rel", "type", "start"}, attributes


# The renderer's own cases, run in the page: Markdown -> the HTML it builds (read back).
MARKDOWN_CASES = [
    ("plain text", "<p>plain text</p>"),
    ("one\ntwo", "<p>one<br>two</p>"),
    ("para one\n\npara two", "<p>para one</p><p>para two</p>"),
    ("**bold** and __strong__", "<p><strong>bold</strong> and <strong>strong</strong></p>"),
    ("*em* and _em_ but snake_case_name", "<p><em>em</em> and <em>em</em> but snake_case_name</p>"),
    ("~~gone~~", "<p><del>gone</del></p>"),
    ("a `x < y` b", "<p>a <code>x &lt; y</code> b</p>"),
    ("`` a`b ``", "<p><code>a`b</code></p>"),
    (r"\*not em\*", "<p>*not em*</p>"),
    ("**unclosed", "<p>**unclosed</p>"),
    ("# Title", "<h1>Title</h1>"),
    ("### Third ###", "<h3>Third</h3>"),
    ("---", "<hr>"),
    ("> quoted\n> more", "<blockquote><p>quoted<br>more</p></blockquote>"),
    ("- a\n- b", "<ul><li>a</li><li>b</li></ul>"),
    ("* a\n* b", "<ul><li>a</li><li>b</li></ul>"),
    ("1. a\n2. b", "<ol><li>a</li><li>b</li></ol>"),
    ("3. c\n4. d", '<ol start="3"><li>c</li><li>d</li></ol>'),
    ("- a\n  - nested\n- b", "<ul><li>a<ul><li>nested</li></ul></li><li>b</li></ul>"),
    ("- a\n\n- b", "<ul><li><p>a</p></li><li><p>b</p></li></ul>"),
    ("Intro:\n- a\n- b", "<p>Intro:</p><ul><li>a</li><li>b</li></ul>"),
    (
        "| a | b |\n|:--|--:|\n| 1 | 2 |",
        '<div class="table"><table><thead><tr><th class="align-left">a</th>'
        '<th class="align-right">b</th></tr></thead><tbody><tr><td class="align-left">1</td>'
        '<td class="align-right">2</td></tr></tbody></table></div>',
    ),
    (
        "```js\nlet a = 1 < 2;\n```",
        '<div class="code"><div class="code-head"><span class="code-language">js</span>'
        '<button class="copy" type="button">Copy</button></div>'
        '<pre><code class="language-js">let a = 1 &lt; 2;</code></pre></div>',
    ),
    (
        "```\nstill streaming",  # an unclosed fence while the reply streams in
        '<div class="code"><div class="code-head"><span class="code-language">text</span>'
        '<button class="copy" type="button">Copy</button></div>'
        "<pre><code>still streaming</code></pre></div>",
    ),
    (
        '```py" onmouseover="x\ncode\n```',  # the info string cannot smuggle an attribute
        '<div class="code"><div class="code-head"><span class="code-language">py</span>'
        '<button class="copy" type="button">Copy</button></div>'
        '<pre><code class="language-py">code</code></pre></div>',
    ),
    (
        "see https://example.com/a_b.",
        '<p>see <a href="https://example.com/a_b" target="_blank" rel="noopener noreferrer">'
        "https://example.com/a_b</a>.</p>",
    ),
    (
        "<https://example.com>",
        '<p><a href="https://example.com/" target="_blank" rel="noopener noreferrer">'
        "https://example.com</a></p>",
    ),
    (
        "[**docs**](http://example.com/x)",
        '<p><a href="http://example.com/x" target="_blank" rel="noopener noreferrer">'
        "<strong>docs</strong></a></p>",
    ),
    ("[x](javascript:alert(1))", "<p>[x](javascript:alert(1))</p>"),
    ("[x](data:text/html,hi)", "<p>[x](data:text/html,hi)</p>"),
    ("[x](/relative)", "<p>[x](/relative)</p>"),
    ("<b>raw</b> &amp;", "<p>&lt;b&gt;raw&lt;/b&gt; &amp;amp;</p>"),
    ('"><svg onload=alert(1)>', '<p>"&gt;&lt;svg onload=alert(1)&gt;</p>'),
]


def test_the_markdown_renderer(tab: Tab) -> None:
    rendered = tab.page.evaluate(
        """async (cases) => {
            const { renderMarkdown } = await import("./playground/static/markdown.js");
            return cases.map((text) => {
                const box = document.createElement("div");
                box.append(renderMarkdown(text));
                return box.innerHTML;
            });
        }""",
        [text for text, _ in MARKDOWN_CASES],
    )
    for (text, expected), got in zip(MARKDOWN_CASES, rendered, strict=True):
        assert got == expected, text


def test_the_event_stream_parser(tab: Tab) -> None:
    """SSE as the HTML standard reads it, in chunks cut anywhere (the gateway's own framing)."""
    chunks = [
        ": a comment\n",
        'data: {"a":',
        " 1}\n\ndata:no-space\n\n",
        "event: ignored\ndata: first\ndata: second\n\n",
        "data: crlf\r",
        "\n\r\ndata: cr\r\r",
        "data: [DONE]\n\n",
        "data: cut off at the end",
    ]
    events = tab.page.evaluate(
        """async (chunks) => {
            const { serverSentData } = await import("./playground/static/api.js");
            const encoder = new TextEncoder();
            const stream = new ReadableStream({
                start(controller) {
                    for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
                    controller.close();
                },
            });
            const events = [];
            for await (const data of serverSentData(stream)) events.push(data);
            return events;
        }""",
        chunks,
    )
    assert events == ['{"a": 1}', "no-space", "first\nsecond", "crlf", "cr", "[DONE]"]


def test_the_wav_encoder_and_the_format_sniffer(tab: Tab) -> None:
    wav = tab.page.evaluate(
        """async () => {
            const { encodeWav } = await import("./playground/static/audio.js");
            const bytes = encodeWav(new Float32Array([0, 0.5, -0.5, 1, -1, 2, -2]), 16000);
            return btoa(String.fromCharCode(...bytes));
        }"""
    )
    rate, channels, samples = _wav_samples(base64.b64decode(wav))
    assert (rate, channels) == (16_000, 1)
    assert samples.tolist() == [0, 16383, -16384, 32767, -32768, 32767, -32768]
    tone = audio_factory.tone(0.5, rate=16_000)
    files = {fmt: audio_factory.encode(tone, fmt) for fmt in audio_factory.ENCODINGS}
    sniffed = tab.page.evaluate(
        """async (files) => {
            const { sniffFormat } = await import("./playground/static/audio.js");
            const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            return Object.fromEntries(
                Object.entries(files).map(([name, b64]) => [name, sniffFormat(bytes(b64))]));
        }""",
        {fmt: base64.b64encode(data[:64]).decode() for fmt, data in files.items()},
    )
    assert sniffed == {
        "wav": "wav",
        "mp3": "mp3",
        "flac": "flac",
        "ogg": "ogg",
        "opus": "ogg",  # Opus lives in an Ogg container
        "webm": "webm",
        "m4a": "m4a",
        "aac": "aac",
        "aiff": "aiff",
    }


# --- what the first load costs, and the README's screenshot ------------------------------------


def test_page_weight_on_first_load(
    open_tab: Callable[[ServerThread], Tab], gateway: ServerThread
) -> None:
    tab = open_tab(gateway)
    tab.open()
    tab.wait_for_model()
    tab.page.wait_for_load_state("networkidle")
    sizes = []
    for r in tab.requests:
        if not r.url.startswith(gateway.url):
            continue  # the empty data: favicon
        measured = r.sizes()
        path = r.url.removeprefix(gateway.url)
        sizes.append(
            {
                "path": path,
                "body_bytes": measured["responseBodySize"],
                "header_bytes": measured["responseHeadersSize"],
                "encoding": (
                    r.response().headers.get("content-encoding") if r.response() else None
                ),
            }
        )
    page = [s for s in sizes if s["path"] == "/" or s["path"].startswith("/playground/")]
    api = [s for s in sizes if s not in page]
    weight = {
        "page_body_bytes": sum(s["body_bytes"] for s in page),
        "page_bytes_with_headers": sum(s["body_bytes"] + s["header_bytes"] for s in page),
        "api_body_bytes": sum(s["body_bytes"] for s in api),
        "uncompressed_page_bytes": sum(
            len(p.read_bytes()) for p in (ROOT / "gateway/playground/static").iterdir()
        ),
        "requests": sizes,
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "page-weight.json").write_text(json.dumps(weight, indent=2))
    summary = {k: v for k, v in weight.items() if k != "requests"}
    print(f"\nplayground first load: {json.dumps(summary)}")
    assert {s["path"] for s in page} == {
        "/",
        "/playground/static/style.css",
        "/playground/static/app.js",
        "/playground/static/api.js",
        "/playground/static/audio.js",
        "/playground/static/markdown.js",
    }
    assert all(s["encoding"] == "gzip" for s in page if s["path"].endswith(".js"))
    assert 0 < weight["page_body_bytes"] < PAGE_WEIGHT_BUDGET
    # A second load revalidates the files (ETag): 304s without a body. (The document itself
    # may be reported as 200 on a reload, however it was revalidated.)
    tab.requests.clear()
    tab.page.reload()
    tab.wait_for_model()
    files = {s["path"] for s in page} - {"/"}
    again = [r for r in tab.requests if r.url.removeprefix(gateway.url) in files]
    statuses = {r.url: r.response().status for r in again}  # type: ignore[union-attr]
    assert len(statuses) == len(files) and set(statuses.values()) == {304}, statuses


def test_readme_screenshot_a_conversation_with_an_image(tab: Tab, fake: FakeSGLang) -> None:
    """The picture in the README: a question about an image and a Markdown answer."""
    fake.reply_tokens = [
        "The image is a **blue rectangle** with a red block in its top-left corner.\n\n",
        "- background: blue, `#1428c8`\n",
        "- corner block: red, a quarter of the width and height\n\n",
        "To make one like it:\n\n",
        "```python\n",
        "from PIL import Image\n\n",
        "image = Image.new('RGB', (400, 300), (20, 40, 200))\n",
        "image.paste((220, 30, 40), (0, 0, 100, 75))\n",
        "```\n",
    ]
    fake.token_delay = 0.01
    tab.page.set_input_files(
        "#image-input",
        files=[
            {
                "name": "marked.png",
                "mimeType": "image/png",
                "buffer": _png(image_factory.marked(400, 300)),
            }
        ],
    )
    tab.send("What is in this picture? Then show me how to draw it.")
    tab.wait_for_reply()
    tab.expect(".turn.assistant pre code").to_have_class("language-python")
    assert fake.chat_requests[-1]["messages"][0]["content"][1]["type"] == "image_url"
