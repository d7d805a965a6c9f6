# The gateway's image (the service in front of SGLang, and the one-shot model download).
#   docker build -t gemma3n-gateway .                          # amd64 GPU host or arm64 Jetson
#   docker build --build-arg WITH_WHISPER=1 -t gemma3n-gateway .  # + local Whisper (CPU torch)
# The official python image is multi-arch (linux/amd64, linux/arm64), so the same file builds
# natively on a Jetson. SGLang runs in its own image; nothing here needs a GPU.
FROM python:3.11.14-slim-bookworm

ARG WITH_WHISPER=0
# torch for Whisper comes from PyTorch's CPU index: the GPU belongs to SGLang, and PyPI's
# default torch on amd64 pulls several GB of CUDA wheels.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    HF_HOME=/hf-cache \
    RESPONSES_STORE_PATH=/data/responses.sqlite3

# A fixed non-root uid/gid, so volume ownership is predictable. The cache folders and /data (the
# Responses API's store) belong to it, so a fresh named volume mounted on one starts out writable
# by this user.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home app \
    && mkdir -p /hf-cache /home/app/.cache/whisper /data \
    && chown -R app:app /hf-cache /home/app/.cache /data

WORKDIR /app

# Dependencies before code: editing a .py file does not reinstall anything.
COPY requirements.txt requirements-whisper.txt ./
RUN pip install --no-cache-dir -r requirements.txt \
    && if [ "$WITH_WHISPER" = "1" ]; then \
        pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.13.0 \
        && pip install --no-cache-dir -r requirements-whisper.txt; \
    fi

# The code stays owned by root: the service cannot rewrite itself. .dockerignore keeps .env,
# tests and the git history out.
COPY . .
RUN chmod 0755 /app/entrypoint.sh

USER 10001:10001
EXPOSE 8000

# Liveness only (/health answers whenever the process runs); readiness is /health/ready.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/health', timeout=4)"]

# Exec form: entrypoint.sh `exec`s the server, which then runs as PID 1 and receives SIGTERM.
ENTRYPOINT ["/app/entrypoint.sh"]
CMD ["python", "app.py"]
