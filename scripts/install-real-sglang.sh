#!/usr/bin/env bash
# Install SGLang 0.5.21 and sglang-router 0.3.2 for the CPU test tier (tests/real_sglang) into a
# venv cached outside the checkout, without pulling CUDA:
#   1. torch==2.13.0 alone first (on these machines pip takes a local CPU build; an unpinned torch
#      would pull gigabytes of CUDA),
#   2. tests/real_sglang/requirements-sglang-cpu.txt, every entry pinned (sglang's own dependency
#      list names CUDA-only packages, so it is installed with --no-deps),
#   3. sglang==0.5.21 --no-deps, sglang-router==0.3.2 --no-deps,
#   4. tests/real_sglang/cpu_shim/sgl_kernel: the CPU engine imports sgl-kernel, whose CPU build is
#      not on PyPI; this pure-PyTorch stand-in provides the one op Gemma 3n's path calls,
#   5. the CPU patches (tests/real_sglang/patch_sglang.py), then a check that sglang imports and
#      every patch is in place.
# A stamp keyed by a hash of the pins, the requirement list, the shim and the patch script makes
# a second run cost seconds; any change to them rebuilds the venv from scratch.
#
# Usage: scripts/install-real-sglang.sh    (REAL_SGLANG_HOME overrides the cache folder)
# Writes $REAL_SGLANG_HOME/READY: the venv's python and the tiny Gemma 3n builder, one per line.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${REAL_SGLANG_HOME:-${HOME}/.cache/gemma3n-gateway/real-sglang}"
VENV="$HOME_DIR/venv"
PY="$VENV/bin/python"
TIER="$ROOT/tests/real_sglang"
REQUIREMENTS="$TIER/requirements-sglang-cpu.txt"
PATCHER="$TIER/patch_sglang.py"
BUILDER="$TIER/tiny_gemma3n.py"
SHIM="$TIER/cpu_shim/sgl_kernel"
PINS="torch==2.13.0 sglang==0.5.21 sglang-router==0.3.2"
PYTHON="${PYTHON:-python3}"

log() { printf 'install-real-sglang: %s\n' "$*" >&2; }

key="$( { echo "$PINS"; cat "$REQUIREMENTS" "$PATCHER" "$SHIM"/*.py; } | sha256sum | cut -d' ' -f1)"
stamp="$VENV/.installed-$key"

# The check that ends every run: sglang and the router import, every patch is in place.
verify() {
    "$PY" "$PATCHER" --check >/dev/null
    "$PY" - <<'EOF'
import importlib.metadata as md

import sgl_kernel
import sglang
import sglang_router  # noqa: F401
import torch
import torchaudio  # noqa: F401
import torchvision  # noqa: F401

assert torch.__version__.startswith("2.13.0"), torch.__version__
assert md.version("sglang") == "0.5.21", md.version("sglang")
assert md.version("sglang-router") == "0.3.2", md.version("sglang-router")
assert "cpu-shim" in sgl_kernel.__version__, sgl_kernel.__file__
print(f"sglang {sglang.__version__} (torch {torch.__version__}) imports, CPU patches in place")
EOF
}

publish() {
    # The builder is copied beside the venv so that READY's paths outlive this checkout.
    mkdir -p "$HOME_DIR/bin"
    cp "$BUILDER" "$HOME_DIR/bin/tiny_gemma3n.py"
    printf '%s\n%s\n' "$PY" "$HOME_DIR/bin/tiny_gemma3n.py" >"$HOME_DIR/READY.tmp"
    mv "$HOME_DIR/READY.tmp" "$HOME_DIR/READY"
}

if [ -e "$stamp" ] && verify; then
    publish
    log "cached install is current ($VENV)"
    exit 0
fi

started=$SECONDS
log "building $VENV (cold install, a few minutes)"
rm -rf "$VENV" "$HOME_DIR/READY"
mkdir -p "$HOME_DIR"
"$PYTHON" -m venv "$VENV"
pip=("$PY" -m pip install -q --no-input)
"${pip[@]}" torch==2.13.0
"${pip[@]}" --no-deps -r "$REQUIREMENTS"
"${pip[@]}" --no-deps sglang==0.5.21 sglang-router==0.3.2
site_packages="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp -r "$SHIM" "$site_packages/"
"$PY" "$PATCHER"
verify
touch "$stamp"
publish
log "installed in $((SECONDS - started)) s"
