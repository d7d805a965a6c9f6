"""Tests for download_model.py: the real huggingface_hub client against tests/fake_hub.py.

Each test points the client at a local stand-in of the Hub (HF_ENDPOINT) and runs `main(argv)`
as the entrypoint would; one test kills a real download process half-way to show a re-run only
fetches what is missing.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import socket
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_hub import FakeHub, FakeRepo
from huggingface_hub import constants as hf_constants

import download_model
from download_model import ExitCode, main

ROOT = Path(__file__).resolve().parent.parent
REPO = "google/gemma-3n-E4B-it"
TOKEN = "hf_valid_token"
SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"


def _files() -> dict[str, bytes]:
    rng = random.Random(3)
    return {
        "config.json": b'{"model_type": "gemma3n"}',
        SHARD1: rng.randbytes(600_000),
        SHARD2: rng.randbytes(400_000),
        "tokenizer.json": b'{"version": "1.0"}',
    }


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub([FakeRepo(REPO, _files())], valid_token=TOKEN)
    with fake.serve():
        yield fake


@pytest.fixture
def cache(tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment: the fake Hub, a valid token, no .env, an empty cache folder."""
    for name in ("MODEL_REPO", "MODEL_REVISION", "MODEL_CACHE_DIR", "MODEL_LOCAL_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("MODEL_INCLUDE", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "hub-cache"


def _run(cache: Path, *extra: str) -> int:
    return main(["--cache-dir", str(cache), "--quiet", *extra])


def _snapshot(cache: Path) -> Path:
    return cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / ("a" * 40)


def test_complete_download_then_second_run_downloads_nothing(
    cache: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(cache) == ExitCode.OK
    for name, data in _files().items():
        assert (_snapshot(cache) / name).read_bytes() == data
    assert sorted(hub.file_requests("GET")) == sorted(_files())

    hub.requests.clear()
    capsys.readouterr()
    assert _run(cache) == ExitCode.OK
    assert hub.file_requests("GET") == []
    assert hub.file_requests("HEAD") == []
    assert "nothing to download" in capsys.readouterr().err


def test_pinned_commit_makes_no_request_at_all_once_complete(cache: Path, hub: FakeHub) -> None:
    assert _run(cache, "--revision", "a" * 40) == ExitCode.OK
    hub.requests.clear()
    assert _run(cache, "--revision", "a" * 40) == ExitCode.OK
    assert [r.path for r in hub.requests if "/api/models/" in r.path or "/resolve/" in r.path] == []


def test_check_reports_complete_and_incomplete_copies_offline(
    cache: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(cache, "--check") == ExitCode.INCOMPLETE
    assert "no record of a download" in capsys.readouterr().err

    assert _run(cache) == ExitCode.OK
    hub.requests.clear()
    capsys.readouterr()
    assert _run(cache, "--check") == ExitCode.OK
    assert "complete (4 files)" in capsys.readouterr().err

    (_snapshot(cache) / SHARD2).resolve().unlink()  # the blob behind the snapshot link
    blob = (_snapshot(cache) / SHARD1).resolve()
    blob.write_bytes(blob.read_bytes()[:1000])
    assert _run(cache, "--check") == ExitCode.INCOMPLETE
    err = capsys.readouterr().err
    assert f"missing: {SHARD2}" in err
    assert f"wrong size: {SHARD1} (1000 bytes, expected 600000)" in err
    assert hub.requests == []  # --check never touches the network


def test_a_cut_connection_resumes_with_a_range_request(
    cache: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # huggingface_hub reads the body in 10 MB chunks and resumes from the last whole chunk; a
    # 64 KiB chunk lets a 600 kB shard show the same thing.
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 65_536)
    hub.cut_once.add(SHARD1)  # the server sends 300 000 bytes of 600 000, then hangs up
    assert _run(cache) == ExitCode.OK
    gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith(SHARD1)]
    assert [g.range for g in gets] == [None, f"bytes={4 * 65_536}-"]
    assert (_snapshot(cache) / SHARD1).read_bytes() == _files()[SHARD1]


def test_rerun_after_a_killed_download_fetches_only_what_is_missing(
    cache: Path, hub: FakeHub, tmp_path: Path
) -> None:
    hub.stall.add(SHARD2)  # files go one at a time in sorted order: config, shard 1, shard 2
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN}
    args = ["--cache-dir", str(cache), "--max-workers", "1", "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "download_model.py"), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert hub.stalled.wait(timeout=20), "the download never reached the second shard"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        hub.release.set()
    assert set(hub.file_requests("GET")) == {"config.json", SHARD1, SHARD2}

    hub.requests.clear()
    assert _run(cache, "--max-workers", "1") == ExitCode.OK
    assert sorted(hub.file_requests("GET")) == [SHARD2, "tokenizer.json"]
    assert _run(cache, "--check") == ExitCode.OK


def test_no_token_on_a_gated_model_says_where_to_accept_the_licence(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HF_TOKEN")
    assert _run(cache) == ExitCode.ACCESS_DENIED
    err = capsys.readouterr().err
    assert "HTTP 401" in err
    assert f"https://huggingface.co/{REPO}" in err
    assert "accept the Gemma licence" in err
    assert "HF_TOKEN" in err


def test_a_token_without_access_gets_403_and_the_licence_link(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_not_allowed")
    assert _run(cache) == ExitCode.ACCESS_DENIED
    err = capsys.readouterr().err
    assert "HTTP 403" in err
    assert f"Accept the licence at https://huggingface.co/{REPO}" in err
    assert TOKEN not in err  # never echo a token
    assert "hf_not_allowed" not in err


def test_unknown_repo_exits_4(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(cache, "--repo", "google/no-such-model") == ExitCode.NOT_FOUND
    err = capsys.readouterr().err
    assert "google/no-such-model was not found on the Hub (HTTP 404)" in err
    assert "MODEL_REPO" in err


def test_unknown_revision_exits_4(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(cache, "--revision", "v9") == ExitCode.NOT_FOUND
    assert "revision 'v9'" in capsys.readouterr().err


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_unreachable_hub_exits_6(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", _closed_port_url())
    assert _run(cache) == ExitCode.UNREACHABLE
    err = capsys.readouterr().err
    assert "cannot reach http://127.0.0.1:" in err
    assert "HTTPS_PROXY" in err


def test_unreachable_hub_with_a_complete_copy_carries_on(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(cache) == ExitCode.OK
    monkeypatch.setenv("HF_ENDPOINT", _closed_port_url())
    assert _run(cache) == ExitCode.OK
    assert "the local copy is complete" in capsys.readouterr().err


def test_not_enough_disk_space_is_caught_before_downloading(
    cache: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(download_model, "free_bytes", lambda path: 10_000)
    assert _run(cache) == ExitCode.DISK_FULL
    assert "not enough disk space" in capsys.readouterr().err
    assert hub.file_requests("GET") == []


def test_disk_full_while_writing_exits_5(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = download_model.snapshot_download

    def full_disk(**kwargs: object) -> object:
        if kwargs.get("dry_run"):
            return real(**kwargs)  # type: ignore[call-overload]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download_model, "snapshot_download", full_disk)
    assert _run(cache) == ExitCode.DISK_FULL
    assert "disk full while writing" in capsys.readouterr().err


def test_settings_choose_repo_revision_folder_and_patterns(
    cache: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_REPO", REPO)
    monkeypatch.setenv("MODEL_REVISION", "main")
    monkeypatch.setenv("MODEL_CACHE_DIR", str(cache))
    monkeypatch.setenv("MODEL_INCLUDE", "config.json, *.safetensors")
    assert main(["--quiet"]) == ExitCode.OK
    assert sorted(hub.file_requests("GET")) == ["config.json", SHARD1, SHARD2]
    assert not (_snapshot(cache) / "tokenizer.json").exists()
    assert main(["--check"]) == ExitCode.OK


def test_local_dir_gets_a_plain_copy(cache: Path, tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    assert main(["--local-dir", str(folder), "--quiet"]) == ExitCode.OK
    assert (folder / SHARD2).read_bytes() == _files()[SHARD2]
    assert main(["--local-dir", str(folder), "--check"]) == ExitCode.OK


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-model"]) == ExitCode.USAGE
    assert main(["--cache-dir", "a", "--local-dir", "b"]) == ExitCode.USAGE
    assert main(["--help"]) == ExitCode.OK
    assert "Exit codes" in capsys.readouterr().out


# --- Whisper -------------------------------------------------------------------------------

CHECKPOINT = random.Random(5).randbytes(300_000)
CHECKPOINT_SHA = hashlib.sha256(CHECKPOINT).hexdigest()


@pytest.fixture
def whisper_url(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> str:
    """openai-whisper's URL table, pointed at the local server (the package itself is optional)."""
    name = f"{CHECKPOINT_SHA}/tiny.pt"
    hub.plain_files[name] = CHECKPOINT
    url = f"{hub.url}/files/{name}"
    fake = types.ModuleType("whisper")
    fake._MODELS = {"tiny": url, "base": f"{hub.url}/files/{'0' * 64}/base.pt"}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "whisper", fake)
    return url


def test_whisper_checkpoint_fetched_verified_and_not_fetched_twice(
    cache: Path, hub: FakeHub, whisper_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "whisper"
    args = ["--no-model", "--whisper", "tiny", "--whisper-dir", str(folder)]
    assert main(args) == ExitCode.OK
    assert (folder / "tiny.pt").read_bytes() == CHECKPOINT
    assert main([*args, "--check"]) == ExitCode.OK
    hub.requests.clear()
    assert main(args) == ExitCode.OK
    assert hub.requests == []


def test_whisper_default_folder_is_whispers_own(
    cache: Path, whisper_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WHISPER_DOWNLOAD_ROOT", raising=False)
    assert main(["--no-model", "--whisper", "tiny"]) == ExitCode.OK
    assert (Path(os.environ["XDG_CACHE_HOME"]) / "whisper" / "tiny.pt").is_file()


def test_whisper_folder_follows_the_gateways_setting(
    cache: Path, whisper_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WHISPER_DOWNLOAD_ROOT", str(tmp_path / "asr"))
    assert main(["--no-model", "--whisper", "tiny"]) == ExitCode.OK
    assert (tmp_path / "asr" / "tiny.pt").is_file()


def test_whisper_resumes_a_partial_file(
    cache: Path, hub: FakeHub, whisper_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "whisper"
    folder.mkdir()
    (folder / "tiny.pt.partial").write_bytes(CHECKPOINT[:100_000])
    assert main(["--no-model", "--whisper", "tiny", "--whisper-dir", str(folder)]) == 0
    assert [r.range for r in hub.requests] == ["bytes=100000-"]
    assert (folder / "tiny.pt").read_bytes() == CHECKPOINT
    assert not (folder / "tiny.pt.partial").exists()


def test_whisper_failures_are_explained(
    cache: Path,
    whisper_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = str(tmp_path / "whisper")
    assert main(["--no-model", "--whisper", "huge", "--whisper-dir", folder]) == 4
    assert "unknown Whisper model 'huge'; known: base, tiny" in capsys.readouterr().err
    assert main(["--no-model", "--whisper", "base", "--whisper-dir", folder]) == 4
    assert main(["--no-model", "--whisper", "tiny", "--whisper-dir", folder, "--check"]) == 7

    monkeypatch.setitem(sys.modules, "whisper", None)  # not installed
    assert main(["--no-model", "--whisper", "tiny", "--whisper-dir", folder]) == ExitCode.ERROR
    assert "WITH_WHISPER=1" in capsys.readouterr().err


def test_whisper_corrupted_download_is_discarded(
    cache: Path,
    hub: FakeHub,
    whisper_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hub.plain_files[f"{CHECKPOINT_SHA}/tiny.pt"] = b"not the checkpoint"
    folder = tmp_path / "whisper"
    assert main(["--no-model", "--whisper", "tiny", "--whisper-dir", str(folder)]) == 1
    assert "SHA-256 mismatch" in capsys.readouterr().err
    assert list(folder.iterdir()) == []


def test_whisper_host_unreachable_exits_6(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    base = _closed_port_url()
    fake = types.ModuleType("whisper")
    fake._MODELS = {"tiny": f"{base}/{CHECKPOINT_SHA}/tiny.pt"}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "whisper", fake)
    args = ["--no-model", "--whisper", "tiny", "--whisper-dir", str(tmp_path / "w")]
    assert main(args) == ExitCode.UNREACHABLE
    assert f"cannot reach {base}/" in capsys.readouterr().err
