"""The gateway's configuration: one typed `Settings`, read from environment variables.

Every field has a default, bounds and a description; the environment variable is the field name in
upper case (`SGLANG_URL`, `MODEL_NAME`, ...). Unsafe or contradictory combinations fail at start-up
with a message that names the variable.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the gateway can be told, from the environment (or a `.env` file)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # --- where the model lives -------------------------------------------------------------
    sglang_url: str = Field(
        "http://localhost:30000",
        description="Base URL of the SGLang server (or SGLang router); no trailing /v1.",
    )
    sglang_api_key: SecretStr | None = Field(
        None,
        description="Key the gateway sends to SGLang (SGLang's --api-key). Never sent to clients.",
    )
    model_name: str = Field(
        "google/gemma-3n-E4B-it",
        min_length=1,
        description="The one model id the gateway serves; requests naming another get 404.",
    )

    # --- where the gateway listens ---------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface to bind (0.0.0.0 in containers).")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Logging level of the gateway and uvicorn."
    )

    # --- generation limits -----------------------------------------------------------------
    default_max_tokens: int = Field(
        2048,
        ge=1,
        description="max_tokens applied when a request gives none (SGLang would go to 32K).",
    )
    max_tokens_limit: int = Field(
        8192,
        ge=1,
        description="Largest max_tokens / max_completion_tokens a request may ask for.",
    )

    # --- the upstream connection -----------------------------------------------------------
    upstream_connect_timeout: float = Field(
        5.0, gt=0, description="Seconds to open a TCP connection to SGLang."
    )
    upstream_read_timeout: float = Field(
        600.0,
        gt=0,
        description=(
            "Seconds to wait for SGLang's next bytes: covers queueing plus prefill for streams "
            "and the whole generation for non-streaming requests."
        ),
    )
    upstream_max_connections: int = Field(
        1024, ge=1, description="Most simultaneous connections to SGLang."
    )
    upstream_keepalive_expiry: float = Field(
        4.0,
        gt=0,
        lt=5.0,
        description="Seconds an idle pooled connection is kept; below uvicorn's 5 s in SGLang.",
    )

    # --- health ----------------------------------------------------------------------------
    health_poll_interval: float = Field(
        2.0, gt=0, description="Seconds between background checks of SGLang's readiness."
    )
    health_check_timeout: float = Field(
        2.0, gt=0, description="Seconds one readiness check of SGLang may take."
    )
    retry_after_seconds: int = Field(
        5, ge=1, description="Retry-After sent with 503 while SGLang is down or loading."
    )

    # --- images (issue 3: images.py, media_fetch.py) ---------------------------------------

    # --- model download and deployment (issue 5: download_model.py) ---------------------------
    hf_token: SecretStr | None = Field(
        None,
        description=(
            "Hugging Face token (HF_TOKEN) of an account that accepted the Gemma 3n licence; "
            "used by download_model.py only, never sent to SGLang or to clients."
        ),
    )
    hf_endpoint: str | None = Field(
        None,
        description="Hub URL (HF_ENDPOINT) for a mirror; empty means huggingface_hub's default.",
    )
    model_repo: str = Field(
        "google/gemma-3n-E4B-it",
        min_length=1,
        description="Hugging Face repo id that download_model.py fetches and SGLang loads.",
    )
    model_revision: str = Field(
        "main",
        min_length=1,
        description="Branch, tag or 40-hex commit of MODEL_REPO; pin a commit in production.",
    )
    model_cache_dir: str | None = Field(
        None,
        description=(
            "Hugging Face hub cache to download into (default: huggingface_hub's, $HF_HOME/hub); "
            "SGLang must read the same cache."
        ),
    )
    model_local_dir: str | None = Field(
        None,
        description="Plain folder to download into instead of the cache (SGLang --model-path DIR).",
    )
    model_include: str = Field(
        "",
        description="Comma-separated globs of repo files to fetch; empty fetches every file.",
    )

    @field_validator("sglang_url")
    @classmethod
    def _strip_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("SGLANG_URL must start with http:// or https://")
        if value.endswith("/v1"):
            raise ValueError("SGLANG_URL is the server's base URL: drop the trailing /v1")
        return value

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(
                f"DEFAULT_MAX_TOKENS ({self.default_max_tokens}) must not exceed "
                f"MAX_TOKENS_LIMIT ({self.max_tokens_limit})"
            )
        return self
