"""Static checks of the deployment files: compose (base and Jetson), Dockerfile, entrypoint.sh.

No Docker engine runs in CI, so this validates what can be validated without one: both compose
files through `docker-compose config` (Debian's docker-compose) with assertions on the merged
configuration, the Dockerfile through hadolint, entrypoint.sh through shellcheck and by running
it with the server command and `python` replaced by stubs. A test that needs an external program
skips when it is missing, except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "docker-compose.yml"
JETSON = ROOT / "docker-compose.jetson.yml"
API_KEY = "test-shared-secret"
SERVED = "acme/gemma-served-name"


def tool(name: str) -> str:
    """Path of an external program; skip without it, but fail under CI=true."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        message = f"{name} is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: .ci/run must install it)")
        pytest.skip(message)
    return found


# --- docker-compose config --------------------------------------------------------------------


def compose_config(
    tmp_path: Path, *files: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with a clean environment (no developer .env is read)."""
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    base_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    args = [tool("docker-compose"), "--env-file", str(empty_env_file)]
    for f in files:
        args += ["-f", str(f)]
    return subprocess.run(
        [*args, "config"],
        cwd=ROOT,
        env={**base_env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


REQUIRED = {"HF_TOKEN": "hf_example", "SGLANG_API_KEY": API_KEY, "MODEL_NAME": SERVED}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    done = compose_config(tmp_path_factory.mktemp("base"), BASE, env=REQUIRED)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def jetson(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    done = compose_config(tmp_path_factory.mktemp("jetson"), BASE, JETSON, env=REQUIRED)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)  # type: ignore[no-any-return]


def flag(service: dict[str, Any], name: str) -> str:
    values = [a.split("=", 1)[1] for a in service["command"] if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} given {len(values)} times in {service['command']}"
    return values[0]


def normalised(service: dict[str, Any]) -> dict[str, Any]:
    """docker-compose prints `net: null` for one file and `net: {}` after a merge, and may list
    volumes in another order after a merge."""
    normal = {**service, "networks": {k: v or {} for k, v in service["networks"].items()}}
    if "volumes" in service:
        normal["volumes"] = sorted(service["volumes"])
    return normal


def check_invariants(config: dict[str, Any]) -> None:
    """What must hold on every platform."""
    services = config["services"]
    sglang, gateway, download = services["sglang"], services["gateway"], services["model-download"]
    # SGLang is never reachable from outside: no published port, no host network.
    assert "ports" not in sglang
    assert "network_mode" not in sglang
    assert set(sglang["networks"]) == {"backend"}
    assert config["networks"]["backend"]["internal"] is True
    # The gateway is the only door, and it talks to SGLang with the shared key.
    assert [p.split(":")[-1] for p in gateway["ports"]] == ["8000/tcp"]
    assert gateway["environment"]["SGLANG_URL"] == "http://sglang:30000"
    assert gateway["environment"]["HOST"] == "0.0.0.0"
    assert flag(sglang, "api-key") == gateway["environment"]["SGLANG_API_KEY"] == API_KEY
    # The name clients use is the name SGLang serves.
    assert flag(sglang, "served-model-name") == gateway["environment"]["MODEL_NAME"] == SERVED
    assert flag(sglang, "port") == "30000"
    # Start order: download -> healthy SGLang -> gateway.
    assert gateway["depends_on"]["sglang"]["condition"] == "service_healthy"
    assert sglang["depends_on"]["model-download"]["condition"] == ("service_completed_successfully")
    assert sglang["healthcheck"]["test"][0] == "CMD"
    assert "http://127.0.0.1:30000/" in " ".join(sglang["healthcheck"]["test"])
    # GPU reserved, shared memory, restarts.
    (device,) = sglang["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert sglang["shm_size"]
    assert sglang["restart"] == gateway["restart"] == "unless-stopped"
    assert download["restart"] == "no"
    # One Hugging Face cache on a named volume, the same path and HF_HOME on both sides.
    assert "hf-cache" in config["volumes"]
    for service in (sglang, download):
        assert "hf-cache:/hf-cache:rw" in service["volumes"]
        assert service["environment"]["HF_HOME"] == "/hf-cache"
    assert flag(sglang, "model-path") == download["environment"]["MODEL_REPO"]
    assert flag(sglang, "revision") == download["environment"]["MODEL_REVISION"]
    # The token goes to the download only.
    assert download["environment"]["HF_TOKEN"] == "hf_example"
    assert "HF_TOKEN" not in sglang["environment"]
    assert "HF_TOKEN" not in gateway["environment"]
    # A pinned image, never a moving tag.
    assert not sglang["image"].endswith(":latest")
    assert ":" in sglang["image"]


def test_base_compose_validates_and_keeps_the_invariants(base: dict[str, Any]) -> None:
    check_invariants(base)
    sglang = base["services"]["sglang"]
    assert sglang["image"] == "lmsysorg/sglang:v0.5.21-cu130"
    assert "/ready" in " ".join(sglang["healthcheck"]["test"])
    assert flag(sglang, "mem-fraction-static") == "0.85"
    assert flag(sglang, "context-length") == "32768"
    assert sglang["environment"]["HF_HUB_OFFLINE"] == "1"
    assert "runtime" not in sglang
    assert flag(sglang, "admin-api-key") == ""  # optional hardening, off unless set


def test_admin_key_is_passed_when_set(tmp_path: Path) -> None:
    done = compose_config(tmp_path, BASE, env={**REQUIRED, "SGLANG_ADMIN_API_KEY": "admin-only"})
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert flag(services["sglang"], "admin-api-key") == "admin-only"
    assert "admin-only" not in str(services["gateway"])  # the gateway never gets it


def test_jetson_override_keeps_the_invariants_and_changes_only_sglang(
    base: dict[str, Any], jetson: dict[str, Any]
) -> None:
    check_invariants(jetson)
    for name in ("gateway", "model-download"):
        assert normalised(jetson["services"][name]) == normalised(base["services"][name])
    assert jetson["networks"] == base["networks"]
    assert jetson["volumes"] == base["volumes"]
    sglang = jetson["services"]["sglang"]
    assert sglang["image"] == "dustynv/sglang:r36.4-cu129-24.04"
    assert sglang["runtime"] == "nvidia"
    assert flag(sglang, "attention-backend") == "triton"
    assert "--disable-cuda-graph" in sglang["command"]
    assert float(flag(sglang, "mem-fraction-static")) <= 0.5
    assert int(flag(sglang, "context-length")) <= 8192
    assert sglang["environment"]["TORCHDYNAMO_DISABLE"] == "1"
    assert sglang["environment"]["TORCH_COMPILE_DISABLE"] == "1"
    assert "/health_generate" in " ".join(sglang["healthcheck"]["test"])
    assert not any(a.startswith("--admin-api-key") for a in sglang["command"])  # not in 0.4.x


def test_stored_responses_live_on_a_volume_the_gateway_owns(base: dict[str, Any]) -> None:
    gateway = base["services"]["gateway"]
    assert any(volume.startswith("responses:/data") for volume in gateway["volumes"])
    assert "responses" in base["volumes"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "RESPONSES_STORE_PATH=/data/responses.sqlite3" in dockerfile
    assert (
        "chown -R app:app" in dockerfile
        and " /data" in dockerfile.split("chown -R app:app")[1].splitlines()[0]
    )


def test_memory_and_context_come_from_variables(tmp_path: Path) -> None:
    env = {**REQUIRED, "SGLANG_MEM_FRACTION_STATIC": "0.6", "SGLANG_CONTEXT_LENGTH": "2048"}
    for files in ((BASE,), (BASE, JETSON)):
        done = compose_config(tmp_path, *files, env=env)
        assert done.returncode == 0, done.stderr
        sglang = yaml.safe_load(done.stdout)["services"]["sglang"]
        assert flag(sglang, "mem-fraction-static") == "0.6"
        assert flag(sglang, "context-length") == "2048"


@pytest.mark.parametrize("missing", ["HF_TOKEN", "SGLANG_API_KEY"])
def test_required_variables_stop_compose_with_a_message(tmp_path: Path, missing: str) -> None:
    env = {k: v for k, v in REQUIRED.items() if k != missing}
    done = compose_config(tmp_path, BASE, env=env)
    assert done.returncode != 0
    assert f"{missing} is required" in done.stderr


def test_env_example_lists_every_compose_variable() -> None:
    used: set[str] = set()
    required: set[str] = set()
    for f in (BASE, JETSON):
        text = f.read_text()
        used |= set(re.findall(r"\$\{([A-Z0-9_]+)", text))
        required |= set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    example = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?([A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert used <= listed, f"not in .env.example: {sorted(used - listed)}"
    assert required == {"HF_TOKEN", "SGLANG_API_KEY"}
    for name in required:  # required values are present, uncommented and empty
        assert re.search(rf"^{name}=$", example, flags=re.MULTILINE)


# --- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert re.match(r"FROM python:3\.\d+\.\d+-slim-bookworm$", lines[0])  # multi-arch, pinned
    deps = next(i for i, ln in enumerate(lines) if ln.startswith("COPY requirements.txt"))
    code = lines.index("COPY . .")
    assert deps < code  # dependencies before the code
    assert any(ln.startswith("USER 10001") for ln in lines[code:])  # non-root at run time
    assert 'ENTRYPOINT ["/app/entrypoint.sh"]' in lines  # exec form
    assert 'CMD ["python", "app.py"]' in lines
    assert "ARG WITH_WHISPER=0" in lines
    healthcheck = next(ln for ln in lines if ln.startswith('CMD ["python", "-c"'))
    assert "/health'" in healthcheck


def test_dockerignore_keeps_secrets_and_history_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for entry in (".env", ".git", ".venv", "tests"):
        assert entry in ignored


def test_whisper_extras_are_pinned() -> None:
    lines = [
        ln
        for ln in (ROOT / "requirements-whisper.txt").read_text().splitlines()
        if ln and not ln.startswith("#")
    ]
    assert lines
    assert all(re.fullmatch(r"[a-z-]+==[\w.]+", ln) for ln in lines)
    assert any(ln.startswith("openai-whisper==") for ln in lines)


# --- entrypoint.sh ------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["entrypoint.sh", "scripts/install-real-sglang.sh"])
def test_shell_scripts_pass_shellcheck(script: str) -> None:
    done = subprocess.run(
        [tool("shellcheck"), str(ROOT / script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    """A `python` that records its arguments, and a server that records its pid and SIGTERM."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"
    python.write_text('#!/bin/sh\necho "$*" >> "$STUB_CALLS"\nexit "${STUB_EXIT:-0}"\n')
    server = bin_dir / "fake-server"
    server.write_text(
        "#!/usr/bin/env bash\n"
        'echo "$$ $*" > "$STUB_SERVER"\n'
        "trap 'echo TERM >> \"$STUB_SERVER\"; exit 0' TERM\n"
        "while :; do sleep 0.05; done\n"
    )
    for f in (python, server):
        f.chmod(0o755)
    return tmp_path


def entrypoint_env(stubs: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOWNLOAD_")}
    env.update(
        PATH=f"{stubs / 'bin'}:{os.environ['PATH']}",
        STUB_CALLS=str(stubs / "calls"),
        STUB_SERVER=str(stubs / "server"),
        **extra,
    )
    return env


def wait_for(path: Path, text: str = "") -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and text in (content := path.read_text()):
            return content
        time.sleep(0.02)
    raise AssertionError(f"{path} never contained {text!r}")


def start(stubs: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(ROOT / "entrypoint.sh"), str(stubs / "bin" / "fake-server"), "--port", "8000"],
        env=entrypoint_env(stubs, **env),
        stderr=subprocess.PIPE,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    if proc.stderr is not None:
        proc.stderr.close()


@pytest.mark.parametrize("switch", ["", "0", "false", "off"])
def test_entrypoint_execs_the_server_without_downloading(stubs: Path, switch: str) -> None:
    proc = start(stubs, DOWNLOAD_MODEL=switch)
    try:
        pid, *args = wait_for(stubs / "server").split()
        assert int(pid) == proc.pid  # exec: the server replaced the shell, same process
        assert args == ["--port", "8000"]
        assert not (stubs / "calls").exists()
        proc.send_signal(signal.SIGTERM)  # reaches the server directly
        assert proc.wait(timeout=10) == 0
        assert "TERM" in (stubs / "server").read_text()
    finally:
        stop(proc)


@pytest.mark.parametrize("switch", ["1", "true", "YES", "on"])
def test_entrypoint_downloads_first_when_asked(stubs: Path, switch: str) -> None:
    proc = start(stubs, DOWNLOAD_MODEL=switch)
    try:
        pid = wait_for(stubs / "server").split()[0]
        assert int(pid) == proc.pid
        assert (stubs / "calls").read_text().splitlines() == [str(ROOT / "download_model.py")]
    finally:
        stop(proc)


def test_entrypoint_fetches_whisper_when_named(stubs: Path) -> None:
    proc = start(stubs, DOWNLOAD_WHISPER_MODEL="base")
    try:
        wait_for(stubs / "server")
        calls = (stubs / "calls").read_text().splitlines()
        assert calls == [f"{ROOT / 'download_model.py'} --no-model --whisper base"]
    finally:
        stop(proc)


def test_a_failed_download_stops_before_the_server(stubs: Path) -> None:
    done = subprocess.run(
        [str(ROOT / "entrypoint.sh"), str(stubs / "bin" / "fake-server")],
        env=entrypoint_env(stubs, DOWNLOAD_MODEL="1", STUB_EXIT="3"),
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 3  # download_model.py's own exit code (access refused)
    assert not (stubs / "server").exists()


def test_a_bad_switch_value_is_refused(stubs: Path) -> None:
    done = subprocess.run(
        [str(ROOT / "entrypoint.sh"), str(stubs / "bin" / "fake-server")],
        env=entrypoint_env(stubs, DOWNLOAD_MODEL="maybe"),
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 2
    assert "DOWNLOAD_MODEL must be 1/true/yes/on or 0/false/no/off" in done.stderr
    assert not (stubs / "server").exists()


def test_entrypoint_default_command_is_the_gateway(stubs: Path) -> None:
    done = subprocess.run(
        [str(ROOT / "entrypoint.sh")],
        env=entrypoint_env(stubs),
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 0
    assert (stubs / "calls").read_text().splitlines() == [str(ROOT / "app.py")]
