"""Advisory lock files: one process at a time trains (and validates) a fold.

:class:`FileLock` holds an exclusive, non-blocking lock on a file (``fcntl.flock`` on POSIX, ``msvcrt.locking``
on Windows). The operating system drops the lock when the holding process ends, however it ends, so a crashed
or killed run never leaves a fold locked; the file itself may stay and is reused. The holder writes its pid into
the file so that a refused process can say who holds it.

Processes that train disjoint folds of one run (``cv --folds 0 1 2`` beside ``cv --folds 3 4 --resume``) take
different locks and run side by side.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path
from typing import Optional

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

#: msvcrt locks a byte range; the lock byte lies far past the pid so that others can still read the pid.
_WINDOWS_LOCK_OFFSET = 1 << 30
_BUSY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK)


class LockHeldError(RuntimeError):
    """Another process holds the lock.

    Attributes:
        path: the lock file.
        pid: the holder's pid, when the file says it (None otherwise).
    """

    def __init__(self, path: Path, pid: Optional[int]) -> None:
        self.path = Path(path)
        self.pid = pid
        super().__init__(f"{path} is held by another process ({'pid unknown' if pid is None else f'pid {pid}'})")


def _read_pid(fd: int) -> Optional[int]:
    """The pid a holder wrote at the start of the lock file (None when empty, unreadable or not a number)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32)
    except OSError:
        return None
    try:
        return int(text.decode("ascii").strip() or "x")
    except (UnicodeDecodeError, ValueError):
        return None


def _try_lock(fd: int) -> bool:
    """Take the lock on ``fd`` without waiting: True when taken, False when another process holds it.

    Raises:
        OSError: the file system cannot lock (e.g. ``ENOLCK`` on some network file systems).
    """
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # pragma: no cover - Windows
            os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as exc:
        if exc.errno in _BUSY:
            return False
        raise
    return True


class FileLock:
    """An exclusive lock on ``path`` (created with its folder when missing), taken by :meth:`acquire`.

    Args:
        path: the lock file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: Optional[int] = None
        self._made_folder = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock, or raise :class:`LockHeldError` at once (no waiting).

        Returns:
            True when locked; False when this platform or file system cannot lock (logged; the caller goes on
            unprotected, as before locks existed).

        Raises:
            LockHeldError: another process holds it.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: already held by this object")
        if fcntl is None and msvcrt is None:  # pragma: no cover - neither POSIX nor Windows
            logger.debug("no file locking on this platform; %s is not locked", self.path)
            return False
        folder = self.path.parent
        self._made_folder = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                taken = _try_lock(fd)
            except OSError as exc:
                os.close(fd)
                logger.warning("%s cannot be locked (%s); going on without the lock", self.path, exc.strerror or exc)
                self._remove_made_folder()
                return False
            if not taken:
                pid = _read_pid(fd)
                os.close(fd)
                self._remove_made_folder()
                raise LockHeldError(self.path, pid)
            if fcntl is None or self._same_file(fd):
                break
            os.close(fd)  # the holder removed this file as it released it: lock the one now at the path
        os.lseek(fd, 0, os.SEEK_SET)  # (msvcrt locked at its far offset)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd
        return True

    def _same_file(self, fd: int) -> bool:
        """Whether ``fd`` is still the file at :attr:`path` (a releasing holder unlinks it while locked)."""
        try:
            here, ours = os.stat(self.path), os.fstat(fd)
        except FileNotFoundError:
            return False
        return (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino)

    def release(self) -> None:
        """Drop the lock and remove the lock file (and the folder, when :meth:`acquire` made it and it is empty)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if fcntl is not None:  # removed while still locked, so nobody locks a file that is going away
            try:
                self.path.unlink()
            except OSError as exc:
                logger.debug("could not remove %s: %s", self.path, exc)
            os.close(fd)
        else:  # pragma: no cover - Windows: an open file cannot be removed; another process may hold it by now
            os.close(fd)
            with contextlib.suppress(OSError):
                self.path.unlink()
        self._remove_made_folder()

    def _remove_made_folder(self) -> None:
        if self._made_folder:
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()  # only when empty: nothing was written into it
            self._made_folder = False

    @staticmethod
    def holder(path: Path) -> Optional[LockHeldError]:
        """Whether another process holds the lock at ``path``, without creating anything: the
        :class:`LockHeldError` that :meth:`acquire` would raise, or None (no file, not held, or cannot lock)."""
        path = Path(path)
        if (fcntl is None and msvcrt is None) or not path.is_file():
            return None
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None
        try:
            if _try_lock(fd):
                return None  # closing the descriptor below drops the probe's lock
            return LockHeldError(path, _read_pid(fd))
        except OSError:
            return None
        finally:
            os.close(fd)


__all__ = ["FileLock", "LockHeldError"]
