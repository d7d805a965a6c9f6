"""Fetch the model weights ahead of time, and check offline that a complete copy is present.

Owns the download step of the deployment (issue 5): `main(argv) -> int` downloads MODEL_REPO at
MODEL_REVISION with huggingface_hub's `snapshot_download` into the Hugging Face cache SGLang reads
(or a plain folder), and optionally one Whisper checkpoint for the audio fallback. It reads the
gateway's `Settings` (HF_TOKEN, HF_ENDPOINT, MODEL_REPO, MODEL_REVISION, MODEL_CACHE_DIR,
MODEL_LOCAL_DIR, MODEL_INCLUDE); flags override them. It never prompts and is safe to re-run: a
complete copy costs one metadata request (none when the revision is a commit hash) and no file
transfer. Exit codes, so scripts and `depends_on` can tell failures apart:

    0 done (or, with --check, the copy is complete)   4 repo, revision or Whisper model not found
    1 unexpected error (message says what)             5 disk full / not enough free space
    2 bad command line                                 6 the Hub (or Whisper's host) unreachable
    3 access refused: token missing, wrong, or the     7 --check: the local copy is incomplete
      Gemma licence not accepted (401/403)

Resuming: an interrupted transfer resumes within the run with an HTTP Range request (huggingface_hub
retries); after a crash or Ctrl-C, a re-run skips every file already complete and fetches the
rest (huggingface_hub 2.x restarts a half-fetched file from its start). Whisper checkpoints resume
byte-wise across runs from their `.partial` file.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import httpx
import httpx2
from huggingface_hub import constants as hf_constants
from huggingface_hub import get_cached_repo_tree, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import filter_repo_objects  # type: ignore[attr-defined]
from huggingface_hub.utils import tqdm as hf_tqdm  # type: ignore[attr-defined]
from pydantic import ValidationError

from gateway.settings import Settings

logger = logging.getLogger("download_model")

HUB_WEB = "https://huggingface.co"
# openai-whisper's own layout: the checkpoint URL ends in /<sha256>/<name>.pt and
# whisper.load_model(name, download_root=D) looks for D/<name>.pt (whisper/__init__.py::_download).
WHISPER_CHUNK = 1 << 20


class ExitCode(IntEnum):
    """Process exit status of `main`; documented in the module docstring."""

    OK = 0
    ERROR = 1
    USAGE = 2
    ACCESS_DENIED = 3
    NOT_FOUND = 4
    DISK_FULL = 5
    UNREACHABLE = 6
    INCOMPLETE = 7
    INTERRUPTED = 130


class DownloadFailed(Exception):
    """A failure already explained for a person: `str(exc)` says what to do, `code` is the exit."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ModelTarget:
    """What to download and where."""

    repo: str
    revision: str
    cache_dir: str
    local_dir: str | None
    include: list[str] | None
    token: str | None = field(repr=False)  # never printed
    endpoint: str | None

    @property
    def destination(self) -> str:
        return self.local_dir or self.cache_dir

    @property
    def hub_page(self) -> str:
        return f"{HUB_WEB}/{self.repo}"


@dataclass(frozen=True)
class CheckReport:
    """Outcome of the offline completeness check."""

    expected: int
    problems: list[str]

    @property
    def complete(self) -> bool:
        return self.expected > 0 and not self.problems


