"""Settings come from the environment, with bounds, and unsafe combinations fail at start-up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.settings import Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SGLANG_URL", "MODEL_NAME", "PORT", "DEFAULT_MAX_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.sglang_url == "http://localhost:30000"
    assert settings.model_name == "google/gemma-3n-E4B-it"
    assert settings.port == 8000
    assert settings.upstream_keepalive_expiry < 5


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGLANG_URL", "http://sglang:30000/")
    monkeypatch.setenv("MODEL_NAME", "google/gemma-3n-E2B-it")
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("SGLANG_API_KEY", "secret")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.sglang_url == "http://sglang:30000"
    assert settings.model_name == "google/gemma-3n-E2B-it"
    assert settings.port == 9000
    assert settings.sglang_api_key is not None
    assert "secret" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("SGLANG_URL", "sglang:30000", "http://"),
        ("SGLANG_URL", "http://sglang:30000/v1", "/v1"),
        ("PORT", "0", "PORT"),
        ("DEFAULT_MAX_TOKENS", "9000", "MAX_TOKENS_LIMIT"),
        ("UPSTREAM_KEEPALIVE_EXPIRY", "5", "keepalive"),
    ],
)
def test_bad_values_fail_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert fragment.lower() in str(caught.value).lower()
