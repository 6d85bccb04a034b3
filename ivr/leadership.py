"""Which of the processes sharing a data directory runs the background jobs: the retention
sweep, with the breach watch and the key schedule. Two ``ivr serve`` on one vault (two
instances behind one PBX, or a restart overlapping the old process) would otherwise both purge,
both warn about the same breach and both rotate the same tenant's key.

The process holding an exclusive ``flock`` on ``background-jobs.lock`` in the data directory
runs them; the others try again every few seconds (``ivr.service.LEADERSHIP_RETRY_SECONDS``).
The kernel releases the lock when its holder exits, however it exits (SIGKILL included), so
another process takes over at its next try. This covers processes on one machine (the workers
of ``ivr serve --workers N`` among them); processes on other machines sharing a catalog need a
lease in the catalog instead (the multi-node work).
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from storage.files import open_private

log = logging.getLogger(__name__)

LOCK_FILE = "background-jobs.lock"


class Leadership:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def claim(self) -> bool:
        """Whether this process runs the background jobs now: it already did, or the lock was
        free and is now ours."""
        if self._fd is not None:
            return True
        fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        log.info("this process runs the background jobs (retention sweep, breach watch, keys)")
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
