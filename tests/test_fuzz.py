"""Hostile input: the gateway's OpenAPI document fuzzed with schemathesis, then attacks by hand.

The fuzzer derives requests from `openapi.py`'s document for every operation, valid ones and (in
negative mode) invalid ones, and sends them over a real socket to the real app in front of
FakeSGLang, which answers every valid request with 200. So any 5xx is a gateway bug, and so is a
non-2xx body that is not OpenAI's ``{"error": {"message", "type", "param", "code"}}``, a stream
that does not end with ``[DONE]``, or any answer the document does not describe.
`FUZZ_MAX_EXAMPLES` (environment) widens the run; `pytest -s` prints what was sent and answered.

The hand-made cases are what a schema cannot express: nesting depth, a 100 MB body, a body that
trickles in (slow-loris), invalid UTF-8, non-finite and out-of-range numbers, and header injection
through `X-Request-ID` (raw sockets, since httpx refuses to send CR or LF in a header).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import select
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import audio_factory
import httpx
import pytest
import schemathesis
from conftest import MODEL, ServerThread, gateway_settings
from fake_sglang import FakeSGLang
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.transport.serialization import Binary

from app import create_app
from gateway.api.openapi import UNDESCRIBED, build_openapi
from gateway.settings import Settings

FUZZ_MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "100"))
MiB = 1024 * 1024
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
ERROR_KEYS = {"message", "type", "param", "code"}
# A short real recording, so that some fuzzed uploads get past decoding to Gemma (the fake).
WAV = audio_factory.encode(audio_factory.tone(0.5), "wav")
# The same recording as a fuzzed upload's file: bytes that count as a `type: string` value.
SERVABLE_FILE = Binary(WAV)


# --- the fuzzed gateway -------------------------------------------------------------------------


@dataclass
class FuzzTarget:
    app: FastAPI
    server: ServerThread


@pytest.fixture(scope="module")
def fuzz_target(fake_server: FakeSGLang) -> Iterator[FuzzTarget]:
    """The real app (its OpenAPI document installed by create_app), served on a real port in
    front of the fake."""
    fake_server.reset()
    # Only this (unresolvable) host may be fetched from: fuzzed image URLs stay off the network.
    app = create_app(gateway_settings(fake_server, media_allowed_hosts=["media.invalid"]))
    server = ServerThread(app)
    server.start()
    yield FuzzTarget(app, server)
    server.stop()
    if TALLY:  # shown with `pytest -s`
        print(f"\nfuzzed requests: {sum(TALLY.values())}")
        for (operation, status), count in sorted(TALLY.items()):
            print(f"  {operation:<36} {status}  x{count}")
    fake_server.reset()


def _document() -> dict[str, Any]:
    """The document of an app configured as `fuzz_target`'s, built at import for collection.

    (schemathesis's `from_fixture` loader cannot run under pytest 9: it writes `Node._nodeid`.)
    """
    app = create_app(Settings(_env_file=None, model_name=MODEL))  # type: ignore[call-arg]
    return app.openapi()


api_schema = schemathesis.openapi.from_dict(_document())
api_schema.config.update(request_timeout=15)
# No secrets here, and the default hides every field named like "*token*" (max_tokens,
# stop_token_ids...) in the curl line a failure prints.
api_schema.config.output.sanitization.update(enabled=False)


@api_schema.hook
def flatmap_case(
    context: schemathesis.HookContext, case: schemathesis.Case
) -> st.SearchStrategy[schemathesis.Case]:
    """Half of the valid bodies are made servable (the served model and a plain conversation;
    for uploads, real audio in a language and granularity the gateway takes), so that fuzzing also
    reaches SGLang and the success path, not only `model_not_found` and `invalid_audio`.
    Negative cases stay as drawn.
    """
    body = case.body
    positive = case.meta is not None and case.meta.generation.mode is GenerationMode.POSITIVE
    if not positive or not isinstance(body, dict):
        return st.just(case)
    if case.operation.path == "/v1/chat/completions":
        # The served model, and a conversation Gemma takes: every other field then reaches
        # SGLang, which is where a value the gateway let through can still break it.
        servable = {**body, "model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    elif case.operation.path.startswith("/v1/audio/"):
        servable = {k: v for k, v in body.items() if k != "timestamp_granularities[]"}
        servable |= {"model": MODEL, "file": SERVABLE_FILE, "language": "en"}
    else:
        return st.just(case)

    def serve(make_servable: bool) -> schemathesis.Case:
        if make_servable:
            case.body = servable
        return case

    return st.booleans().map(serve)


TALLY: Counter[tuple[str, int]] = Counter()  # (operation, status) -> answers, for the summary


@api_schema.hook
def after_call(
    context: schemathesis.HookContext, case: schemathesis.Case, response: schemathesis.Response
) -> None:
    TALLY[case.operation.label, response.status_code] += 1


def _error_problems(content_type: str, content: bytes) -> list[str]:
    """What is wrong with a non-2xx answer, measured against OpenAI's error body."""
    if not content_type.startswith("application/json"):
        return [f"content-type is {content_type!r}, not application/json"]
    try:
        body = json.loads(content)
    except ValueError:
        return ["the body is not JSON"]
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return [f"the body is not {{'error': {{...}}}}: {body!r:.200}"]
    error = body["error"]
    problems = []
    if set(error) != ERROR_KEYS:
        problems.append(f"error keys are {sorted(error)}, not {sorted(ERROR_KEYS)}")
    if not isinstance(error.get("message"), str) or not error.get("message"):
        problems.append("message is not a non-empty string")
    if not isinstance(error.get("type"), str):
        problems.append("type is not a string")
    for key in ("param", "code"):
        if error.get(key) is not None and not isinstance(error.get(key), str):
            problems.append(f"{key} is {error.get(key)!r}: neither a string nor null")
    return problems


def _content_type(response: schemathesis.Response) -> str:
    return (response.headers.get("content-type") or [""])[0]


@schemathesis.check
def openai_error_body(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """Every non-2xx answer carries OpenAI's error body, `code` a string or null."""
    if response.status_code < 400:
        return None
    problems = _error_problems(_content_type(response), response.content)
    if problems:
        raise AssertionError(f"HTTP {response.status_code} error body: " + "; ".join(problems))
    return True


@schemathesis.check
def complete_event_stream(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """A stream is chunks of one completion, no error event (the fake is healthy), then [DONE]."""
    if not _content_type(response).startswith("text/event-stream"):
        return None
    text = response.content.decode()
    events = [e for e in text.replace("\r\n", "\n").split("\n\n") if e.strip()]
    payloads = [
        "\n".join(line[5:].lstrip() for line in e.split("\n") if line.startswith("data:"))
        for e in events
    ]
    assert payloads and payloads[-1] == "[DONE]", f"the stream does not end with [DONE]: {text!r}"
    ids = set()
    for payload in payloads[:-1]:
        chunk = json.loads(payload)
        assert "error" not in chunk, f"error event from a healthy upstream: {payload}"
        assert chunk.get("object") == "chat.completion.chunk", payload
        assert isinstance(chunk.get("choices"), list), payload
        ids.add(chunk.get("id"))
    assert len(ids) == 1, f"one stream, several ids: {ids}"
    return True


def negative_data_rejection(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """schemathesis's check, minus the uploads `flatmap_case` made servable: it re-validates an
    edited body but counts any bytes in it as invalid (`Case._validate_component`), so those
    valid uploads would be expected to fail."""
    if isinstance(case.body, dict) and case.body.get("file") is SERVABLE_FILE:
        return None
    return schemathesis.checks.negative_data_rejection(ctx, response, case)


CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
    negative_data_rejection,
    openai_error_body,
    complete_event_stream,
]


@api_schema.parametrize()
@settings(
    max_examples=FUZZ_MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_fuzzed_requests_get_documented_openai_answers(
    case: schemathesis.Case, fuzz_target: FuzzTarget
) -> None:
    case.call_and_validate(base_url=fuzz_target.server.url, checks=CHECKS)


def test_the_document_is_valid_openapi_3_1_and_describes_every_route(
    fuzz_target: FuzzTarget,
) -> None:
    document = fuzz_target.app.openapi()
    assert document == _document()  # what is fuzzed is what is served
    assert document["openapi"] == "3.1.0"
    assert fuzz_target.app.openapi() is document  # built once
    served = httpx.get(f"{fuzz_target.server.url}/openapi.json", timeout=10)
    if served.status_code != 404:  # the app may choose not to publish it
        assert served.json() == document
    schemathesis.openapi.from_dict(document).validate()  # against the OAS 3.1 meta-schema
    undescribed = [
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if operation.get("description") == UNDESCRIBED
    ]
    assert not undescribed, f"describe these routes in openapi.py: {undescribed}"
    assert {(method, path) for path, item in document["paths"].items() for method in item} >= {
        ("post", "/v1/chat/completions"),
        ("post", "/v1/audio/transcriptions"),
        ("post", "/v1/audio/translations"),
        ("get", "/v1/models"),
        ("get", "/v1/models/{model_id}"),
        ("get", "/health"),
        ("get", "/health/ready"),
    }


def test_the_chat_body_is_the_request_model_with_its_refs_moved_into_components(
    fuzz_target: FuzzTarget,
) -> None:
    document = build_openapi(fuzz_target.app)
    operation = document["paths"]["/v1/chat/completions"]["post"]
    body = operation["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"
    }
    schemas = document["components"]["schemas"]
    assert schemas["ChatCompletionRequest"]["required"] == ["messages", "model"]
    text = json.dumps(document)
    assert "$defs" not in text
    for ref in re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text):
        assert ref in schemas, ref
    statuses = set(operation["responses"])
    assert statuses >= {"200", "400", "404", "413", "429", "500", "502", "503", "504"}
    assert set(operation["responses"]["200"]["content"]) == {
        "application/json",
        "text/event-stream",
    }
    form = schemas["CreateTranscriptionRequest"]
    assert set(form["properties"]) == {
        "file",
        "model",
        "language",
        "prompt",
        "response_format",
        "temperature",
        "timestamp_granularities[]",
    }
    assert form["properties"]["response_format"]["enum"] == [
        "json",
        "text",
        "srt",
        "vtt",
        "verbose_json",
    ]


# --- raw HTTP, for what httpx will not send -----------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def error(self) -> dict[str, Any]:
        """The OpenAI error this response carries (asserting that it is one)."""
        problems = _error_problems((self.header("content-type") or [""])[0], self.body)
        assert not problems, f"HTTP {self.status}: {problems}: {self.body[:300]!r}"
        error: dict[str, Any] = json.loads(self.body)["error"]
        return error


def _read_response(sock: socket.socket, deadline: float) -> RawResponse:
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(sock, deadline)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = [
        (name.strip(), value.strip())
        for name, _, value in (line.partition(":") for line in header_lines)
    ]
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), None)
    while length is not None and len(body) < length:
        body += _recv(sock, deadline)
    return RawResponse(int(status_line.split()[1]), headers, body[:length])


def _recv(sock: socket.socket, deadline: float) -> bytes:
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("the server closed the connection before a whole response")
    return chunk


def raw_request(
    port: int,
    head: bytes,
    body: Iterable[bytes] = (),
    *,
    pause: float = 0.0,
    timeout: float = 10.0,
) -> tuple[RawResponse, int]:
    """Send `head` then the `body` chunks (stopping as soon as an answer arrives).

    Returns the response and how many body bytes were sent before it came.
    """
    deadline = time.monotonic() + timeout
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        for chunk in body:
            if select.select([sock], [], [], pause)[0]:
                break  # answered early: read the answer rather than race a reset
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(chunk)
        return _read_response(sock, deadline), sent


def _chat_head(path: str = "/v1/chat/completions", **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunked(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    """`total` bytes of one JSON string as HTTP/1.1 chunks (no Content-Length to refuse early)."""
    yield b"%x\r\n%s\r\n" % (len(b'{"x": "'), b'{"x": "')
    block = b"%x\r\n%s\r\n" % (size, b"a" * size)
    for _ in range(total // size):
        yield block


# --- hostile cases ------------------------------------------------------------------------------


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **fields}


def _post_raw(http: httpx.Client, body: bytes) -> httpx.Response:
    return http.post(
        "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
    )


def _assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    if response.status_code >= 500 and status < 500:
        # Let the server thread finish logging its traceback first: Python 3.11 before 3.11.8
        # shares one AST recursion counter between threads, and the traceback's carets and
        # pytest's report both parse source at once, which can crash the whole session
        # (pytest-dev/pytest#10763, python/cpython#106905).
        time.sleep(0.5)
    assert response.status_code == status, response.text[:500]
    problems = _error_problems(response.headers.get("content-type", ""), response.content)
    assert not problems, f"{problems}: {response.text[:300]}"
    if code is not None:
        assert response.json()["error"]["code"] == code, response.text


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"model": "%s", "messages": [{"role": "user", "content": "Hi"}], "tools": [%s]}'
        % (MODEL.encode(), b"[" * 50_000 + b"]" * 50_000),
        b"[" * 1_000_000,
    ],
    ids=["arrays", "objects", "inside a free-form field", "never closed"],
)
def test_deeply_nested_json_is_a_400(http: httpx.Client, body: bytes) -> None:
    _assert_openai_error(_post_raw(http, body), 400, "invalid_json")


