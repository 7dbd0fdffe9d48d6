"""One process at a time per session folder: ``toxrt.lock`` holds the recording process's PID.

The lock is an ``flock`` on ``<session>/toxrt.lock``, held from before the folder is (over)written
until the session is finished. The kernel releases it when the process ends in any way, ``kill -9``
included, so a lock file left by a dead process is stale and simply taken over; the PID written in
it serves only to name the live holder in the error. The file is removed on release.

Where the filesystem has no ``flock`` (some network shares), the PID decides: a lock file naming a
live process on this host is respected, any other is taken over (with a warning: two hosts
recording one folder cannot be told apart there).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from pathlib import Path

from ..errors import SessionError
from .layout import LOCK_FILE

log = logging.getLogger(__name__)

_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class SessionLock:
    """Hold the lock of ``folder`` (created if missing); SessionError naming the holder's PID if taken."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SessionError(f"{self.path.parent}: cannot create the session folder: {exc.strerror}") from None
        self._fd: int | None = None
        while self._fd is None:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise SessionError(f"{self.path.parent}: is being recorded or finished by {holder}; "
                                   "wait for it or stop it first") from None
            except OSError as exc:
                if exc.errno not in _NO_FLOCK:
                    os.close(fd)
                    raise SessionError(f"{self.path}: cannot lock the session: {exc.strerror}") from None
                self._check_pid_only(fd)
            if self._same_file(fd):
                self._fd = fd
            else:  # the previous holder removed the file between our open and our flock: try again
                os.close(fd)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()} {socket.gethostname()}\n".encode())

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SessionError(f"{self.path}: cannot create the lock file: {exc.strerror}") from None

    def _same_file(self, fd: int) -> bool:
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            return False

    def _check_pid_only(self, fd: int) -> None:
        """No flock here: refuse a lock file of a live process on this host, else take it over."""
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
        if text and text[0].isdigit() and int(text[0]) != os.getpid() and \
                (len(text) < 2 or text[1] == socket.gethostname()) and _alive(int(text[0])):
            holder = self._holder(fd)
            os.close(fd)
            raise SessionError(f"{self.path.parent}: is being recorded or finished by {holder}; "
                               "wait for it or stop it first")
        log.warning("%s: the filesystem cannot lock files; relying on the PID in it", self.path)

    @staticmethod
    def _holder(fd: int) -> str:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
        if not text:
            return "another process"
        return f"process {text[0]}" + (f" on {text[1]}" if len(text) > 1 and text[1] != socket.gethostname() else "")

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file and let go (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "SessionLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
