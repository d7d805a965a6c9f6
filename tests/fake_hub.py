"""A local stand-in for the Hugging Face Hub's HTTP API, served on 127.0.0.1 for download tests.

It answers the requests the real `huggingface_hub` client makes for `snapshot_download` when
HF_ENDPOINT points at it: repo info (`/api/models/{repo}/revision/{rev}`), the file listing
(`/api/models/{repo}/tree/{rev}`), and file HEAD/GET (`/{repo}/resolve/{rev}/{path}`, with Range
support and the X-Repo-Commit / ETag / X-Linked-* headers). Like the real Hub for a gated model,
metadata is public while files need a token: no token gives 401, a token without access 403, both
with `X-Error-Code: GatedRepo`; an unknown repo gives 404 `RepoNotFound`. Faults can be injected
per file: cut the connection once mid-body, stall mid-body until released, or fail with a status.
It also serves plain files (`/files/{name}`) for the Whisper checkpoint fetch.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class FakeRepo:
    """One model repo: its files at a single commit, reachable under the listed revisions."""

    repo_id: str
    files: dict[str, bytes]
    commit: str = "a" * 40
    revisions: tuple[str, ...] = ("main",)
    gated: bool = True

    def resolves(self, revision: str) -> bool:
        return revision == self.commit or revision in self.revisions

    def etag(self, path: str) -> str:
        data = self.files[path]
        if path.endswith(LFS_SUFFIXES):
            return hashlib.sha256(data).hexdigest()
        return git_blob_sha1(data)


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class FakeHub:
    """The server state; use `serve()` to run it in a thread."""

    repos: list[FakeRepo]
    valid_token: str = "hf_valid_token"
    plain_files: dict[str, bytes] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    cut_once: set[str] = field(default_factory=set)
    stall: set[str] = field(default_factory=set)
    fail: dict[str, int] = field(default_factory=dict)
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""
    ignore_range: bool = False

    def repo(self, repo_id: str) -> FakeRepo | None:
        return next((r for r in self.repos if r.repo_id == repo_id), None)

    def file_requests(self, method: str = "GET") -> list[str]:
        """Repo paths fetched with `method` via /resolve/, in order."""
        out = []
        for r in self.requests:
            if r.method == method and "/resolve/" in r.path:
                out.append(r.path.split("/resolve/", 1)[1].split("/", 1)[1])
        return out

    @contextmanager
    def serve(self) -> Iterator[FakeHub]:
        handler = type("BoundHandler", (_Handler,), {"hub": self})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            yield self
        finally:
            self.release.set()
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    # --- routing ------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, *, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.requests.append(
            Request(
                self.command, path, self.headers.get("Range"), self.headers.get("Authorization")
            )
        )
        if path.startswith("/files/"):
            name = path.removeprefix("/files/")
            if name not in self.hub.plain_files:
                return self._error(404, "EntryNotFound")
            return self._send_file(self.hub.plain_files[name], name, {}, head=head)
        if path.startswith("/api/models/"):
            return self._api(path.removeprefix("/api/models/"))
        parts = path.lstrip("/").split("/")
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            return self._resolve(repo_id, revision, name, head=head)
        return self._error(404, None)

    def _api(self, rest: str) -> None:
        parts = rest.split("/")
        repo = self.hub.repo("/".join(parts[:2]))
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if len(parts) >= 4 and parts[2] in ("revision", "tree"):
            revision = parts[3]
            if not repo.resolves(revision):
                return self._error(404, "RevisionNotFound", "Invalid rev id")
            if parts[2] == "revision":
                body: object = {
                    "id": repo.repo_id,
                    "sha": repo.commit,
                    "private": False,
                    "gated": "manual" if repo.gated else False,
                    "siblings": [{"rfilename": p} for p in sorted(repo.files)],
                }
            else:
                body = [_tree_entry(repo, p) for p in sorted(repo.files)]
            return self._json(body)
        return self._error(404, None)

    def _resolve(self, repo_id: str, revision: str, name: str, *, head: bool) -> None:
        repo = self.hub.repo(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if not repo.resolves(revision):
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        if repo.gated:
            auth = self.headers.get("Authorization")
            if auth is None:
                return self._error(
                    401,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it "
                    "and be authenticated to access it. Please log in.",
                )
            if auth != f"Bearer {self.hub.valid_token}":
                return self._error(
                    403,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted and you are not in the "
                    "authorized list.",
                )
        if name not in repo.files:
            return self._error(404, "EntryNotFound", "Entry not found", commit=repo.commit)
        if not head and name in self.hub.fail:
            return self._error(self.hub.fail[name], None, commit=repo.commit)
        etag = repo.etag(name)
        data = repo.files[name]
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{etag}"'}
        if name.endswith(LFS_SUFFIXES):
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(data))
        self._send_file(data, name, headers, head=head)

    # --- responses ----------------------------------------------------------------------------

    def _send_file(self, data: bytes, name: str, headers: dict[str, str], *, head: bool) -> None:
        start = 0
        range_header = self.headers.get("Range")
        if range_header and not head and not self.hub.ignore_range:
            start = int(range_header.removeprefix("bytes=").split("-", 1)[0])
        if start >= len(data) and start > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start:]
        self.send_response(206 if start else 200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if head:
            return
        if name in self.hub.cut_once or name in self.hub.stall:
            half = body[: len(body) // 2]
            self.wfile.write(half)
            self.wfile.flush()
            if name in self.hub.stall:
                self.hub.stall.discard(name)
                self.hub.stalled.set()
                self.hub.release.wait(timeout=30)
            self.hub.cut_once.discard(name)
            self.close_connection = True
            return
        self.wfile.write(body)

    def _json(self, body: object) -> None:
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _error(
        self, status: int, code: str | None, message: str = "error", commit: str | None = None
    ) -> None:
        raw = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)


def _tree_entry(repo: FakeRepo, path: str) -> dict[str, object]:
    data = repo.files[path]
    entry: dict[str, object] = {
        "type": "file",
        "oid": git_blob_sha1(data),
        "size": len(data),
        "path": path,
    }
    if path.endswith(LFS_SUFFIXES):
        entry["lfs"] = {
            "oid": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "pointerSize": 134,
        }
    return entry