def test_nesting_within_the_parser_limit_still_works(http: httpx.Client) -> None:
    schema: Any = {"type": "string"}
    for _ in range(60):  # 120 levels: deep, yet under the JSON parser's recursion limit (200)
        schema = {"anyOf": [schema]}
    response_format = {"type": "json_schema", "json_schema": {"name": "deep", "schema": schema}}
    response = http.post("/v1/chat/completions", json=_chat(response_format=response_format))
    assert response.status_code == 200, response.text[:500]


def test_a_declared_100_mb_body_is_refused_before_it_is_sent(gateway: ServerThread) -> None:
    head = _chat_head(Content_Length=str(100 * MiB))
    response, _ = raw_request(gateway.port, head, timeout=5)
    assert response.status == 413
    assert response.error()["code"] == "payload_too_large"


def test_a_100_mb_chunked_body_is_cut_at_the_limit_while_it_is_read(
    gateway: ServerThread,
) -> None:
    limit = 64 * MiB  # MAX_BODY_BYTES's default
    head = _chat_head(Transfer_Encoding="chunked")
    started = time.monotonic()
    response, sent = raw_request(gateway.port, head, _chunked(100 * MiB), timeout=30)
    assert response.status == 413, response.body[:300]
    assert response.error()["code"] == "payload_too_large"
    # Answered once the limit was passed, not after reading all 100 MB (kernel buffers aside).
    assert sent < limit + 16 * MiB, f"{sent / MiB:.0f} MiB sent before the 413"
    assert time.monotonic() - started < 20


