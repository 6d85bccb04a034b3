"""Small filesystem and time primitives shared by the vault's modules."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

# Every file the service or the command line writes that holds personal data or keys, and every
# folder it makes for them, is its owner's alone, whatever the process's umask.
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_EXCL) -> int:
    """``os.open`` of a file that is 0600 once opened, whatever the umask: a new file is made
    so (and the mode set again, as a umask can only have taken bits away); an existing one of
    ours (a lock file) is brought back to 0600."""
    fd = os.open(path, flags | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        if os.stat(fd).st_mode & 0o7777 != PRIVATE_FILE:
            os.fchmod(fd, PRIVATE_FILE)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def private_file(path: Path) -> Iterator[BinaryIO]:
    """A new file (refused if ``path`` exists), 0600 from the first byte, for writing."""
    with os.fdopen(open_private(path), "wb") as fh:
        yield fh


def private_dir(path: Path, *, tighten: bool = False) -> Path:
    """Make the directory ``path`` and any missing parents, each 0700 whatever the umask.

    An existing directory is left as it is (an export may go to the operator's own folder),
    unless ``tighten``: the vault's own folders are brought back to 0700.
    """
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            directory.mkdir(mode=PRIVATE_DIR)
            os.chmod(directory, PRIVATE_DIR)
    info = path.stat()
    if tighten and info.st_mode & 0o7777 != PRIVATE_DIR and info.st_uid == os.geteuid():
        os.chmod(path, PRIVATE_DIR)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")
    return path


def atomic_write(path: Path, data: bytes, *, mode: int = PRIVATE_FILE) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def utc_iso(moment: datetime) -> str:
    """One sortable text form for every time in the catalog: UTC, microseconds, 'Z'."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: times must carry a timezone")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
