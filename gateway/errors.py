"""The gateway's exception tree and OpenAI's error body.

Every failure a client can see is one of these, raised where it is found and turned into a
response in one place (`app.py`). Each class fixes the HTTP status and OpenAI's `type`/`code`::

    GatewayError                         (500, server_error)
    ├── InvalidRequest                   (400, invalid_request_error; `param` names the field)
    │   └── UnsupportedContent           (400, code unsupported_content)
    ├── AuthenticationFailed             (401, invalid_request_error, code invalid_api_key)
    ├── NotFound                         (404, invalid_request_error, code not_found)
    │   └── ModelNotFound                (404, code model_not_found)
    ├── RequestTimeout                   (408, invalid_request_error, code request_timeout)
    ├── PayloadTooLarge                  (413, invalid_request_error, code payload_too_large)
    ├── RateLimited                      (429, rate_limit_exceeded; Retry-After)
    └── UpstreamError                    (base of everything SGLang did wrong)
        ├── UpstreamRejected             (SGLang's own 4xx, relayed with its status and message)
        ├── UpstreamFailed               (500: SGLang raised; its text is logged, never sent)
        ├── UpstreamBadResponse          (502: garbage, truncated body, unexpected status)
        ├── UpstreamUnavailable          (503: refused, loading, overloaded; Retry-After)
        └── UpstreamTimeout              (504; x-should-retry: false)

The body is OpenAI's: ``{"error": {"message", "type", "param", "code"}}`` with `code` a string or
null, which the `openai` SDK turns into `BadRequestError`, `NotFoundError`, `APIStatusError`...
"""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    """Base of every error the gateway answers with; subclasses fix status, type and code."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """OpenAI's error body for this error."""
        return error_body(self.message, self.error_type, self.param, self.code)


class InvalidRequest(GatewayError):
    """The request is malformed or asks for something the model cannot do."""

    status_code = 400
    error_type = "invalid_request_error"


class UnsupportedContent(InvalidRequest):
    """A content part or feature the gateway does not (yet) pass to Gemma 3n."""

    default_code = "unsupported_content"


class AuthenticationFailed(GatewayError):
    """A missing or wrong API key."""

    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class NotFound(GatewayError):
    """A path or object that does not exist."""

    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    """The request names a model the gateway does not serve."""

    default_code = "model_not_found"

    def __init__(self, model: str, *, param: str | None = "model") -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.", param=param
        )


class RequestTimeout(GatewayError):
    """The client took too long to send its request body."""

    status_code = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"


class PayloadTooLarge(GatewayError):
    """The request body is over the size limit."""

    status_code = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"


class RateLimited(GatewayError):
    """Too many requests in flight or per key."""

    status_code = 429
    error_type = "rate_limit_exceeded"
    default_code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    """Base of every failure of SGLang or of the connection to it."""


class UpstreamRejected(UpstreamError):
    """SGLang refused the request (its 4xx); the status and message are the client's to see."""

    error_type = "invalid_request_error"

    def __init__(self, message: str, *, status_code: int, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.status_code = status_code  # type: ignore[misc]  # per instance, unlike its siblings


class UpstreamFailed(UpstreamError):
    """SGLang failed while handling the request (its 500, or a generation it aborted)."""

    status_code = 500


class UpstreamBadResponse(UpstreamError):
    """SGLang answered something that is not a valid response: garbage, truncation, odd status."""

    status_code = 502
    error_type = "server_error"
    default_code = "bad_gateway"


class UpstreamUnavailable(UpstreamError):
    """SGLang cannot take the request now: not listening, still loading, or overloaded."""

    status_code = 503
    error_type = "server_error"
    default_code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class UpstreamTimeout(UpstreamError):
    """SGLang did not answer within the configured time.

    SGLang may still be generating for the request, so the `openai` SDKs are told not to send
    it again (they retry a 5xx unless `x-should-retry` says "false").
    """

    status_code = 504
    error_type = "server_error"
    default_code = "timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"x-should-retry": "false"})


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
