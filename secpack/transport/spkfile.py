"""The ``.spk`` file as a random-access byte source."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import weakref
from collections.abc import Iterator
from types import TracebackType

from secpack.errors import ContainerError, InputError

__all__ = ["FileSource"]


class FileSource:
    """Positional reads from one package file; safe to share between threads."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise InputError("input.missing", f"{path} does not exist") from None
        except OSError as exc:  # permission denied, an I/O error, a name too long
            raise InputError("input.io", f"{path}: {exc.strerror}") from None
        st = os.fstat(self.fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(self.fd)
            raise InputError("input.invalid", f"{path} is not a regular file")
        self.size = st.st_size
        self.bytes_read = 0  # for tests and benchmarks of selective reads
        self._count_lock = threading.Lock()
        # A source dropped without close() still gives its descriptor back.
        self._release = weakref.finalize(self, os.close, self.fd)

    def after_fork(self) -> None:
        """Fresh lock in a forked child (another thread may have held it at the fork).
        The descriptor itself is shared safely: reads are positional."""
        self._count_lock = threading.Lock()

    def _open_fd(self) -> int:
        # After close() the number may already name another file of this process.
        fd = self.fd
        if fd < 0:
            raise ValueError(f"{self.path}: the package is closed")
        return fd

    def read_at(self, offset: int, length: int) -> bytes:
        fd = self._open_fd()
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ContainerError("container.framing", "read beyond the end of the package")
        parts = []
        got = 0
        while got < length:
            with self._read_errors():
                chunk = os.pread(fd, length - got, offset + got)
            if not chunk:
                raise ContainerError("container.framing", "package shrank while being read")
            parts.append(chunk)
            got += len(chunk)
        with self._count_lock:
            self.bytes_read += got
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @contextlib.contextmanager
    def _read_errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:  # an I/O error of the disk
            raise InputError("input.io", f"{self.path}: {exc.strerror}") from None

    def read_into(self, offset: int, out: memoryview) -> None:
        """``read_at`` into a caller's buffer: no allocation per read."""
        fd = self._open_fd()
        length = len(out)
        if offset < 0 or offset + length > self.size:
            raise ContainerError("container.framing", "read beyond the end of the package")
        got = 0
        while got < length:
            with self._read_errors():
                n = os.preadv(fd, [out[got:]], offset + got)
            if n <= 0:
                raise ContainerError("container.framing", "package shrank while being read")
            got += n
        with self._count_lock:
            self.bytes_read += got

    def close(self) -> None:
        if self.fd >= 0:
            self.fd = -1
            self._release()  # closes the descriptor, once

    def __enter__(self) -> FileSource:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
