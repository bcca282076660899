"""Atomic output: everything is written under a temporary name in the
destination's own directory and renamed into place only once complete and
flushed to disk. On any failure the temporary is removed, so the destination
holds either nothing new or the whole result.

Temporary names are ``.<name>.secpack-tmp-<origin>-<pid>-<random>``: recognisable,
and tied to the process (and the boot and PID namespace, ``origin``) that owns
them, so that stale ones can be cleaned up without touching a live writer's.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import secrets
import stat
from types import TracebackType
from typing import Self

from secpack.errors import InputError, OutputError
from secpack.interrupts import held
from secpack.transport.syncer import Syncer

__all__ = [
    "TMP_MARKER",
    "AtomicDirectory",
    "AtomicFile",
    "WorkDirectory",
    "fsync_dir",
    "named_output",
    "remove_stale",
    "remove_tree",
    "temp_base",
    "temp_name",
    "umask",
]

TMP_MARKER = ".secpack-tmp-"


def _origin() -> str:
    """Tags temporaries with the machine boot and PID namespace that made them: a pid
    only says whether a writer is alive when it is read on that same boot, in that
    same namespace (not across containers, NFS clients or reboots)."""
    parts = [os.uname().nodename]  # socket.gethostname(), without importing socket
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id", "rb") as fh:
        # Read as bytes, so that whatever it holds makes a tag; the text of an
        # ordinary one, so that the tags of earlier versions' temporaries stay.
        raw = fh.read(64).strip()
        parts.append(raw.decode("ascii") if raw.isascii() else raw.hex())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


@functools.cache
def origin() -> str:
    """This process's origin tag (computed once, on first use)."""
    return _origin()


def umask() -> int:
    """The process umask, read without changing it (os.umask() would, racing threads)."""
    with (
        contextlib.suppress(OSError, ValueError),
        open("/proc/self/status", encoding="ascii") as fh,
    ):
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


# A file name's longest, in bytes, on Linux file systems (NAME_MAX).
_NAME_MAX = 255
# What a temporary adds to its destination's name: ".", the marker, the origin,
# "-", a pid of up to 7 digits (pid_max is at most 2^22), "-" and 8 hex digits.
_TEMP_EXTRA = 1 + len(TMP_MARKER) + 8 + 1 + 7 + 1 + 8


def temp_base(base: str) -> str:
    """``base`` as it appears in its temporaries' names: itself, or where that would
    make them too long for the file system, a prefix and a hash of it (the same
    every time, so that remove_stale finds them)."""
    raw = os.fsencode(base)  # a name need not be UTF-8: its bytes, as the OS has them
    if len(raw) + _TEMP_EXTRA <= _NAME_MAX:
        return base
    tag = "~" + hashlib.sha256(raw).hexdigest()[:8]
    room = _NAME_MAX - _TEMP_EXTRA - len(tag)
    return os.fsdecode(raw[:room]) + tag


