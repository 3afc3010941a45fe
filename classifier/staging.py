"""Files written before the rows that refer to them commit, and the sweep for files no row refers to.

A batch is staged (its files written) inside the transaction that creates its rows. A process killed
in between leaves files that no row names. ``StagingArea`` writes them under ``batches/<token>/`` while
it holds an exclusive ``flock`` on ``staging/<token>.lock``; the kernel drops the lock when the process
dies, however it dies. So a sweep can tell a crashed staging (lock free: every file under it that no
row names is an orphan, at once) from one still running (lock held: left alone), with no grace period.

``orphans()`` also lists older leftovers anywhere in the media folders (a cell image written by an
upload killed before its commit, a half-written spool pair): files that no row names and that are
older than HEMATOVISION_ORPHAN_MIN_AGE_SECONDS. ``manage.py cleanup_orphans`` lists them (``--delete``
removes them); ``manage.py resume_jobs`` removes crashed stagings at start.

The locks need the local file system (``FileSystemStorage``); on another storage staging is not
locked and only the age rule applies.
"""

import contextlib
import fcntl
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

logger = logging.getLogger(__name__)

LOCK_DIR = "staging"
MEDIA_FOLDERS = ("cells", "heatmaps", "batches", "spool")


def _local_path(name: str) -> Path | None:
    try:
        return Path(default_storage.path(name))
    except NotImplementedError:  # not a local file system: no locks, the age rule only
        return None


