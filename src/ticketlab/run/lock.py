"""One writer per run folder: an OS file lock on `<run folder>/.lock`.

The runner takes the lock of every run folder it will write (a sweep: every point's, a stability run: its
lottery runs' too) before the first unit is computed, in sorted order, and holds it until the last report
is written. A second command on the same folder refuses with one line naming the holder, or, with `--wait`,
waits until the holder is done (and then finds its units finished).

- The lock is `flock` (Unix): the kernel releases it when the holder's process ends, however it ends, so
  the lock a `kill -9` leaves behind never blocks a resume. The file's contents (pid, host, command, start
  time) are for the message only; a lock file is never deleted.
- Only the main process holds it. The file is opened close-on-exec (spawned workers and Ray never get it)
  and forked workers close their inherited copy at once (`os.register_at_fork`), so a worker outliving
  a killed main for a moment cannot keep the folder locked.
- `--force` replaces the run folder (and its `.lock`) in one rename: the runner then moves its lock to the
  new folder's `.lock` (`follow`); a command waiting on the old file notices that it no longer is the
  folder's lock file and waits on the new one.
- Windows has no `flock`: `msvcrt.locking` on the file's first byte, with the same semantics (released
  when the process ends). Elsewhere without either, folders are not locked (documented in the README).
- On a network file system (a Ray cluster's shared `--out`) `flock` works where the file system supports it
  (NFS v4, Lustre and GPFS with locking enabled); the lock only guards against two *commands*, since the
  workers of one command never take it.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

from ..errors import UserError, os_fault

try:
    import fcntl
except ImportError:   # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:
    msvcrt = None

LOCK_NAME = ".lock"

_HELD: dict[int, "FolderLock"] = {}   # fd -> lock held by this process


def _close_inherited() -> None:
    """In a forked child: drop the copies of this process's lock files (the lock stays with the parent)."""
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited)


class Busy(UserError):
    """The run folder is locked by another command (exit 2)."""


def _try_lock(fd: int, block: bool) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            return False
    if msvcrt is not None:   # pragma: no cover - Windows
        while True:
            try:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                if not block:
                    return False
                time.sleep(0.5)
    return True   # no OS lock on this platform: every command proceeds


def _holder(path: Path) -> str:
    """Who holds the lock, as its file says ('another ticketlab command' when it does not say yet)."""
    try:
        info = json.loads(path.read_bytes()[:4096] or b"{}")
        if not isinstance(info, dict) or "pid" not in info:
            raise ValueError
    except (OSError, ValueError):
        return "another ticketlab command"
    return (f"pid {info.get('pid')} on {info.get('host', '?')} since {info.get('since', '?')}"
            f" ({info.get('command', '?')})")


class FolderLock:
    """The lock of one run folder, held by this process."""

    def __init__(self, folder: Path, fd: int):
        self.folder, self.fd = Path(folder), fd
        _HELD[fd] = self

    @classmethod
    def take(cls, folder: str | os.PathLike, *, wait: bool = False, announce=None) -> "FolderLock":
        """Lock `folder` (created if missing). Busy if another command holds it, unless `wait`: then wait
        for it (`announce(message)` is called once first)."""
        folder = Path(folder)
        path = folder / LOCK_NAME
        announced = False
        while True:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0), 0o666)
            except OSError as e:
                raise os_fault(e) from None
            try:
                if not _try_lock(fd, block=False):
                    if not wait:
                        raise Busy(f"{folder} is in use by {_holder(path)}; wait until it ends, "
                                   f"or give --wait to wait for it")
                    if not announced and announce is not None:
                        announce(f"ticketlab: waiting for {folder}: in use by {_holder(path)} (Ctrl-C to stop)")
                        announced = True
                    _try_lock(fd, block=True)
                current = _is_current(fd, path)
            except OSError as e:   # the file system refuses locks (ENOLCK), say
                os.close(fd)
                raise os_fault(OSError(e.errno, e.strerror, str(path))) from None
            except BaseException:
                os.close(fd)
                raise
            if current:
                break
            os.close(fd)   # the folder was replaced meanwhile (--force of the holder): lock the new one
        lock = cls(folder, fd)
        lock._record()
        return lock

    def _record(self) -> None:
        program = Path(sys.argv[0] if sys.argv and sys.argv[0] else "python")
        program = program.parent.name if program.name == "__main__.py" else program.name   # python -m ticketlab
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": shlex.join([program, *sys.argv[1:]])}
        data = json.dumps(info).encode()
        try:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
            os.write(self.fd, data)
        except OSError as e:
            self.release()
            raise os_fault(OSError(e.errno, e.strerror, str(self.folder / LOCK_NAME))) from None

    def follow(self) -> None:
        """After the folder was replaced (`--force`): lock the new folder's `.lock`, then let the old one go."""
        if _is_current(self.fd, self.folder / LOCK_NAME):
            return
        new = FolderLock.take(self.folder, wait=False)
        self.release()
        self.fd = new.fd
        _HELD.pop(new.fd, None)
        _HELD[self.fd] = self

    def release(self) -> None:
        if self.fd is None:
            return
        _HELD.pop(self.fd, None)
        try:
            os.close(self.fd)   # closing the last descriptor releases the lock
        except OSError:
            pass
        self.fd = None


def _is_current(fd: int, path: Path) -> bool:
    """Is the open lock file still `path` (not a file since renamed away with its folder)?"""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class FolderLocks:
    """The locks of several folders, taken in sorted order (two commands over overlapping folders then
    never wait for each other in a cycle) and released together."""

    def __init__(self, folders, *, wait: bool = False, announce=None):
        self.locks: list[FolderLock] = []
        try:
            for folder in sorted({str(Path(f)) for f in folders}):
                self.locks.append(FolderLock.take(folder, wait=wait, announce=announce))
        except BaseException:
            self.release()
            raise

    def follow(self) -> None:
        for lock in self.locks:
            lock.follow()

    def release(self) -> None:
        for lock in reversed(self.locks):
            lock.release()
        self.locks = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
