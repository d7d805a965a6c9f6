"""Per-request identity: the `X-Request-ID` header, the context variables and the log format.

Every response carries `X-Request-ID`: the client's own when it is a safe token (letters, digits
and `-_.:`, at most 128 characters; anything else could inject headers or log lines), otherwise a
new one. Every log line written while the request is handled carries it too, and one access line
per request says: method, path, status, duration, key id (never the key), then what the handler
recorded (model, prompt/completion tokens, time to first token). The middleware is pure ASGI so
that it neither buffers nor delays streamed responses.

Log lines cannot be forged or flooded by a client, in any module: `SafeFormatter` (the one the
gateway's handler uses) cuts every string a line interpolates to `LOG_VALUE_LIMIT` characters
and escapes control characters in the whole line, so a newline in a model name, a URL or a
content part type can never start a new line, and a 5 MB model name is 300 characters of log.
"""

from __future__ import annotations

import logging
import os
import time
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID_LENGTH = 128
_SAFE_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")

# The `send` this middleware was given, for the body of a stream (`streaming.py`): the layers
# between here and the app (metrics, the front door, Starlette's exception handling) act on a
# response's start and its last message only, so the messages in between may skip them. A
# middleware that rewrites bodies must not be put inside this one.
STREAM_BODY_SEND = "gateway.stream_body_send"

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
key_id_var: ContextVar[str] = ContextVar("key_id", default="-")
# Facts the handler learns about the request (model, token counts, time to first token), for the
# access line. A dict shared by reference, so what a streaming task writes is seen here.
request_facts_var: ContextVar[dict[str, object]] = ContextVar("request_facts")
access_logger = logging.getLogger("gateway.access")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def accepted_request_id(value: bytes | None) -> str:
    """The client's id if it is safe to echo and log, else a fresh one."""
    if value and len(value) <= MAX_REQUEST_ID_LENGTH:
        text = value.decode("latin-1")
        if _SAFE_CHARACTERS.issuperset(text):
            return text
    return os.urandom(16).hex()  # as random as uuid4().hex, without building a UUID


LOG_VALUE_LIMIT = 300  # characters of one interpolated string in a log line
LOG_LINE_LIMIT = 8192  # characters of a whole log message


def loggable(text: str) -> str:
    """`text` with control and non-ASCII characters escaped: a client-chosen path (decoded from
    %0d%0a) must not be able to forge a log line."""
    if text.isprintable() and text.isascii():
        return text
    return text.encode("unicode_escape").decode("ascii")


def shortened(text: str, limit: int = LOG_VALUE_LIMIT) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text)} chars)"


class SafeFormatter(logging.Formatter):
    """A formatter whose lines a client cannot forge or flood (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, str) for a in args):
            record.args = tuple(shortened(a) if isinstance(a, str) else a for a in args)
        message = record.getMessage()
        safe = loggable(shortened(message, LOG_LINE_LIMIT))
        if safe is not message:
            record.msg, record.args = safe, None
        return super().format(record)


class RequestIdMiddleware:
    """Sets the request id, echoes it in the response headers and logs one access line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_value = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                client_value = value
                break
        request_id = accepted_request_id(client_value)
        header = (REQUEST_ID_HEADER, request_id.encode("latin-1"))
        token = request_id_var.set(request_id)
        key_token = key_id_var.set("-")
        facts: dict[str, object] = {}
        facts_token = request_facts_var.set(facts)
        scope[STREAM_BODY_SEND] = send
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Anything no handler caught: answered here, inside this middleware, so the 500 too
            # carries the request id and the access line its status. Never the exception text.
            logging.getLogger("gateway").exception("unexpected error")
            if status == 0:
                await send_with_id(_INTERNAL_ERROR_START)
                await send_with_id({"type": "http.response.body", "body": _INTERNAL_ERROR_BODY})
        finally:
            access_logger.info(
                "%s %s %d %.1fms key=%s%s",
                scope["method"],
                loggable(scope["path"]),
                status,
                (time.perf_counter() - started) * 1000,
                key_id_var.get(),
                "".join(f" {k}={shortened(loggable(str(v)), 100)}" for k, v in facts.items()),
            )
            request_facts_var.reset(facts_token)
            key_id_var.reset(key_token)
            request_id_var.reset(token)


_INTERNAL_ERROR_BODY = (
    b'{"error":{"message":"The gateway failed to handle the request.",'
    b'"type":"server_error","param":null,"code":null}}'
)
_INTERNAL_ERROR_START: Message = {
    "type": "http.response.start",
    "status": 500,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_INTERNAL_ERROR_BODY)).encode()),
    ],
}


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record, so the format can always name it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def configure_logging(level: str) -> None:
    """One handler on the root logger with the request id in every line."""
    # Nothing logged here uses the caller's file/line, thread or process names: not collecting
    # them saves ~20 % of each log call (https://docs.python.org/3/howto/logging.html#optimization).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(SafeFormatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
