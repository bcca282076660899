"""Reading a model directory (or one file) to seal.

Symlinks, devices, FIFOs and sockets are refused, as is any name that breaks
the package path rules: secpack never seals what it would refuse to open.
Files are opened with O_NOFOLLOW and re-checked at every read, so a file
swapped for a symlink or changed in size during the seal is caught.

With ``follow_symlinks`` (a Hugging Face cache snapshot is a directory of links
into ``../../blobs/``), a link to a regular file is sealed as that file under the
link's own name. Its target is resolved once, at the scan, and every later read
opens that resolved path (still with O_NOFOLLOW), so a link retargeted during
the seal cannot change what is read. Links to directories stay refused: they
can loop, and a tree reached through one could be sealed twice.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from secpack.errors import InputError, SchemaError
from secpack.format.container import MAGIC
from secpack.format.contents import MODE_MASK, check_paths
from secpack.format.limits import DEFAULT_LIMITS, Limits
from secpack.format.paths import path_problem
from secpack.package.plan import InputFile, InputTree
from secpack.transport.atomic import TMP_MARKER, temp_base
from secpack.workers import worker_threads

__all__ = ["InputDirectory", "WithExtraFiles", "file_digests", "refuse_collisions", "scan_input"]


# What identifies one version of a file: a rewrite in place changes the size or
# the modification time, and even one that restores both (``touch -d``) changes the
# inode's change time, which no caller can set; a replacement changes the inode.
_Fingerprint = tuple[int, int, int, int, int]


def _fingerprint(st: os.stat_result) -> _Fingerprint:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_full(fd: int, offset: int, buf: memoryview) -> int:
    """Fill ``buf`` from ``fd`` at ``offset``; the bytes read (fewer at end of file)."""
    got = 0
    while got < len(buf):
        n = os.preadv(fd, [buf[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


@dataclass(frozen=True)
class InputDirectory:
    root: str  # the directory, or the parent of a single input file
    files: Sequence[InputFile]
    default_name: str
    # Each file as the scan saw it, for check_unchanged.
    fingerprints: Mapping[str, _Fingerprint] = field(default_factory=dict)
    # Package path -> the absolute, resolved file a followed symlink pointed at.
    targets: Mapping[str, str] = field(default_factory=dict)

    def _full(self, path: str) -> str:
        return self.targets.get(path) or os.path.join(self.root, *path.split("/"))

    def check_unchanged(self) -> None:
        """Refuse the input if any file changed since the scan. Seal reads a file
        more than once (segments, precision variants, model_signing digests), and
        all of it must come from one version of each file."""
        for f in self.files:
            try:
                now = _fingerprint(os.lstat(self._full(f.path)))
            except OSError:
                now = None
            if now != self.fingerprints.get(f.path):
                raise InputError("input.changed", f"{f.path} changed while it was being sealed")

    @contextlib.contextmanager
    def _open(self, path: str) -> Iterator[int]:
        full = self._full(path)
        try:
            # O_NONBLOCK: a file swapped for a FIFO after the scan must not hang the seal.
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise InputError(
                "input.changed", f"{path} was removed while it was being sealed"
            ) from None
        except OSError as exc:
            # ELOOP: the file became a symlink since the scan (O_NOFOLLOW).
            code = "input.unsafe" if exc.errno == errno.ELOOP else "input.io"
            raise InputError(code, f"{path}: cannot open ({exc.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InputError("input.unsafe", f"{path} is no longer a regular file")
            # O_NOFOLLOW guards the last element only: a directory on the way renamed
            # away and back (or a parent link flipped) between the scan and this
            # open would hand over another file under this name. Every read goes
            # through this descriptor, so checking what it is covers all of them.
            if _fingerprint(st) != self.fingerprints.get(path):
                raise InputError("input.changed", f"{path} changed while it was being sealed")
            yield fd
        except OSError as exc:  # a read failed: an I/O error of the disk
            raise InputError("input.io", f"{path}: cannot read ({exc.strerror})") from None
        finally:
            os.close(fd)

    def read_at(self, path: str, offset: int, length: int) -> bytes:
        with self._open(path) as fd:
            chunks = []
            got = 0
            while got < length:
                chunk = os.pread(fd, length - got, offset + got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def read_into(self, path: str, offset: int, buf: memoryview) -> int:
        """Read ``len(buf)`` bytes at ``offset`` into ``buf``; return how many there
        were (fewer only at the end of the file). A writer reuses one buffer per
        thread this way: a fresh one per segment cost a page fault per 4 KiB."""
        with self._open(path) as fd:
            return _read_full(fd, offset, buf)


class WithExtraFiles:
    """An input tree, minus some of its files, plus files made at seal time: held in
    memory (a ``model.sig``) or written to a scratch directory (precision variants)."""

    def __init__(
        self,
        tree: InputTree,
        extra: dict[str, bytes] | None = None,
        scratch: dict[str, str] | None = None,
        drop: Callable[[str], bool] | None = None,
    ) -> None:
        self.tree = tree
        self.extra = dict(extra or {})
        self.scratch = dict(scratch or {})
        kept = [f for f in tree.files if drop is None or not drop(f.path)]
        self.files = [
            *kept,
            *(InputFile(p, len(d), 0o644) for p, d in self.extra.items()),
            *(InputFile(p, os.path.getsize(a), 0o644) for p, a in self.scratch.items()),
        ]

    def read_at(self, path: str, offset: int, length: int) -> bytes:
        if path in self.extra:
            return self.extra[path][offset : offset + length]
        if path in self.scratch:
            with open(self.scratch[path], "rb") as fh:
                return os.pread(fh.fileno(), length, offset)
        return self.tree.read_at(path, offset, length)

    def read_into(self, path: str, offset: int, buf: memoryview) -> int:
        if path in self.extra:
            data = self.extra[path][offset : offset + len(buf)]
            buf[: len(data)] = data
            return len(data)
        if path in self.scratch:
            with open(self.scratch[path], "rb") as fh:
                return _read_full(fh.fileno(), offset, buf)
        return self.tree.read_into(path, offset, buf)


# Bytes per read when hashing whole files.
_HASH_CHUNK = 8 << 20


def file_digests(tree: InputDirectory, threads: int = 0) -> dict[str, bytes]:
    """SHA-256 of every file of ``tree``, files hashed in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    def one(f: InputFile) -> tuple[str, bytes]:
        h = hashlib.sha256()
        for offset in range(0, f.size, _HASH_CHUNK):
            chunk = tree.read_at(f.path, offset, min(_HASH_CHUNK, f.size - offset))
            if len(chunk) != min(_HASH_CHUNK, f.size - offset):
                raise InputError("input.changed", f"{f.path} changed while it was being read")
            h.update(chunk)
        return f.path, h.digest()

    with ThreadPoolExecutor(worker_threads(threads, _HASH_CHUNK)) as pool:
        return dict(pool.map(one, tree.files))