class StagingArea:
    """A private folder for one batch's files, locked for as long as this process stages into it."""

    def __init__(self, folder: str = "batches"):
        self.token = uuid.uuid4().hex
        self.folder = f"{folder}/{self.token}"
        self._fd: int | None = None
        self._lock_path: Path | None = None
        root = _local_path(LOCK_DIR)
        if root is None:
            return
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Locked under a temporary name, then renamed: a sweep never sees this lock unlocked.
        temporary = root / f"{self.token}.tmp"
        fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_path = root / f"{self.token}.lock"
        os.rename(temporary, self._lock_path)
        self._fd = fd

    def save(self, suffix: str, data: bytes) -> str:
        """Write one file into the area; its storage name, for the row that will refer to it."""
        return default_storage.save(f"{self.folder}/{uuid.uuid4().hex}{suffix}", ContentFile(data))

    def release(self) -> None:
        """The rows are committed (or the files removed): drop the lock. Safe to call twice."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self._lock_path.unlink()
        os.close(self._fd)
        self._fd = None

    def discard(self, names) -> None:
        """Remove the files written so far (the transaction failed), then release."""
        for name in names:
            with contextlib.suppress(OSError):
                default_storage.delete(name)
        _remove_empty_dir(self.folder)
        self.release()


def _remove_empty_dir(name: str) -> None:
    path = _local_path(name)
    if path is not None:
        with contextlib.suppress(OSError):
            path.rmdir()


@contextlib.contextmanager
def exclusive(name: str):
    """An exclusive ``flock`` on the media file ``name`` for the block (between processes too)."""
    path = _local_path(name)
    if path is None:
        yield
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Orphan:
    name: str
    size: int
    reason: str


def _referenced() -> set[str]:
    from classifier.models import BatchItem, Classification

    names = set()
    for image, heatmap in Classification.objects.values_list("image", "heatmap").iterator():
        names.update((image, heatmap))
    names.update(BatchItem.objects.exclude(source="").values_list("source", flat=True).iterator())
    names.discard("")
    return names


def _lock_if_free(lock: Path) -> int | None:
    """The open, locked ``fd`` of a staging's lock file when no process holds it (that staging is
    gone; the caller closes ``fd``), None while its staging runs. OSError: the file cannot be opened."""
    fd = os.open(lock, os.O_WRONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: that staging is running now
        os.close(fd)
        return None
    return fd


def _crashed_stagings() -> list[tuple[str, Path, int]]:
    """``(token, lock path, fd)`` for every staging whose process is gone; the caller closes ``fd``."""
    root = _local_path(LOCK_DIR)
    if root is None or not root.is_dir():
        return []
    crashed = []
    for lock in sorted(root.glob("*.lock")):
        try:
            fd = _lock_if_free(lock)
        except OSError:
            continue
        if fd is not None:
            crashed.append((lock.stem, lock, fd))
    return crashed


def _files(folder: str):
    root = _local_path(folder)
    if root is None or not root.is_dir():
        return
    base = Path(default_storage.path(""))
    for path in root.rglob("*"):
        if path.is_file():
            yield path, path.relative_to(base).as_posix()


def orphans(*, min_age: float | None = None) -> list[Orphan]:  # noqa: C901 - one walk over the media folders; each branch is a kind of leftover it reports
    """Files in the media folders that no row refers to: every file of a crashed staging, and any
    other file older than ``min_age`` seconds (default HEMATOVISION_ORPHAN_MIN_AGE_SECONDS)."""
    min_age = settings.HEMATOVISION_ORPHAN_MIN_AGE_SECONDS if min_age is None else min_age
    crashed = _crashed_stagings()
    try:
        crashed_dirs = {f"batches/{token}/" for token, _, _ in crashed}
        live_dirs = _live_staging_dirs(skip={token for token, _, _ in crashed})
        referenced = _referenced()
        now = time.time()
        found = []
        for folder in MEDIA_FOLDERS:
            spool_names = set()
            if folder == "spool":
                spool_names = {name for _, name in _files(folder)}
            for path, name in _files(folder):
                if name in referenced or any(name.startswith(d) for d in live_dirs):
                    continue
                if name.endswith(".lock"):
                    continue
                try:
                    stat = path.stat()
                except OSError:
                    continue
                if any(name.startswith(d) for d in crashed_dirs):
                    found.append(Orphan(name, stat.st_size, "staged by a process that stopped"))
                    continue
                if now - stat.st_mtime < min_age:
                    continue
                if folder == "spool":
                    twin = name[:-5] + ".bin" if name.endswith(".json") else name[:-4] + ".json"
                    if twin in spool_names:
                        continue  # a kept upload waiting to be filed, not an orphan
                    found.append(Orphan(name, stat.st_size, "half of a kept upload"))
                    continue
                found.append(Orphan(name, stat.st_size, "no row refers to it"))
        for path, name in _files(LOCK_DIR):
            if name.endswith(".tmp") and now - path.stat().st_mtime >= min_age:
                found.append(Orphan(name, path.stat().st_size, "lock of a staging that never started"))
        return found
    finally:
        for _, _, fd in crashed:
            os.close(fd)


def _live_staging_dirs(skip=frozenset()) -> set[str]:
    """Folders of stagings running now (their lock is held). ``skip``: tokens whose lock this process
    holds itself (a second ``flock`` here would fail on them as if they were running)."""
    root = _local_path(LOCK_DIR)
    if root is None or not root.is_dir():
        return set()
    live = set()
    for lock in root.glob("*.lock"):
        if lock.stem in skip:
            continue
        try:
            fd = _lock_if_free(lock)
        except OSError:
            continue
        if fd is None:
            live.add(f"batches/{lock.stem}/")
        else:
            os.close(fd)
    return live


def remove(found: list[Orphan]) -> int:
    """Delete the listed files, then crashed stagings' locks and empty folders; returns bytes freed."""
    freed = 0
    for orphan in found:
        try:
            default_storage.delete(orphan.name)
            freed += orphan.size
        except OSError:
            logger.warning("could not delete orphan %s", orphan.name)
    crashed = _crashed_stagings()
    try:
        for token, lock, _ in crashed:
            _remove_empty_dir(f"batches/{token}")
            with contextlib.suppress(OSError):
                lock.unlink()
    finally:
        for _, _, fd in crashed:
            os.close(fd)
    for folder in MEDIA_FOLDERS:  # staging folders emptied by finished jobs
        root = _local_path(folder)
        if root is not None and root.is_dir():
            for child in root.iterdir():
                if child.is_dir() and not any(child.iterdir()):
                    _remove_empty_dir(f"{folder}/{child.name}")
    return freed


def sweep_crashed_stagings() -> list[Orphan]:
    """Remove what crashed stagings left (``resume_jobs`` at start); returns what was removed."""
    found = [o for o in orphans(min_age=float("inf")) if o.reason.startswith("staged")]
    remove(found)
    return found
