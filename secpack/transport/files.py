"""Small-file I/O for keys and policies, and key pairs written whole (private 0600)."""

from __future__ import annotations

import os
import stat

from secpack.errors import InputError

__all__ = ["read_small", "write_key_pair", "write_public"]

# Keys and policies are a few KiB; a cap stops a mistaken path (a model file) early.
MAX_SMALL_FILE = 1 << 20


def read_small(path: str, what: str) -> bytes:
    try:
        # O_NONBLOCK: a FIFO or device named by mistake is refused, not waited on.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError("input.missing", f"{what} {path} does not exist") from None
    except OSError as exc:  # permission denied, an I/O error, a name too long
        raise InputError("input.io", f"{what} {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError("input.invalid", f"{what} {path} is not a regular file")
        with os.fdopen(fd, "rb") as fh:
            fd = -1
            # Read at the file's own size: read(n) sets n bytes aside first, and a
            # key of a few hundred bytes must not need the cap's whole MiB. A file
            # longer than it said (one that grew, or that reports no size) is
            # read on to the cap.
            data = fh.read(min(info.st_size, MAX_SMALL_FILE) + 1)
            if len(data) > info.st_size:
                data += fh.read(MAX_SMALL_FILE + 1 - len(data))
    except OSError as exc:
        raise InputError("input.io", f"{what} {path}: {exc.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > MAX_SMALL_FILE:
        raise InputError("input.invalid", f"{what} {path} is larger than {MAX_SMALL_FILE} bytes")
    return data


def _write(path: str, data: bytes, mode: int, overwrite: bool) -> None:
    from secpack.transport.atomic import AtomicFile  # writers only; readers start faster

    with AtomicFile(path, overwrite=overwrite, mode=mode) as out:
        os.fchmod(out.fd, mode)  # the umask may have narrowed it; set exactly
        out.pwrite(0, data)
        out.commit()


def write_public(path: str, data: bytes, overwrite: bool = False) -> None:
    _write(path, data, 0o644, overwrite)


def write_key_pair(path: str, private: bytes, public: bytes, overwrite: bool = False) -> None:
    """``path`` (0600) and ``path.pub`` (0644), both or neither: both are written and
    flushed under temporary names before either takes its name, so a full disk, a
    name too long or a directory in the way leaves no private key without its
    public half."""
    import contextlib

    from secpack.interrupts import held
    from secpack.transport.atomic import AtomicFile

    with (
        AtomicFile(path, overwrite=overwrite, mode=0o600) as first,
        AtomicFile(path + ".pub", overwrite=overwrite, mode=0o644) as second,
    ):
        for out, data, mode in ((first, private, 0o600), (second, public, 0o644)):
            os.fchmod(out.fd, mode)  # the umask may have narrowed it; set exactly
            out.pwrite(0, data)
        # One hold over both renames: an interrupt between them would leave the
        # private key without its public half.
        with held():
            first.commit()
            try:
                second.commit()
            except BaseException:
                if not overwrite:  # the private key did not exist before: take it back
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                raise