def _refuse(path: str, why: str) -> InputError:
    return InputError("input.unsafe", f"{path}: {why}")


class _Output:
    """The package being written, when it may lie inside the input: the package a
    previous seal left there and the temporaries of this one (or of a killed one)
    are not input. Any other file at that path is, and is refused rather than
    replaced."""

    def __init__(self, output: str) -> None:
        # Resolved, as each input directory is when compared: the same folder may
        # be named through a link.
        parent, base = os.path.split(os.path.abspath(output))
        self.parent = os.path.realpath(parent)
        self.path = os.path.join(self.parent, base)
        # Exactly the names temp_name gives (any origin, pid and tag), so that no
        # file of the input that merely starts the same way is left out.
        self.temp = re.compile(
            re.escape(f".{temp_base(base)}{TMP_MARKER}") + r"[0-9a-f]{8}-\d+-[0-9a-f]{8}"
        )

    def skips(self, directory: str, name: str) -> bool:
        if directory != self.parent:
            return False
        if self.temp.fullmatch(name):
            return True
        if name != os.path.basename(self.path):
            return False
        if _is_package(self.path):
            return True
        raise InputError(
            "input.invalid",
            f"the output {self.path} is one of the input files; write the package elsewhere",
        )


def _is_package(path: str) -> bool:
    """Whether ``path`` is a regular file that starts as a package does. Opened
    without following a link or waiting on a FIFO: anything else is not one (and
    the scan refuses it as it would anywhere)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.pread(fd, len(MAGIC), 0) == MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


def scan_input(
    source: str, limits: Limits, follow_symlinks: bool = False, output: str | None = None
) -> InputDirectory:
    """List the regular files under ``source`` (a directory or one file). With
    ``follow_symlinks``, links to regular files are sealed as those files, and
    ``source`` itself may be a link (see the module's docstring). ``output``, the
    package to write, is left out of the input where it lies inside it (one that is
    not a package is refused, not replaced)."""
    skip = _Output(output) if output is not None else None
    try:
        st = os.lstat(source)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError("input.missing", f"{source} does not exist") from None
    except OSError as exc:
        raise InputError("input.io", f"{source}: cannot read ({exc.strerror})") from None
    given = os.path.abspath(source)
    targets: dict[str, str] = {}
    if stat.S_ISLNK(st.st_mode):
        if not follow_symlinks:
            raise _refuse(source, "is a symlink (--follow-symlinks seals what it points to)")
        target, st = _follow(given, source)
        if stat.S_ISREG(st.st_mode):
            targets[os.path.basename(given)] = target
        else:
            given = target  # a directory: walked as if it had been named
    if stat.S_ISREG(st.st_mode):
        root, base = os.path.split(given)
        if skip is not None and os.path.join(os.path.realpath(root), base) == skip.path:
            raise InputError("input.invalid", "the output would replace the input file")
        if not targets:
            _check_pseudo(given, source, st)
        _check_name(base, limits)
        return InputDirectory(
            root,
            [InputFile(base, st.st_size, st.st_mode & MODE_MASK)],
            _stem(base),
            {base: _fingerprint(st)},
            targets,
        )
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(source, "is not a regular file or directory")
    root = given
    files: list[InputFile] = []
    fingerprints: dict[str, _Fingerprint] = {}
    _walk(root, "", files, fingerprints, limits, targets if follow_symlinks else None, skip)
    # The rules readers apply to the contents (§10), over the whole tree: whatever
    # the components, they are opened into one directory.
    refuse_collisions(files, limits=limits)
    name = os.path.basename(os.path.abspath(source).rstrip("/")) or "model"
    return InputDirectory(root, files, name, fingerprints, targets)


def _follow(full: str, shown: str) -> tuple[str, os.stat_result]:
    """The resolved target of the link ``full`` and its lstat: a regular file or,
    for the input itself, a directory. ``input.unsafe`` for a dangling link, a
    loop, or anything else."""
    target = os.path.realpath(full)
    try:
        st = os.lstat(target)
    except OSError as exc:
        raise _refuse(shown, f"is a symlink whose target cannot be read ({exc.strerror})") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise _refuse(shown, "is a symlink to something other than a regular file")
    if stat.S_ISREG(st.st_mode) and not _length_is_size(target, st.st_size):
        # /proc and /sys files are "regular" with a size that is not their length
        # (0, or 4096), or refuse reads at some offsets: sealed by their size they
        # would be empty or cut short.
        raise _refuse(shown, "is a symlink to a file whose size is not its length (/proc, /sys?)")
    return target, st


# The sizes that /proc (0) and /sys (4096) files report whatever they hold.
_PSEUDO_SIZES = (0, 4096)


def _check_pseudo(path: str, shown: str, st: os.stat_result) -> None:
    """``input.unsafe`` for a "regular" file whose size is not its length: sealed by
    its size, a /proc file would come back empty and a /sys file cut short. Only
    files of the sizes such files report are read to tell (an empty file, or one
    of 4096 bytes, costs a read of a byte or two)."""
    if st.st_size in _PSEUDO_SIZES and not _length_is_size(path, st.st_size):
        raise _refuse(shown, "is a file whose size is not its length (/proc, /sys?)")


def _length_is_size(path: str, size: int) -> bool:
    """Whether reading ``path`` ends exactly at ``size`` bytes (False when it cannot
    be read there at all)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return True  # left to the seal's own open, which reports why
    try:
        return os.pread(fd, 1, size) == b"" and (size == 0 or len(os.pread(fd, 1, size - 1)) == 1)
    except OSError:  # /proc/self/pagemap: EINVAL for a one-byte read
        return False
    finally:
        os.close(fd)


def refuse_collisions(
    files: Iterable[InputFile], context: str = "", limits: Limits = DEFAULT_LIMITS
) -> None:
    """``input.unsafe`` when the paths of ``files`` break the readers' collision rules
    (docs/FORMAT.md §10); ``context`` says what else is in the tree. More
    directories than ``open`` creates (``max_dirs``) is ``input.invalid``."""
    try:
        dirs = check_paths(f.path for f in files)
    except SchemaError as exc:
        raise InputError(
            "input.unsafe",
            f"{exc.detail}{context} (on case-insensitive or normalising file systems)",
        ) from None
    if dirs > limits.max_dirs:
        raise InputError(
            "input.invalid",
            f"files in {dirs} directories{context}, more than open creates ({limits.max_dirs})",
        )


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name[1:] else name


def _check_name(rel: str, limits: Limits) -> None:
    problem = path_problem(rel, limits.max_path_bytes)
    if problem:
        raise _refuse(rel, problem)


def _walk(
    root: str,
    rel: str,
    out: list[InputFile],
    fingerprints: dict[str, _Fingerprint],
    limits: Limits,
    targets: dict[str, str] | None,
    skip: _Output | None,
) -> None:
    """Walk ``root``/``rel``; ``targets`` is None unless symlinks are followed, and
    then collects the followed ones."""
    here = os.path.join(root, rel) if rel else root
    try:
        entries = sorted(os.scandir(here), key=lambda e: e.name)
    except OSError as exc:
        raise InputError("input.io", f"{rel or '.'}: cannot list ({exc.strerror})") from None
    here_real = os.path.realpath(here) if skip is not None else here
    for entry in entries:
        name = entry.name
        if skip is not None and skip.skips(here_real, name):
            continue
        child = f"{rel}/{name}" if rel else name
        _check_name(child, limits)
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as exc:  # a directory that can be listed but not searched
            raise InputError("input.io", f"{child}: cannot read ({exc.strerror})") from None
        if stat.S_ISLNK(st.st_mode):
            if targets is None:
                raise _refuse(
                    child,
                    "is a symlink; secpack seals regular files only (a Hugging Face cache "
                    "snapshot links into blobs/: pass --follow-symlinks)",
                )
            target, st = _follow(entry.path, child)
            if not stat.S_ISREG(st.st_mode):
                raise _refuse(child, "is a symlink to a directory (only file links are followed)")
            targets[child] = target
        if stat.S_ISDIR(st.st_mode):
            _walk(root, child, out, fingerprints, limits, targets, skip)
        elif stat.S_ISREG(st.st_mode):
            if child not in (targets or {}):
                _check_pseudo(entry.path, child, st)
            out.append(InputFile(child, st.st_size, st.st_mode & MODE_MASK))
            fingerprints[child] = _fingerprint(st)
            if len(out) > limits.max_files:
                raise InputError("input.invalid", f"more than {limits.max_files} files")
        else:
            raise _refuse(child, "is a device, FIFO or socket")