class _SilentTqdm(hf_tqdm):
    """A progress bar that never draws: used for the planning pass and --quiet."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]


# --- command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="download_model.py",
        description=(
            "Download the model weights for SGLang (and optionally a Whisper checkpoint). "
            "Defaults come from the gateway's settings (environment or .env)."
        ),
        epilog="Exit codes: 0 ok, 1 error, 2 usage, 3 access refused, 4 not found, "
        "5 disk full, 6 network unreachable, 7 --check found an incomplete copy.",
    )
    parser.add_argument("--repo", help="Hugging Face repo id (default: MODEL_REPO)")
    parser.add_argument("--revision", help="branch, tag or commit (default: MODEL_REVISION)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--cache-dir", help="hub cache folder (default: MODEL_CACHE_DIR or HF's)")
    where.add_argument("--local-dir", help="plain folder instead of the cache (MODEL_LOCAL_DIR)")
    parser.add_argument(
        "--include",
        action="append",
        metavar="PATTERN",
        help="only files matching this glob; repeatable (default: MODEL_INCLUDE, else all)",
    )
    parser.add_argument(
        "--token", help="Hugging Face token (default: HF_TOKEN; prefer the variable)"
    )
    parser.add_argument("--endpoint", help="Hub URL for a mirror (default: HF_ENDPOINT)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="verify offline that a complete copy is present; download nothing",
    )
    parser.add_argument(
        "--no-model", action="store_true", help="skip the Hugging Face model (e.g. Whisper only)"
    )
    parser.add_argument("--whisper", metavar="NAME", help="also fetch this Whisper checkpoint")
    parser.add_argument(
        "--whisper-dir",
        help="Whisper checkpoint folder (default: WHISPER_DOWNLOAD_ROOT, else ~/.cache/whisper)",
    )
    parser.add_argument("--max-workers", type=int, default=8, help="files fetched at once")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def resolve_target(args: argparse.Namespace, settings: Settings) -> ModelTarget:
    """Merge flags over settings into one `ModelTarget`."""
    include = args.include
    if include is None:
        include = [p.strip() for p in settings.model_include.split(",") if p.strip()] or None
    token = args.token
    if token is None and settings.hf_token is not None:
        token = settings.hf_token.get_secret_value() or None
    local_dir = args.local_dir
    cache_dir = args.cache_dir
    if local_dir is None and cache_dir is None:
        local_dir = settings.model_local_dir or None
        cache_dir = settings.model_cache_dir or None
    return ModelTarget(
        repo=args.repo or settings.model_repo,
        revision=args.revision or settings.model_revision,
        cache_dir=str(Path(cache_dir or hf_constants.HF_HUB_CACHE).expanduser()),
        local_dir=str(Path(local_dir).expanduser()) if local_dir else None,
        include=include,
        token=token,
        endpoint=(args.endpoint or settings.hf_endpoint or None),
    )


# --- the Hugging Face model ---------------------------------------------------------------


def free_bytes(path: str) -> int:
    """Free space on the filesystem that holds `path` (or its nearest existing parent)."""
    probe = Path(path).resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_model(target: ModelTarget) -> CheckReport:
    """Offline: is every expected file of `target` present with the size the Hub listed?

    huggingface_hub records the Hub's file listing (paths and sizes) for each downloaded commit;
    this compares the files on disk against it without any network call.
    """
    try:
        tree = get_cached_repo_tree(
            target.repo,
            revision=target.revision,
            cache_dir=target.cache_dir,
            local_dir=target.local_dir,
        )
    except CachedRepoTreeNotFoundError:
        return CheckReport(
            expected=0,
            problems=[
                f"no record of a download of {target.repo} at revision {target.revision!r} "
                f"in {target.destination}"
            ],
        )
    sizes = {entry.path: entry.size for entry in tree}
    wanted = list(filter_repo_objects(items=sorted(sizes), allow_patterns=target.include))
    problems: list[str] = []
    for name in wanted:
        path = _local_path(target, name)
        if path is None or not os.path.isfile(path):
            problems.append(f"missing: {name}")
        elif (actual := os.path.getsize(path)) != sizes[name]:
            problems.append(f"wrong size: {name} ({actual} bytes, expected {sizes[name]})")
    if not wanted:
        problems.append(f"no file of {target.repo} matches {target.include}")
    return CheckReport(expected=len(wanted), problems=problems)


def _local_path(target: ModelTarget, name: str) -> str | None:
    if target.local_dir is not None:
        return os.path.join(target.local_dir, *name.split("/"))
    found = try_to_load_from_cache(
        target.repo, name, cache_dir=target.cache_dir, revision=target.revision
    )
    return found if isinstance(found, str) else None


def download_model(target: ModelTarget, *, max_workers: int, quiet: bool) -> str:
    """Download what is missing of `target`; returns the snapshot folder. Raises on failure."""
    common: dict[str, Any] = {
        "repo_id": target.repo,
        "revision": target.revision,
        "cache_dir": target.cache_dir,
        "local_dir": target.local_dir,
        "allow_patterns": target.include,
        "token": target.token,
        "endpoint": target.endpoint,
        "max_workers": max_workers,
    }
    # Plan first: a dry run lists what would be fetched, so a full disk is reported before
    # gigabytes are transferred, and a complete copy is left alone.
    plan = snapshot_download(**common, dry_run=True, tqdm_class=_SilentTqdm)
    missing = [f for f in plan if f.will_download]
    if not missing:
        logger.info(
            "%s@%s: all %d files already present in %s; nothing to download",
            target.repo,
            target.revision,
            len(plan),
            target.destination,
        )
        return _snapshot_dir(target, plan[0].commit_hash if plan else None)
    needed = sum(f.file_size or 0 for f in missing)
    available = free_bytes(target.destination)
    if needed > available:
        raise DownloadFailed(
            ExitCode.DISK_FULL,
            f"not enough disk space in {target.destination}: {len(missing)} files need "
            f"{_gib(needed)}, only {_gib(available)} is free. Free space there, or point "
            "MODEL_CACHE_DIR (--cache-dir) or the compose volume at a bigger disk.",
        )
    logger.info(
        "%s@%s: fetching %d of %d files (%s) into %s",
        target.repo,
        target.revision,
        len(missing),
        len(plan),
        _gib(needed),
        target.destination,
    )
    return str(snapshot_download(**common, tqdm_class=_SilentTqdm if quiet else None))


def _snapshot_dir(target: ModelTarget, commit: str | None) -> str:
    if target.local_dir is not None or commit is None:
        return target.destination
    folder = repo_folder_name(repo_id=target.repo, repo_type="model")
    return os.path.join(target.cache_dir, folder, "snapshots", commit)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


# --- Whisper --------------------------------------------------------------------------------


def whisper_checkpoint_url(name: str) -> str:
    """The URL openai-whisper itself would download `name` from (its `_MODELS` table)."""
    try:
        import whisper  # optional extra, heavy (torch): imported only when asked
    except ImportError as exc:
        raise DownloadFailed(
            ExitCode.ERROR,
            "openai-whisper is not installed: build the image with --build-arg WITH_WHISPER=1 "
            "or run pip install -r requirements-whisper.txt",
        ) from exc
    models: dict[str, str] = dict(whisper._MODELS)
    if name not in models:
        raise DownloadFailed(
            ExitCode.NOT_FOUND,
            f"unknown Whisper model {name!r}; known: {', '.join(sorted(models))}",
        )
    return models[name]


def default_whisper_dir() -> str:
    """openai-whisper's default download_root."""
    cache = os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return os.path.join(cache, "whisper")