@pytest.mark.parametrize(
    ("path", "content_type", "start"),
    [
        ("/v1/chat/completions", "application/json", b'{"model": "'),
        (
            "/v1/audio/transcriptions",
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\n',
        ),
    ],
    ids=["chat", "upload"],
)
def test_a_slow_loris_body_is_a_408_after_the_read_timeout(
    make_gateway: Callable[..., ServerThread], path: str, content_type: str, start: bytes
) -> None:
    server = make_gateway(body_read_timeout=1)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        "Content-Length: 10000\r\n\r\n"
    ).encode()
    started = time.monotonic()
    # A valid start, then a byte every 0.1 s: 4 s unless the gateway stops it.
    trickle = itertools.chain([start], itertools.repeat(b"a", 40))
    response, sent = raw_request(server.port, head, trickle, pause=0.1, timeout=6)
    elapsed = time.monotonic() - started
    assert response.status == 408, response.body[:300]
    assert response.error()["code"] == "request_timeout"
    assert 0.9 <= elapsed < 3, f"answered after {elapsed:.2f}s"
    assert sent < len(start) + 40


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "\xff"}]}',
        # an overlong "/" and a UTF-8-encoded lone surrogate: both invalid UTF-8
        b'{"model": "\xc0\xaf", "messages": [{"role": "user", "content": "Hi"}]}',
        b'{"model": "x", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
        b"\xef\xbb\xbf" + json.dumps(_chat()).encode(),  # a BOM: not JSON (RFC 8259, 8.1)
        json.dumps(_chat()).encode("utf-16"),
    ],
    ids=["invalid byte", "overlong", "encoded surrogate", "BOM", "UTF-16"],
)
def test_invalid_utf8_in_a_chat_body_is_a_400(http: httpx.Client, body: bytes) -> None:
    _assert_openai_error(_post_raw(http, body), 400, "invalid_json")


