"""Safe writes into the model cache: digests, a per-target lock, staging and atomic publication.

Builds go into a temporary sibling directory that is renamed into place at the end, under a
file lock, so concurrent builders (replicas starting together) serialise and a killed build
never leaves a half model.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from service.errors import ModelBuildError
from service.models.paths import MANIFEST_FILENAME

if sys.platform != "win32":
    import fcntl

__all__ = [
    "build_lock",
    "check_replaceable",
    "publish",
    "sha256_dir",
    "sha256_file",
    "staging_dir",
    "write_text_atomic",
]


@functools.lru_cache(maxsize=32)
def _cached_file_sha256(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # cache keys only: a changed file gets a new entry
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, cached per (path, size, mtime) so a rebuild check is cheap."""
    stat = path.stat()
    return _cached_file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def sha256_dir(path: Path) -> str:
    """Digest of every regular file under ``path`` (relative names and contents), sorted."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if relative.startswith(".") or "/." in relative:
            continue  # .git, caches, lock files
        digest.update(relative.encode("utf-8") + b"\0")
        digest.update(sha256_file(file).encode("ascii"))
    return digest.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so readers never see half of it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def build_lock(target: Path) -> Iterator[None]:
    """Serialise builders of one target across processes (replicas starting together)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with lock_path.open("a") as handle:
        if sys.platform != "win32":
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if sys.platform != "win32":
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """Yield an empty sibling directory of ``target``; it is removed if the block fails.

    Call only under :func:`build_lock`: leftovers of killed builds of the same target are
    swept first.
    """
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the published model is a normal dir
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, target: Path) -> None:
    """Move a finished build into place; the old target, if any, is swapped out first."""
    if target.exists() or target.is_symlink():
        retired = target.with_name(f".{target.name}.tmp-old-{uuid.uuid4().hex[:8]}")
        os.replace(target, retired)
        os.replace(staging, target)
        if retired.is_dir() and not retired.is_symlink():
            shutil.rmtree(retired, ignore_errors=True)
        else:
            retired.unlink(missing_ok=True)
    else:
        os.replace(staging, target)


def check_replaceable(target: Path, *, force: bool) -> None:
    """Refuse to overwrite an explicit output that is not a tokenbooth model, unless forced.

    Raises:
        ModelBuildError: ``target`` exists, is neither empty nor a model directory, and
            ``force`` is not set.
    """
    if force or not target.exists():
        return
    if target.is_dir() and ((target / MANIFEST_FILENAME).is_file() or not any(target.iterdir())):
        return
    raise ModelBuildError(
        f"output {target} exists and is not a tokenbooth model directory; "
        "pass force=True (--force) to replace it"
    )