def check_whisper(url: str, folder: str) -> CheckReport:
    """Offline: is the checkpoint present with the SHA-256 its URL names?"""
    target = Path(folder) / os.path.basename(url)
    if not target.is_file():
        return CheckReport(expected=1, problems=[f"missing: {target}"])
    if _sha256(target) != _expected_sha256(url):
        return CheckReport(expected=1, problems=[f"checksum mismatch: {target}"])
    return CheckReport(expected=1, problems=[])


def fetch_whisper(url: str, folder: str, *, client: httpx.Client | None = None) -> Path:
    """Download one Whisper checkpoint into `folder`, resuming its `.partial`; SHA-256 checked."""
    target = Path(folder) / os.path.basename(url)
    if check_whisper(url, folder).complete:
        logger.info("whisper: %s already present and verified", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    owns_client = client is None
    http = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0))
    try:
        _stream_resumable(http, url, partial)
    finally:
        if owns_client:
            http.close()
    if _sha256(partial) != _expected_sha256(url):
        partial.unlink()
        raise DownloadFailed(
            ExitCode.ERROR, f"whisper: {url} arrived corrupted (SHA-256 mismatch); run again"
        )
    partial.replace(target)
    logger.info("whisper: saved %s", target)
    return target


def _stream_resumable(http: httpx.Client, url: str, partial: Path) -> None:
    offset = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with http.stream("GET", url, headers=headers) as response:
        if response.status_code == 416:  # the .partial already holds every byte
            return
        response.raise_for_status()
        resumed = response.status_code == 206
        if offset and not resumed:
            logger.info("whisper: server ignored the range request; starting over")
        else:
            logger.info("whisper: resuming %s at byte %d", partial.name, offset)
        with partial.open("ab" if resumed else "wb") as out:
            for chunk in response.iter_bytes(WHISPER_CHUNK):
                out.write(chunk)


