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
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Gateway processes sharing the port, one per core (`python app.py`).",
    )
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

    # --- images (issue 3: images.py, fetch.py) ---------------------------------------
    max_image_bytes: int = Field(
        20 * 1024 * 1024,
        ge=1024,
        description="Largest encoded image accepted, in bytes (decoded data: URL or fetched body).",
    )
    max_image_pixels: int = Field(
        50_000_000,
        ge=1,
        description=(
            "Largest width x height accepted, checked from the header before decoding "
            "(decompression bombs). 50 MP covers 48/50 MP phone sensors."
        ),
    )
    max_images_per_request: int = Field(
        16, ge=1, description="Most image parts in one chat request (Gemma 3n: 256 tokens each)."
    )
    image_max_side: int = Field(
        768,
        ge=32,
        le=4096,
        description="Longer side images are downscaled to; Gemma 3n sees every image as 768x768.",
    )
    image_jpeg_quality: int = Field(
        90, ge=1, le=95, description="JPEG quality of the prepared image sent to SGLang."
    )
    image_cache_entries: int = Field(
        256,
        ge=0,
        description="Prepared images kept in memory for repeats (multi-turn chats); 0 disables.",
    )
    image_cache_ttl: float = Field(
        300.0,
        ge=0,
        description=(
            "Seconds a fetched URL's prepared image is reused without fetching again (capped by "
            "the response's Cache-Control); 0 fetches every time."
        ),
    )
    media_fetch_connect_timeout: float = Field(
        5.0, gt=0, description="Seconds to connect to a host serving an image URL."
    )
    media_fetch_timeout: float = Field(
        20.0,
        gt=0,
        description="Seconds one URL fetch may take in total: DNS, redirects, body.",
    )
    media_fetch_max_redirects: int = Field(
        3, ge=0, le=10, description="Redirects followed per URL; every hop is checked again."
    )
    media_allow_private_addresses: bool = Field(
        False,
        description=(
            "Fetch URLs that resolve to loopback, private, link-local, multicast or reserved "
            "addresses. Unsafe (server-side request forgery); for tests and closed networks."
        ),
    )
    media_allowed_networks: list[str] = Field(
        default_factory=list,
        description=(
            "Non-public networks (CIDR) that may still be fetched from, as JSON: "
            "'[\"10.1.2.0/24\"]' (an internal image store) without allowing every private address."
        ),
    )
    media_allowed_hosts: list[str] = Field(
        default_factory=list,
        description=(
            'Only these hosts are fetched from, as JSON: \'["img.example.com", '
            '"*.cdn.example.com"]\'; empty allows every public host.'
        ),
    )
    media_workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Images decoded and resized at once (worker processes); 0 = one per CPU core.",
    )
    max_decoded_media_bytes: int = Field(
        1 << 30,
        ge=16 << 20,
        description="Most bytes of decoded audio and images the process holds at once (429).",
    )
    max_decoded_media_bytes_per_request: int = Field(
        256 << 20,
        ge=4 << 20,
        description="Most bytes of decoded audio and images one request may hold (413).",
    )
    media_prestart: bool = Field(
        True,
        description=(
            "Start and warm the worker processes (images; JSON bodies over 4 MiB) at start-up, "
            "before /health/ready is 200."
        ),
    )

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

    # --- audio (issue 4: audio.py, whisper_asr.py) ---------------------------------------------
    enable_audio: bool = Field(
        True, description="Accept audio content parts; false answers them with a clear 400."
    )
    audio_mode: Literal["auto", "native", "whisper"] = Field(
        "auto",
        description=(
            "native: Gemma 3n hears the audio as 16 kHz WAV clips of at most 30 s; whisper: the "
            "gateway sends a Whisper transcript instead; auto: native when SGLang reports audio "
            "understanding and the audio fits MAX_NATIVE_AUDIO_SECONDS, else Whisper if installed."
        ),
    )
    max_audio_bytes: int = Field(
        25 * 1024 * 1024,
        ge=1,
        description="Largest audio part in bytes (after base64 decoding or download).",
    )
    max_audio_seconds: float = Field(
        600.0,
        gt=0,
        le=4 * 3600,
        description="Most seconds of audio one request may carry, all parts together.",
    )
    max_native_audio_seconds: float = Field(
        300.0,
        gt=0,
        le=4 * 3600,
        description=(
            "In auto mode, the longest audio sent to Gemma 3n natively (as 30 s clips of 188 "
            "tokens each); longer audio goes to Whisper."
        ),
    )
    audio_workers: int = Field(
        2,
        ge=1,
        le=64,
        description="Audio parts decoded and resampled at once (threads, about a core each).",
    )
    whisper_model: str = Field(
        "base",
        min_length=1,
        description=(
            "Whisper model: an official name (tiny, base, small, medium, large-v3, turbo, "
            "*.en) looked up in WHISPER_DOWNLOAD_ROOT, or the path of a checkpoint file."
        ),
    )
    whisper_device: str = Field(
        "cpu",
        pattern=r"^(cpu|cuda(:\d+)?)$",
        description="PyTorch device for Whisper: cpu, cuda or cuda:N (the GPU is mostly SGLang's).",
    )
    whisper_download_root: str | None = Field(
        None,
        description="Folder of downloaded Whisper checkpoints; default Whisper's ~/.cache/whisper.",
    )
    whisper_concurrency: int = Field(
        1,
        ge=1,
        le=16,
        description="Transcriptions run at once; each one holds its own copy of the model.",
    )

    # --- access and limits (issue 6: guards.py, metrics.py) --------------------------------
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated client API keys (Authorization: Bearer). None: open.",
    )
    api_keys_file: str | None = Field(
        None, description="File with one client API key per line (# comments allowed)."
    )
    protect_health_and_metrics: bool = Field(
        False,
        description="Require a key for /health/ready and /metrics too (/health stays open).",
    )
    max_body_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Largest request body, enforced while reading (413 beyond it).",
    )
    body_read_timeout: float = Field(
        30.0, gt=0, description="Seconds a client may take to send its whole body (else 408)."
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest request line plus headers (431 beyond it; `python app.py` only).",
    )
    header_read_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a client may take to send a request's line and headers (else 408).",
    )
    max_connections: int = Field(
        4096,
        ge=16,
        description="Most open client connections; one more is answered 503 and closed.",
    )
    max_messages_per_request: int = Field(
        1000, ge=1, description="Most messages in one chat request."
    )
    max_n: int = Field(8, ge=1, le=128, description="Largest n (choices) one request may ask for.")
    max_json_elements: int = Field(
        16384,
        ge=256,
        description="Most elements (commas) in a JSON body, counted as it arrives (else 400).",
    )
    max_parts_per_message: int = Field(256, ge=1, description="Most content parts in one message.")
    max_parts_per_request: int = Field(
        1024, ge=1, description="Most content parts in one request, all messages together."
    )
    max_text_chars: int = Field(
        1 << 20, ge=1024, description="Most characters of text in one request, all parts together."
    )
    max_tools: int = Field(
        128, ge=1, le=1024, description="Most functions one request may declare (OpenAI: 128)."
    )
    max_in_flight: int = Field(
        1024,
        ge=1,
        description="Most requests handled at once; beyond it 429 with Retry-After.",
    )
    rate_limit_per_minute: int = Field(
        0, ge=0, description="Requests per minute per API key (0: no per-key rate limit)."
    )
    playground: bool = Field(
        True,
        description=(
            "Serve the browser playground at / and /playground (its page and files load "
            "without a key; every API call it makes needs one); false: those paths are 404."
        ),
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed by CORS, as JSON: '[\"https://a.example\"]'; empty: off.",
    )
    shutdown_grace_seconds: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM, how long streams in flight may finish before they are ended.",
    )

    # --- the Responses API's store (issue 14: gateway/responses/store.py) ----------------
    responses_store_path: str = Field(
        "data/responses.sqlite3",
        min_length=1,
        description="SQLite file of stored responses (created on start); ':memory:' keeps none.",
    )
    responses_store_max_age_seconds: float = Field(
        30 * 24 * 3600.0, gt=0, description="How long a stored response is kept (30 days)."
    )
    responses_store_max_bytes: int = Field(
        1 << 30, ge=1 << 20, description="Most bytes of stored responses; the oldest go first."
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