def temp_name(dest: str) -> str:
    parent, base = os.path.split(os.path.abspath(dest))
    name = f".{temp_base(base)}{TMP_MARKER}{origin()}-{os.getpid()}-{secrets.token_hex(4)}"
    return os.path.join(parent, name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_stale(dest: str) -> list[str]:
    """Remove temporaries for ``dest`` left by secpack processes that no longer run
    (killed mid-write); return what was removed. Temporaries of live processes,
    including other writers of the same destination, are left alone."""
    parent, base = os.path.split(os.path.abspath(dest))
    # Only temporaries from this boot and PID namespace: elsewhere the pid means nothing.
    pattern = re.compile(
        re.escape(f".{temp_base(base)}{TMP_MARKER}{origin()}-") + r"(\d+)-[0-9a-f]{8}"
    )
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        m = pattern.fullmatch(name)
        if not m or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        path = os.path.join(parent, name)
        if os.path.isdir(path) and not os.path.islink(path):
            import shutil  # cleanup only: shutil is slow to import

            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        removed.append(path)
    return removed


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_COPY_CHUNK = 8 << 20  # bytes per user-space copy when copy_file_range is unavailable


def _copy_range(src_fd: int, dst_fd: int, src_off: int, dst_off: int, length: int) -> None:
    done = 0
    try:
        while done < length:
            n = os.copy_file_range(src_fd, dst_fd, length - done, src_off + done, dst_off + done)
            if n == 0:
                raise OSError(errno.EIO, "source ended early")
            done += n
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while done < length:
        chunk = os.pread(src_fd, min(_COPY_CHUNK, length - done), src_off + done)
        if not chunk:
            raise OSError(errno.EIO, "source ended early")
        view = memoryview(chunk)
        while view:
            n = os.pwrite(dst_fd, view, dst_off + done)
            view = view[n:]
            done += n


def _io_error(what: str, exc: OSError) -> OutputError:
    return OutputError("output.io", f"{what}: {exc.strerror or exc}")


def remove_tree(path: str) -> None:
    """Remove the directory ``path`` and all in it, if it is there. An interrupt
    during the removal is let through only once the removal has finished: cut
    short, it would leave part of a temporary (decrypted files, variant weights)
    behind."""
    import shutil  # cleanup only: shutil is slow to import

    try:
        shutil.rmtree(path, ignore_errors=True)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


class _Temporary:
    """What AtomicFile and AtomicDirectory share: a temporary beside ``dest``,
    made on entering the with block (not in the constructor: an interrupt, the
    command line's SIGINT or SIGTERM, between the constructor's return and the
    block would leave it behind, with nothing to remove it), and removed on
    leaving it unless committed."""

    _KIND = ""  # what the temporary is, for the error: "file" or "directory"
    dest: str
    tmp: str
    _entered: bool
    _committed: bool

    def _make(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        # From here abort() removes the temporary by its name: an interrupt may
        # come just after the system call made it and before it is recorded (a
        # file's descriptor is then lost, the file is not). The name is this
        # run's own (a random part), so removing it is safe whether or not it
        # was made.
        self._entered = True
        try:
            self._make()
        except OSError as exc:  # the system call's own: nothing was made
            self._entered = False
            raise _io_error(f"cannot create a {self._KIND} next to {self.dest}", exc) from None
        except BaseException:
            self.abort()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._committed:
            self.abort()


def named_output(dest: str) -> str:
    """``dest``, refused when empty: os.path.abspath("") is the working directory,
    which ``-o ''`` (an unset shell variable) never meant."""
    if not dest:
        raise InputError("input.invalid", "the output path is empty")
    return dest


class AtomicFile(_Temporary):
    """A file that appears at ``dest`` only when :meth:`commit` succeeds."""

    _KIND = "file"

    def __init__(
        self, dest: str, overwrite: bool = False, mode: int = 0o644, *, force_option: bool = True
    ) -> None:
        """``force_option``: the caller's command has a --force that sets ``overwrite``
        (seal, keygen), so an existing ``dest`` is reported with that advice."""
        self.dest = os.path.abspath(named_output(dest))
        self.overwrite = overwrite
        self.mode = mode
        parent = os.path.dirname(self.dest)
        if not os.path.isdir(parent):
            raise OutputError("output.io", f"directory {parent} does not exist")
        remove_stale(self.dest)
        if not overwrite and os.path.lexists(self.dest):
            advice = " (use --force to replace it)" if force_option else ""
            raise OutputError("output.exists", f"{dest} exists{advice}")
        if overwrite:
            with contextlib.suppress(FileNotFoundError):
                kind = os.lstat(self.dest).st_mode
                # --force replaces a file (or a symlink, not its target); a device, a
                # FIFO or a directory at the name is not the output of an earlier run.
                if not (stat.S_ISREG(kind) or stat.S_ISLNK(kind)):
                    raise OutputError(
                        "output.unsafe", f"{dest} is not a regular file; not replacing it"
                    )
        self.tmp = temp_name(self.dest)  # made on entering the with block
        self.fd = -1
        self._entered = False
        self._committed = False
        self._syncer: Syncer | None = None

    def chmod(self, mode: int) -> None:
        """Give the file ``mode`` exactly (not masked by the umask): a package
        rewritten in place keeps the permissions it had."""
        try:
            os.fchmod(self.fd, mode)
        except OSError as exc:
            raise _io_error(f"setting the mode of {self.dest}", exc) from None

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        size = len(view)
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as exc:
            raise _io_error(f"writing {self.dest}", exc) from None
        if self._syncer is None and size >= 1 << 20:
            self._syncer = Syncer()
        if self._syncer is not None:
            self._syncer.wrote(self.fd, size)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def pread(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def copy_from(self, src_fd: int, src_off: int, dst_off: int, length: int) -> None:
        """Copy bytes from another file, in the kernel where the file system allows."""
        try:
            _copy_range(src_fd, self.fd, src_off, dst_off, length)
        except OSError as exc:
            raise _io_error(f"writing {self.dest}", exc) from None

    def move_range(self, src: int, dst: int, length: int) -> None:
        """Copy ``length`` bytes from ``src`` to ``dst`` via a fresh temporary file
        (the ranges may overlap) and continue with that file."""
        other, fd = temp_name(self.dest), -1
        try:
            fd = os.open(other, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self.mode)
            _copy_range(self.fd, fd, src, dst, length)
        except BaseException as exc:  # an interrupt too (see __enter__)
            if fd >= 0:
                os.close(fd)
            if fd >= 0 or not isinstance(exc, OSError):  # not when os.open failed
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(other)
            if isinstance(exc, OSError):
                raise _io_error(f"writing {self.dest}", exc) from None
            raise
        try:
            # Waits for the old file's queued flushes, which may take seconds.
            self._stop_syncer()
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(other)
            raise
        # The new file is recorded before the old one goes, and the old one goes
        # even when an interrupt comes between the two steps.
        old_fd, old_tmp = self.fd, self.tmp
        self.fd, self.tmp = fd, other
        try:
            os.close(old_fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old_tmp)

    def _stop_syncer(self) -> None:
        if self._syncer is not None:
            syncer, self._syncer = self._syncer, None
            syncer.close()

    def commit(self) -> None:
        self._stop_syncer()
        try:
            os.fsync(self.fd)  # still interruptible: the file may be large
        except OSError as exc:
            raise _io_error(f"finishing {self.dest}", exc) from None
        # From here the output is as good as in place: an interrupt waits until it
        # is, and recorded so (secpack.interrupts says why).
        with held():
            try:
                # Recorded as closed first: an interrupt between the two must not
                # leave abort() closing the number again (another file's, by then).
                fd, self.fd = self.fd, -1
                os.close(fd)
                if self.overwrite:
                    os.replace(self.tmp, self.dest)
                else:
                    # link() fails if dest appeared meanwhile: never clobber without --force.
                    os.link(self.tmp, self.dest)
                    os.unlink(self.tmp)
                fsync_dir(os.path.dirname(self.dest))
            except FileExistsError:
                raise OutputError("output.exists", f"{self.dest} appeared while writing") from None
            except OSError as exc:
                raise _io_error(f"finishing {self.dest}", exc) from None
            self._committed = True

    def abort(self) -> None:
        # The temporary goes even when a second interrupt cuts the rest short.
        try:
            if self._syncer is not None:
                # The temporary is deleted next: its queued syncs are dropped, not
                # waited for.
                syncer, self._syncer = self._syncer, None
                syncer.abort()
            if self.fd >= 0:
                fd, self.fd = self.fd, -1
                os.close(fd)
        finally:
            if self._entered:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.tmp)

    def _make(self) -> None:
        self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self.mode)


# The POSIX ACLs Linux keeps as extended attributes: who may enter a directory
# (access) and what new files in it inherit (default).
_ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")


def _copy_access_acl(src: str, dst: str) -> None:
    """Give ``dst`` the ACLs of ``src``, where it has any and the file system keeps
    them (chmod alone would turn an ACL's mask into plain group bits)."""
    for name in _ACL_XATTRS:
        try:
            value = os.getxattr(src, name, follow_symlinks=False)
        except OSError:  # none, or no ACLs on this file system
            continue
        os.setxattr(dst, name, value, follow_symlinks=False)


def _is_mount_point(path: str) -> bool:
    """Whether ``path`` is where something is mounted: a file system (ismount) or a
    bind mount of a directory of the same one, which only the mount table shows."""
    if os.path.ismount(path):
        return True
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                fields = line.split(" ")
                # Field 5 is the mount point, with space, tab, newline and backslash
                # written as octal escapes.
                if len(fields) > 4 and _unescape_mount(fields[4]) == real:
                    return True
    except OSError:  # no /proc: ismount's answer is what there is
        pass
    return False


def _unescape_mount(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


class AtomicDirectory(_Temporary):
    """A directory that appears at ``dest`` only when :meth:`commit` succeeds.

    ``dest`` may already exist only as an empty directory, which rename(2)
    replaces atomically; anything else is refused.
    """

    _KIND = "directory"

    def __init__(self, dest: str) -> None:
        self.dest = os.path.abspath(named_output(dest))
        parent = os.path.dirname(self.dest)
        if not os.path.isdir(parent):
            raise OutputError("output.io", f"directory {parent} does not exist")
        remove_stale(self.dest)
        if os.path.islink(self.dest) or (os.path.lexists(self.dest) and not self._empty_dir()):
            raise OutputError("output.exists", f"{dest} exists and is not an empty directory")
        # An empty directory the user made keeps its mode (and access ACL): one made
        # 0700 to keep the plaintext private must not come back 0755. Only the
        # user's own, and never group- or world-writable: someone else's empty
        # directory (0777 in a shared place) must not lend its mode to the files.
        self._keep: os.stat_result | None = None
        if os.path.lexists(self.dest):
            if _is_mount_point(self.dest):
                # rename(2) cannot replace a mount point (EBUSY), and the files would
                # first be written next to it, on the parent's file system: on a
                # disk, when the mount was a tmpfs meant to keep them off one.
                raise OutputError(
                    "output.exists",
                    f"{dest} is a mount point; open into a new directory inside it",
                )
            st = os.stat(self.dest)
            if st.st_uid == os.geteuid():
                self._keep = st
        self.tmp = temp_name(self.dest)  # made on entering the with block
        self._entered = False
        self._committed = False

    def _empty_dir(self) -> bool:
        return os.path.isdir(self.dest) and not os.listdir(self.dest)

    def commit(self) -> None:
        # The files are written and synced: an interrupt waits until the directory
        # is in place, and recorded so (secpack.interrupts says why).
        with held():
            try:
                if os.path.lexists(self.dest) and not self._empty_dir():
                    raise OutputError("output.exists", f"{self.dest} appeared while writing")
                # Readable by others only once complete: during the write (and after a
                # kill) the decrypted files sit in a directory only the owner can enter.
                if self._keep is None:
                    os.chmod(self.tmp, 0o755 & ~umask())
                else:
                    if self._keep.st_gid != os.getegid():
                        with contextlib.suppress(PermissionError):  # its group, where we may
                            os.chown(self.tmp, -1, self._keep.st_gid)
                    os.chmod(self.tmp, stat.S_IMODE(self._keep.st_mode) & ~0o022)
                    _copy_access_acl(self.dest, self.tmp)
                os.rename(self.tmp, self.dest)
                fsync_dir(os.path.dirname(self.dest))
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    # Another writer's rename won the race since the check above.
                    raise OutputError(
                        "output.exists", f"{self.dest} appeared while writing"
                    ) from None
                raise _io_error(f"finishing {self.dest}", exc) from None
            self._committed = True

    def abort(self) -> None:
        if self._entered:
            remove_tree(self.tmp)

    def _make(self) -> None:
        os.mkdir(self.tmp, 0o700)


class WorkDirectory(_Temporary):
    """A private (0700) scratch directory beside ``dest``, named as its other
    temporaries are (so that remove_stale clears one a killed run left), made on
    entering the with block and removed with all in it on leaving it."""

    _KIND = "directory"

    def __init__(self, dest: str) -> None:
        self.dest = os.path.abspath(named_output(dest))
        self.tmp = temp_name(self.dest)  # made on entering the with block
        self._entered = False
        self._committed = False  # never: it is always removed

    def abort(self) -> None:
        if self._entered:
            remove_tree(self.tmp)

    def _make(self) -> None:
        os.mkdir(self.tmp, 0o700)
