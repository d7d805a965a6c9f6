#!/usr/bin/env bash
# Entrypoint of the gateway image: optionally fetch the model, then exec the server command.
#
#   DOWNLOAD_MODEL=1|true|yes|on   run download_model.py first (it reads HF_TOKEN, MODEL_REPO,
#                                  MODEL_REVISION, MODEL_CACHE_DIR, ... from the environment);
#                                  a failed download stops the container with its exit code
#   DOWNLOAD_WHISPER_MODEL=NAME    also fetch that Whisper checkpoint (image built WITH_WHISPER=1)
#   "$@"                           the server command (the image's CMD: python app.py), exec'd so
#                                  it replaces this shell: PID 1, signals reach it directly
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"

wanted() {
    local name="$1" value="${2:-}"
    case "${value,,}" in
        1 | true | yes | on) return 0 ;;
        "" | 0 | false | no | off) return 1 ;;
        *)
            echo "entrypoint: ${name} must be 1/true/yes/on or 0/false/no/off, not '${value}'" >&2
            exit 2
            ;;
    esac
}

if [[ $# -eq 0 ]]; then
    set -- python "${here}/app.py"
fi

if wanted DOWNLOAD_MODEL "${DOWNLOAD_MODEL:-}"; then
    echo "entrypoint: fetching the model before starting (DOWNLOAD_MODEL=${DOWNLOAD_MODEL})" >&2
    python "${here}/download_model.py"
fi

if [[ -n "${DOWNLOAD_WHISPER_MODEL:-}" ]]; then
    echo "entrypoint: fetching Whisper '${DOWNLOAD_WHISPER_MODEL}'" >&2
    python "${here}/download_model.py" --no-model --whisper "${DOWNLOAD_WHISPER_MODEL}"
fi

exec "$@"
