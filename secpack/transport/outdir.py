"""Creating files under an output root without ever following a symlink.

Every directory is opened relative to its parent's file descriptor with
O_NOFOLLOW, and every file is created with O_CREAT | O_EXCL | O_NOFOLLOW, so a
symlink or file planted in the output tree (even during extraction) makes the
write fail instead of escaping the root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from types import TracebackType

from secpack.errors import OutputError
from secpack.transport.syncer import Syncer

# Errors that mean "something is in the way" (a planted symlink, an existing file or
# directory): the package path is unsafe here. Anything else (ENOSPC, EDQUOT, EROFS,
# EIO...) is an I/O failure of the output.
_UNSAFE_ERRNOS = frozenset({errno.EEXIST, errno.ELOOP, errno.ENOTDIR, errno.EISDIR})


def _error(what: str, exc: OSError) -> OutputError:
    code = "output.unsafe" if exc.errno in _UNSAFE_ERRNOS else "output.io"
    return OutputError(code, f"{what}: {exc.strerror}")


__all__ = ["OutputTree"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class OutputTree:
    def __init__(self, root: str) -> None:
        self.root_fd = os.open(root, _DIR_FLAGS)
        self._dirs: dict[str, int] = {"": self.root_fd}
        self._files: set[int] = set()  # open file descriptors, closed on any exit
        self._lock = threading.Lock()
        self._syncer = Syncer()

    def _dir(self, rel: str) -> int:
        fd = self._dirs.get(rel)
        if fd is not None:
            return fd
        parent, _, name = rel.rpartition("/")
        parent_fd = self._dir(parent)
        try:
            os.mkdir(name, 0o755, dir_fd=parent_fd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            raise OutputError(
                "output.unsafe", f"cannot create directory {rel}: {exc.strerror}"
            ) from None
        self._dirs[rel] = fd
        return fd

    def create(self, path: str, size: int, mode: int) -> int:
        """Create ``path`` (which must not exist) with ``size`` bytes; return a write fd."""
        parent, _, name = path.rpartition("/")
        with self._lock:
            dir_fd = self._dir(parent)
        # Owner read/write always; group and others keep at most read and execute, so a
        # private (0600) file stays private and nothing becomes group- or world-writable.
        perm = (mode & 0o755) | 0o600
        try:
            fd = os.open(name, _FILE_FLAGS, perm, dir_fd=dir_fd)
        except OSError as exc:
            raise _error(f"cannot create {path}", exc) from None
        try:
            os.fchmod(fd, perm)
            if size:
                os.ftruncate(fd, size)
        except OSError as exc:
            os.close(fd)
            raise OutputError("output.io", f"cannot size {path}: {exc.strerror}") from None
        with self._lock:
            self._files.add(fd)
        return fd

    def pwrite(self, fd: int, offset: int, data: bytes | bytearray | memoryview, path: str) -> None:
        view = memoryview(data)
        size = len(view)
        try:
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as exc:
            raise OutputError("output.io", f"writing {path}: {exc.strerror}") from None
        self._syncer.wrote(fd, size)

    def finish(self, fd: int, path: str) -> None:
        """The file is complete: its fsync and close go to the background syncer."""
        with self._lock:
            self._files.discard(fd)
        self._syncer.finish(fd, close=True)

    def close(self) -> None:
        """Wait until every file is on disk, then sync and close the directories."""
        self._syncer.close()
        for fd in self._dirs.values():
            os.fsync(fd)
            os.close(fd)
        self._dirs.clear()

    def __enter__(self) -> OutputTree:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(OutputError):
            self._syncer.close()
        for fd in list(self._files) + list(self._dirs.values()):
            os.close(fd)
        self._files.clear()
        self._dirs.clear()