def _expected_sha256(url: str) -> str:
    return url.rstrip("/").split("/")[-2]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(WHISPER_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


# --- errors for people ----------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def explain(exc: BaseException, target: ModelTarget | None) -> DownloadFailed:
    """Turn a huggingface_hub / network / OS error into a message a person can act on."""
    repo = target.repo if target else "the model"
    page = target.hub_page if target else HUB_WEB
    where = target.destination if target else "the download folder"
    for err in _chain(exc):
        if isinstance(err, DownloadFailed):
            return err
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return DownloadFailed(
                ExitCode.DISK_FULL,
                f"disk full while writing to {where}: free space there, or point MODEL_CACHE_DIR "
                "(--cache-dir) or the compose volume at a bigger disk, then run again "
                "(completed files are kept).",
            )
        if isinstance(err, RevisionNotFoundError):
            rev = target.revision if target else "?"
            return DownloadFailed(
                ExitCode.NOT_FOUND,
                f"revision {rev!r} of {repo} does not exist: check MODEL_REVISION "
                f"(see {page}/commits/main).",
            )
        if isinstance(err, GatedRepoError) or (
            isinstance(err, HfHubHTTPError)
            and not isinstance(err, RepositoryNotFoundError)
            and _status(err) in (401, 403)
        ):
            return _access_denied(err, repo, page, token_sent=bool(target and target.token))
        if isinstance(err, RepositoryNotFoundError):
            hint = (
                " If it is private or gated, set HF_TOKEN to a token that can read it."
                if not (target and target.token)
                else ""
            )
            return DownloadFailed(
                ExitCode.NOT_FOUND,
                f"{repo} was not found on the Hub (HTTP {_status(err)}): "
                f"check MODEL_REPO (--repo).{hint}",
            )
        if isinstance(err, (httpx2.TransportError, httpx.TransportError, OfflineModeIsEnabled)):
            endpoint = (target.endpoint if target else None) or hf_constants.ENDPOINT
            if isinstance(err, httpx.TransportError):  # the Whisper fetch, not the Hub
                with contextlib.suppress(RuntimeError):  # .request is unset on some errors
                    endpoint = str(err.request.url.copy_with(path="/", query=None))
            return DownloadFailed(
                ExitCode.UNREACHABLE,
                f"cannot reach {endpoint} ({type(err).__name__}: {err}). Check the network, DNS, "
                "proxy (HTTPS_PROXY) and firewall, then run again; on a machine without internet, "
                "copy a complete Hugging Face cache and verify it with --check.",
            )
        if isinstance(err, HfHubHTTPError) and _status(err) >= 500:
            return DownloadFailed(
                ExitCode.ERROR,
                f"the Hub answered HTTP {_status(err)}; it is probably having "
                "trouble: run again in a few minutes (completed files are kept).",
            )
        if isinstance(err, httpx.HTTPStatusError):
            return DownloadFailed(
                ExitCode.NOT_FOUND if err.response.status_code == 404 else ExitCode.ERROR,
                f"{err.request.url} answered HTTP {err.response.status_code}",
            )
    return DownloadFailed(ExitCode.ERROR, f"{type(exc).__name__}: {exc}")


def _status(err: HfHubHTTPError) -> int:
    response = getattr(err, "response", None)
    return int(getattr(response, "status_code", 0) or 0)


def _access_denied(
    err: HfHubHTTPError, repo: str, page: str, *, token_sent: bool
) -> DownloadFailed:
    status = _status(err)
    if status == 401 or not token_sent:
        why = "no valid Hugging Face token was sent"
        todo = (
            f"Sign in at {page}, accept the Gemma licence there, create a read token at "
            f"{HUB_WEB}/settings/tokens and set HF_TOKEN (in .env for docker compose)."
        )
    else:
        why = "the token was accepted but its account may not use this model"
        todo = (
            f"Accept the licence at {page} with the account that owns HF_TOKEN (approval is "
            "usually immediate), or give the token read access to public gated repos "
            "(fine-grained tokens)."
        )
    return DownloadFailed(
        ExitCode.ACCESS_DENIED,
        f"access to {repo} refused (HTTP {status}): {why}. Gemma 3n is a gated model. {todo}",
    )


# --- entry point ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns an `ExitCode` value (never prompts)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return int(exc.code or 0)
    # Our own handler on stderr (bound now, so it follows the current sys.stderr).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("download_model: %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        return _run(parser, args)
    finally:
        logger.removeHandler(handler)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.no_model and not args.whisper:
        parser.print_usage(sys.stderr)
        logger.error("--no-model needs --whisper NAME: there is nothing else to do")
        return ExitCode.USAGE
    try:
        settings = Settings()
    except ValidationError as exc:
        logger.error("invalid settings: %s", exc)
        return ExitCode.USAGE
    target = None if args.no_model else resolve_target(args, settings)
    # The folder the gateway's Whisper loads from (WHISPER_DOWNLOAD_ROOT), else whisper's own.
    args.whisper_dir = args.whisper_dir or settings.whisper_download_root or default_whisper_dir()
    try:
        if args.check:
            return _run_check(args, target)
        if target is not None:
            _ensure_model(target, max_workers=args.max_workers, quiet=args.quiet)
        if args.whisper:
            url = whisper_checkpoint_url(args.whisper)
            fetch_whisper(url, args.whisper_dir)
    except KeyboardInterrupt:
        logger.error("interrupted; run again to continue (completed files are kept)")
        return ExitCode.INTERRUPTED
    except Exception as exc:
        failure = explain(exc, target)
        logger.error("%s", failure)
        logger.debug("details", exc_info=exc)
        return failure.code
    return ExitCode.OK


def _ensure_model(target: ModelTarget, *, max_workers: int, quiet: bool) -> None:
    try:
        folder = download_model(target, max_workers=max_workers, quiet=quiet)
    except Exception as exc:
        failure = explain(exc, target)
        # A container restarting without network must still start when the copy is complete.
        if failure.code is ExitCode.UNREACHABLE and check_model(target).complete:
            logger.warning("%s; the local copy is complete, so carrying on with it", failure)
            return
        raise failure from exc
    report = check_model(target)
    if not report.complete:
        raise DownloadFailed(
            ExitCode.INCOMPLETE,
            "download finished but the copy is incomplete: " + "; ".join(report.problems),
        )
    logger.info("%s ready in %s", target.repo, folder)


def _run_check(args: argparse.Namespace, target: ModelTarget | None) -> int:
    reports: list[tuple[str, CheckReport]] = []
    if target is not None:
        reports.append((f"{target.repo}@{target.revision}", check_model(target)))
    if args.whisper:
        url = whisper_checkpoint_url(args.whisper)
        reports.append((f"whisper {args.whisper}", check_whisper(url, args.whisper_dir)))
    for name, report in reports:
        if report.complete:
            logger.info("%s: complete (%d files)", name, report.expected)
        else:
            shown = report.problems[:10]
            more = len(report.problems) - len(shown)
            logger.error(
                "%s: INCOMPLETE: %s%s; run download_model.py without --check",
                name,
                "; ".join(shown),
                f" (+{more} more)" if more > 0 else "",
            )
    return ExitCode.OK if all(r.complete for _, r in reports) else ExitCode.INCOMPLETE


if __name__ == "__main__":
    sys.exit(main())
