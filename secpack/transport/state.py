"""Rollback protection state: the highest version seen per package name and signer.

One small JSON file per state directory, read and rewritten under an exclusive
``fcntl`` lock and replaced atomically, so concurrent loaders in several
processes never lose an update or see a half-written file. A state file that
cannot be parsed fails closed (``state.corrupt``): silently starting over would
re-open the door to downgrades.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Sequence

from secpack.errors import FreshnessError, SecpackError

__all__ = ["VersionState", "default_state_dir"]

STATE_ENV = "SECPACK_STATE_DIR"
_FILE = "versions.json"
_LOCK = "versions.lock"
_FORMAT = 1
# The file holds a name and a version per package and signer: a few dozen bytes
# each. One larger than this is not a state file secpack wrote.
_MAX_BYTES = 16 << 20


def default_state_dir() -> str:
    """``$SECPACK_STATE_DIR``, else ``$XDG_STATE_HOME/secpack``, else ``~/.local/state/secpack``."""
    explicit = os.environ.get(STATE_ENV)
    if explicit:
        return explicit
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "secpack")


# What a refused load can do about it: a read-only container image (home and root
# not writable) is where this is met first. Rollback protection fails closed: a
# state that cannot be kept must not quietly stop protecting.
_WHERE_TO = (
    f" (set ${STATE_ENV}, or the policy's [rollback] state_dir, to a writable directory"
    " that outlives the process, or turn rollback protection off with"
    " [rollback] protect = false)"
)


class VersionState:
    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or default_state_dir()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, int]]]:
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            lock_fd = os.open(
                os.path.join(self.directory, _LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:  # the state directory is a file, read-only, or full
            raise SecpackError(
                "state.io", f"rollback state {self.directory}: {exc.strerror}{_WHERE_TO}"
            ) from None
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
            except OSError as exc:  # ENOLCK: a file system without locks
                raise SecpackError(
                    "state.io", f"rollback state {self.directory}: cannot lock ({exc.strerror})"
                ) from None
            data = self._read()
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                self._write(data)
        finally:
            # Closing the descriptor releases the lock anyway; an unlock that fails
            # (no lock was taken) must not hide the error being raised.
            with contextlib.suppress(OSError):
                fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)

    def _path(self) -> str:
        return os.path.join(self.directory, _FILE)

    def _read(self) -> dict[str, dict[str, int]]:
        try:
            with open(self._path(), "rb") as fh:
                # As much as the file holds, not the cap: read(n) allocates n bytes
                # up front, and a tight memory limit refused 16 MiB for a file of 1 KB.
                size = os.fstat(fh.fileno()).st_size
                if size > _MAX_BYTES:
                    raise ValueError("too large")
                doc = json.loads(fh.read(size))
        except FileNotFoundError:  # nothing recorded yet
            return {}
        except NotADirectoryError:
            # A file where the state directory should be: what open refuses when it
            # records, verify (which only compares) must not take as "nothing seen".
            raise SecpackError(
                "state.io", f"rollback state {self.directory} is not a directory{_WHERE_TO}"
            ) from None
        except (OSError, ValueError, RecursionError):  # nesting past the parser's stack
            raise SecpackError("state.corrupt", f"{self._path()} cannot be read") from None
        if not isinstance(doc, dict):
            raise SecpackError("state.corrupt", f"{self._path()} is not a secpack state file")
        packages = doc.get("packages")
        if doc.get("format") != _FORMAT or not isinstance(packages, dict):
            raise SecpackError("state.corrupt", f"{self._path()} is not a secpack state file")
        for signers in packages.values():
            if not isinstance(signers, dict) or not all(type(v) is int for v in signers.values()):
                raise SecpackError("state.corrupt", f"{self._path()} holds malformed entries")
        return packages

    def _write(self, packages: dict[str, dict[str, int]]) -> None:
        from secpack.transport.atomic import fsync_dir, remove_stale, temp_name

        path = self._path()
        remove_stale(path)
        tmp = temp_name(path)
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump({"format": _FORMAT, "packages": packages}, fh, sort_keys=True, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            # Readers never lock: they see the old file or the new one, never a mix.
            os.replace(tmp, path)
            fsync_dir(self.directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise SecpackError("state.io", f"{path}: {exc.strerror}{_WHERE_TO}") from None

    def check(
        self,
        name: str,
        signers: Sequence[bytes],
        version: int,
        *,
        record: bool,
        allow_downgrade: bool,
    ) -> int | None:
        """Refuse ``version`` if any of ``signers`` was seen signing a higher version of
        ``name`` (``fresh.rollback``) unless ``allow_downgrade``; with ``record``, remember
        it. Returns the highest version previously seen, if any. A check that records
        nothing takes no lock and creates nothing."""
        if not record:
            return _compare(name, self._read().get(name, {}), signers, version, allow_downgrade)
        with self._locked() as packages:
            seen = packages.setdefault(name, {})
            highest = _compare(name, seen, signers, version, allow_downgrade)
            for s in signers:
                seen[s.hex()] = max(seen.get(s.hex(), 0), version)
            if not seen:
                del packages[name]
            return highest


def _compare(
    name: str, seen: dict[str, int], signers: Sequence[bytes], version: int, allow_downgrade: bool
) -> int | None:
    highest = max((seen.get(s.hex(), 0) for s in signers), default=0) or None
    if highest is not None and version < highest and not allow_downgrade:
        raise FreshnessError(
            "fresh.rollback",
            f"{name} v{version} is older than v{highest}, already seen from the same signer",
        )
    return highest