@pytest.mark.parametrize(
    "content", ["\\ud800", "\\udfff", "a\\ud800b", "\\ud83d\\ude00\\ud800"], ids=repr
)
def test_escaped_lone_surrogates_are_refused_or_passed_on_cleanly(
    http: httpx.Client, content: str
) -> None:
    """Valid JSON, invalid Unicode: a 400, or a 200 if it is replaced; never a 5xx."""
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "%s"}]}' % (
        MODEL.encode(),
        content.encode(),
    )
    response = _post_raw(http, body)
    if response.status_code != 200:
        _assert_openai_error(response, 400)


@pytest.mark.parametrize(
    ("field", "value", "filename"),
    [
        ("model", b"\xff\xfe", b"a.wav"),
        ("language", b"\xc3\x28", b"a.wav"),
        ("prompt", b"\xed\xa0\x80", b"a.wav"),
        ("model", MODEL.encode(), b"\xff\xfe.wav"),
    ],
    ids=["model", "language", "prompt", "filename"],
)
def test_invalid_utf8_in_an_upload_form_is_answered_cleanly(
    http: httpx.Client, field: str, value: bytes, filename: bytes
) -> None:
    fields = {"model": MODEL.encode(), field: value}
    parts = [
        b'--x\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (name.encode(), data)
        for name, data in fields.items()
    ]
    parts.append(
        b'--x\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\n'
        b"Content-Type: audio/wav\r\n\r\n%s\r\n--x--\r\n" % (filename, WAV)
    )
    response = http.post(
        "/v1/audio/transcriptions",
        content=b"".join(parts),
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert response.status_code < 500, response.text
    if response.status_code != 200:  # non-UTF-8 text fields are read as latin-1: mojibake, 200
        _assert_openai_error(response, response.status_code)


@pytest.mark.parametrize(
    "path", ["/v1/models/%FF%FE", "/v1/models/%C0%AF", "/v1/models?x=%FF", "/v1/%ED%A0%80"]
)
def test_invalid_utf8_in_the_url_is_answered_cleanly(http: httpx.Client, path: str) -> None:
    response = http.get(path)
    assert response.status_code in (200, 404), response.text
    if response.status_code == 404:
        _assert_openai_error(response, 404)


@pytest.mark.parametrize(
    "fragment",
    [
        b'"temperature": NaN',
        b'"temperature": Infinity',
        b'"temperature": -Infinity',
        b'"temperature": 1e400',
        b'"top_p": -1e400',
        b'"temperature": 1' + b"0" * 400,
        b'"logit_bias": {"1": 1e400}',
        b'"max_tokens": 1e400',
        b'"max_tokens": 1' + b"0" * 30,
        b'"seed": 1e400',
        # Integers JSON allows but SGLang (and orjson) cannot hold: past 64 bits.
        b'"seed": 18446744073709551616',
        b'"seed": -9223372036854775809',
        b'"top_k": 99999999999999999999999',
        b'"min_tokens": 99999999999999999999999',
        b'"stop_token_ids": [99999999999999999999999]',
        b'"n": 1e400',
    ],
    ids=lambda f: f.decode()[:40],
)
def test_non_finite_and_out_of_range_numbers_are_a_400(http: httpx.Client, fragment: bytes) -> None:
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "Hi"}], %s}' % (
        MODEL.encode(),
        fragment,
    )
    _assert_openai_error(_post_raw(http, body), 400)


