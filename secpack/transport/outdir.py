"""Creating files under an output root without ever following a symlink.

Every directory is opened relative to its parent's file descriptor with
O_NOFOLLOW, and every file is created with O_CREAT | O_EXCL | O_NOFOLLOW, so a
symlink or file planted in the output tree (even during extraction) makes the
write fail instead of escaping the root.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from types import TracebackType

from secpack.errors import OutputError
from secpack.transport.atomic import umask
from secpack.transport.syncer import Syncer

# Errors that mean "something is in the way" (a planted symlink, an existing file or
# directory): the package path is unsafe here. Anything else (ENOSPC, EDQUOT, EROFS,
# EIO, EMFILE...) is an I/O failure of the output.
_UNSAFE_ERRNOS = frozenset({errno.EEXIST, errno.ELOOP, errno.ENOTDIR, errno.EISDIR})


def _error(what: str, exc: OSError) -> OutputError:
    code = "output.unsafe" if exc.errno in _UNSAFE_ERRNOS else "output.io"
    return OutputError(code, f"{what}: {exc.strerror}")


__all__ = ["OutputTree"]

# Files below this size are not fsynced one by one: one syncfs(2) of the output's
# filesystem, before the tree is closed, makes them durable together. An fsync
# costs a journal commit whatever the file's size (about 2 ms on this disk), so
# 20,000 small files took 46 s to open, nearly all of it in fsync. Larger files
# keep their own fsync on the background syncer, where it overlaps decoding.
SMALL_FILE = 1 << 20


@functools.cache
def _syncfs() -> Callable[[int], None] | None:
    """syncfs(2) from the C library (Python has no binding), or None where there is
    none (then every file gets its own fsync, as before)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int]
    call.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        # Linux 5.8 and later report here any writeback error on the filesystem
        # since ``fd`` was opened, as fsync does for one file.
        if call(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return syncfs


# File systems whose syncfs(2) reports a failed writeback of file data, on the
# kernels that report it at all (5.8 and later). Elsewhere (overlayfs, as in a
# container's writable layer, FUSE, NFS) an error can be lost between the layers
# and syncfs return success: every file then gets its own fsync.
_SYNCFS_REPORTS = frozenset({"ext4", "xfs", "btrfs", "f2fs", "tmpfs"})
_SYNCFS_KERNEL = (5, 8)


def _fs_type(fd: int) -> str | None:
    """The type of the file system holding ``fd``, from the mount table (matched by
    device number), or None when that cannot be told."""
    dev = os.fstat(fd).st_dev
    wanted = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                # ID, parent, major:minor, root, mount point, options..., "-", type
                if len(fields) > 3 and fields[2] == wanted and "-" in fields[6:]:
                    return fields[fields.index("-", 6) + 1]
    except (OSError, ValueError, IndexError):
        pass
    return None


def _kernel_at_least(version: tuple[int, int]) -> bool:
    found = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return found is not None and (int(found[1]), int(found[2])) >= version


def _batch_sync(fd: int) -> Callable[[int], None] | None:
    """syncfs for the file system holding ``fd`` where it reports data errors."""
    call = _syncfs()
    if call is None or not _kernel_at_least(_SYNCFS_KERNEL):
        return None
    return call if _fs_type(fd) in _SYNCFS_REPORTS else None


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


# Directory descriptors held open at once. Each is fsynced before it is closed,
# so the entries made in it are durable, and it is opened again (relative to its
# parent, without following symlinks) if more goes into it. A package with
# thousands of directories must not run the process out of descriptors: the
# usual soft limit is 1024.
_MAX_OPEN_DIRS = 64


class OutputTree:
    def __init__(self, root: str) -> None:
        self.root_fd = os.open(root, _DIR_FLAGS)
        # Every directory made, as (parent node, name) -> node; the root is node 0.
        # Keys hold one path element each, so memory is linear in the paths' bytes
        # however deep they go.
        self._nodes: dict[tuple[int, str], int] = {}
        # Open directory descriptors by node, least recently used first.
        self._open: OrderedDict[int, int] = OrderedDict()
        self._files: dict[int, int] = {}  # open file descriptors and sizes, closed on any exit
        self._lock = threading.Lock()
        self._syncer = Syncer()
        self._batched = False  # small files were closed unsynced: syncfs before close
        self._syncfs = _batch_sync(self.root_fd)
        self._umask = umask()

    def _dir(self, rel: str) -> int:
        """The descriptor of directory ``rel``, made if needed (the caller holds the
        lock, and uses the descriptor before releasing it)."""
        node, fd = 0, self.root_fd
        if not rel:
            return fd
        for name in rel.split("/"):
            child = self._nodes.get((node, name))
            if child is None:
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                except OSError as exc:
                    raise _error(f"cannot create directory {rel}", exc) from None
                child = len(self._nodes) + 1
                self._nodes[(node, name)] = child
            child_fd = self._open.get(child)
            if child_fd is None:
                try:
                    child_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise _error(f"cannot open directory {rel}", exc) from None
                self._open[child] = child_fd
                # The parent is the most recently used: it is not the one let go.
                while len(self._open) > _MAX_OPEN_DIRS:
                    _, old = self._open.popitem(last=False)
                    self._close_dir(old)
            else:
                self._open.move_to_end(child)
            node, fd = child, child_fd
        return fd

    @staticmethod
    def _close_dir(fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            raise _error("syncing a directory", exc) from None
        finally:
            os.close(fd)

    def create(self, path: str, size: int, mode: int) -> int:
        """Create ``path`` (which must not exist) with ``size`` bytes; return a write fd."""
        parent, _, name = path.rpartition("/")
        # Owner read/write always; group and others keep at most read and execute, so a
        # private (0600) file stays private and nothing becomes group- or world-writable.
        # The umask narrows it further, as it does for the directories (mkdir) and
        # for what tar or cp would write: under umask 077 nothing is left readable
        # by others.
        perm = (mode & 0o755 & ~self._umask) | 0o600
        with self._lock:
            # Under the lock: another thread may let the directory's descriptor go.
            dir_fd = self._dir(parent)
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
            self._files[fd] = size
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
        """The file is complete: its fsync and close go to the background syncer, or
        for a small file, the close happens now and one syncfs covers it later."""
        with self._lock:
            size = self._files.pop(fd)
            small = size < SMALL_FILE and self._syncfs is not None
            if small:
                self._batched = True
        if not small:
            self._syncer.finish(fd, close=True)
            return
        # Forgotten before the close: the descriptor's number may come back.
        self._syncer.forget(fd)
        try:
            os.close(fd)
        except OSError as exc:
            raise OutputError("output.io", f"closing {path}: {exc.strerror}") from None

    def close(self) -> None:
        """Wait until every file is on disk, then sync and close the directories."""
        self._syncer.close()
        if self._batched and self._syncfs is not None:
            try:
                self._syncfs(self.root_fd)
            except OSError as exc:
                raise OutputError("output.io", f"flushing output to disk: {exc.strerror}") from None
        while self._open:
            _, fd = self._open.popitem(last=False)
            self._close_dir(fd)
        root, self.root_fd = self.root_fd, -1  # closed below even if its fsync fails
        self._close_dir(root)

    def __enter__(self) -> OutputTree:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is None:
            with contextlib.suppress(OutputError):
                self._syncer.close()
        else:  # the tree is about to be deleted: nothing of it needs to reach the disk
            self._syncer.abort()
        for fd in [*self._files, *self._open.values(), self.root_fd]:
            if fd >= 0:
                os.close(fd)
        self._files.clear()
        self._open.clear()
        self.root_fd = -1
