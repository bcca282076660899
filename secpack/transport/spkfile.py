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
        # Guards bytes_read and the count of reads under way: close() waits for
        # those, so that no read goes through a descriptor number that was closed
        # under it (and may name another file of the process by then).
        self._state = threading.Condition()
        self._reading = 0
        # A source dropped without close() still gives its descriptor back.
        self._release = weakref.finalize(self, os.close, self.fd)

    def after_fork(self) -> None:
        """Fresh lock in a forked child (another thread may have held it at the
        fork, and its reads are not under way here). The descriptor itself is
        shared safely: reads are positional."""
        self._state = threading.Condition()
        self._reading = 0

    @contextlib.contextmanager
    def _read(self) -> Iterator[int]:
        """The descriptor, held open for one read (ValueError once closed)."""
        with self._state:
            fd = self.fd
            if fd < 0:
                raise ValueError(f"{self.path}: the package is closed")
            self._reading += 1
        try:
            with self._read_errors():
                yield fd
        finally:
            with self._state:
                self._reading -= 1
                if not self._reading:
                    self._state.notify_all()

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ContainerError("container.framing", "read beyond the end of the package")
        parts = []
        got = 0
        with self._read() as fd:
            while got < length:
                chunk = os.pread(fd, length - got, offset + got)
                if not chunk:
                    raise ContainerError("container.framing", "package shrank while being read")
                parts.append(chunk)
                got += len(chunk)
        with self._state:
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
        length = len(out)
        if offset < 0 or offset + length > self.size:
            raise ContainerError("container.framing", "read beyond the end of the package")
        got = 0
        with self._read() as fd:
            while got < length:
                n = os.preadv(fd, [out[got:]], offset + got)
                if n <= 0:
                    raise ContainerError("container.framing", "package shrank while being read")
                got += n
        with self._state:
            self.bytes_read += got

    def close(self) -> None:
        """Close the file once the reads under way are done; later reads are a
        ValueError. Closing twice is harmless."""
        with self._state:
            if self.fd < 0:
                return
            self.fd = -1
            while self._reading:
                self._state.wait()
        self._release()  # closes the descriptor, once

    def __enter__(self) -> FileSource:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
