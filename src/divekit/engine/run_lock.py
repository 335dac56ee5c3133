"""One writer per run folder: a lock file held for as long as a process trains into it.

``RUN/.lock`` is locked with ``fcntl.flock`` and holds the writer's PID and host name (for the
error message only). The kernel drops the lock when its process dies, even by SIGKILL, so a
lock left behind by a dead run never blocks the next one: stale locks need no clean-up. The
lock is taken again by the same process without waiting (``experiment.train`` holds it around
``Trainer.fit``, which takes it too). POSIX only (``fcntl``).
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from divekit.errors import DivekitError

LOCK_NAME = ".lock"

# lock path -> (holding process, file descriptor, times taken); the process, because a
# forked child inherits this dict but not the lock.
_held: dict[Path, tuple[int, int, int]] = {}


class RunLock:
    """``with RunLock(run_dir):`` makes this process the only writer of ``run_dir``.

    Raises :class:`~divekit.errors.DivekitError` at once (no waiting) when another process
    holds the folder.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = (self.run_dir / LOCK_NAME).absolute()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or fail with one line naming the process that holds it."""
        pid, fd, count = _held.get(self.path, (None, None, 0))
        if pid == os.getpid():
            _held[self.path] = (pid, fd, count + 1)
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").split()
                os.close(fd)
                who = f"pid {holder[0]} on {holder[1]}" if len(holder) == 2 else "another process"
                raise DivekitError(
                    f"{self.run_dir} is being written by another divekit run ({who}); wait for "
                    f"it to finish or give another --out") from None
            # The holder before us may have deleted the file after we opened it: then our
            # lock is on a name nobody else will find; try again on the file there now.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        _held[self.path] = (os.getpid(), fd, 1)

    def release(self) -> None:
        """Give the lock back (the file goes too) once every ``acquire`` was matched."""
        pid, fd, count = _held.pop(self.path)
        if count > 1:
            _held[self.path] = (pid, fd, count - 1)
            return
        # Deleted while still locked, so a waiting process cannot lock a file already gone.
        self.path.unlink(missing_ok=True)
        os.close(fd)