@pytest.mark.parametrize("temperature", ["NaN", "inf", "-Infinity", "1e400", "1" + "0" * 400])
def test_non_finite_upload_temperature_is_a_400(http: httpx.Client, temperature: str) -> None:
    response = http.post(
        "/v1/audio/transcriptions",
        data={"model": MODEL, "temperature": temperature},
        files={"file": ("a.wav", WAV, "audio/wav")},
    )
    _assert_openai_error(response, 400)
    assert response.json()["error"]["param"] == "temperature"


@pytest.mark.parametrize(
    "raw_header",
    [
        b"X-Request-ID: abc\r\nX-Injected: 1",  # CRLF: a second header, not part of the id
        b"X-Request-ID: abc\nX-Injected: 1",  # bare LF
        b"X-Request-ID: abc\rX-Injected: 1",  # bare CR
        b"X-Request-ID: abc\r\n X-Injected: 1",  # obsolete line folding
        b"X-Request-ID: abc%0d%0aX-Injected: 1",  # percent-encoded: just text
        b"X-Request-ID: abc\x00X-Injected: 1",  # NUL
        b"X-Request-ID: \xff\xfe\xc3\xa9",  # latin-1 and UTF-8 bytes
        b"X-Request-ID: <script>alert(1)</script>",
        b"X-Request-ID: " + b"a" * 10_000,  # longer than the 128 an id may have
        b"X-Request-ID: first\r\nX-Request-ID: second",  # two ids
        b"X-Request-ID: abc\r\nSet-Cookie: session=stolen",
    ],
    ids=[
        "CRLF",
        "LF",
        "CR",
        "obs-fold",
        "percent",
        "NUL",
        "8-bit",
        "markup",
        "long",
        "twice",
        "set-cookie",
    ],
)
def test_header_injection_through_x_request_id_goes_nowhere(
    gateway: ServerThread, raw_header: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    head = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n" + raw_header + b"\r\n\r\n"
    response, _ = raw_request(gateway.port, head, timeout=5)
    names = {name.lower() for name, _ in response.headers}
    assert "x-injected" not in names and "set-cookie" not in names, response.headers
    if response.status == 400 and "x-request-id" not in names:
        # The HTTP parser refused the request before the app saw it: clean, nothing echoed.
        assert b"X-Injected" not in response.body
        return
    assert response.status == 200, (response.status, response.body[:300])
    (request_id,) = response.header("x-request-id")
    assert SAFE_REQUEST_ID.fullmatch(request_id), request_id
    for record in caplog.records:
        assert "\n" not in record.getMessage() and "\r" not in record.getMessage()


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models%0d%0aforged 200 log line",
        "/v1/models/%0aforged",
        "/nope%0d%0aforged",
    ],
)
def test_control_characters_in_the_path_forge_no_log_lines(
    http: httpx.Client, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = http.get(path)
    assert response.status_code == 404
    _assert_openai_error(response, 404)
    for record in caplog.records:
        assert "\n" not in record.getMessage(), record.getMessage()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/generate"),
        ("POST", "/flush_cache"),
        ("GET", "/get_server_info"),
        ("POST", "/update_weights_from_disk"),
        ("POST", "/v1/completions"),
        ("GET", "/docs"),
        ("GET", "/../../etc/passwd"),
        ("DELETE", "/v1/models/" + MODEL),
    ],
)
def test_every_other_path_or_method_is_an_openai_error(
    http: httpx.Client, fake: FakeSGLang, method: str, path: str
) -> None:
    response = http.request(method, path)
    assert response.status_code in (404, 405), response.text
    _assert_openai_error(response, response.status_code)
    assert not [r for r in fake.requests if r.path == path], "it reached SGLang"
