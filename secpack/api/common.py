"""Small pieces shared by the verbs: time, progress reporting, expiry parsing."""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Protocol

from secpack.errors import InputError
from secpack.sign.policy import parse_duration

__all__ = [
    "MALFORMED",
    "NullProgress",
    "Progress",
    "keep_freed_memory",
    "now",
    "parse_expires",
    "source_date_epoch",
]


class Progress(Protocol):
    def start(self, total: int, what: str) -> None: ...

    def advance(self, n: int) -> None: ...


class NullProgress:
    def start(self, total: int, what: str) -> None:
        pass

    def advance(self, n: int) -> None:
        pass


# The algorithm shown for a signature entry that cannot be parsed (signatures,
# inspect), and what `unsign --malformed` removes.
MALFORMED = "malformed"


def now() -> int:
    return int(time.time())


def source_date_epoch() -> int:
    """Creation time: ``SOURCE_DATE_EPOCH`` when set (reproducible builds), else now."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return now()
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses. Below
    # _LATEST: a signing time or creation time past 2^63 - 1 would need a CBOR
    # bignum, which every strict reader (secpack's own included) refuses.
    # (At most 19 digits before int(): Python refuses to convert over 4300.)
    if not (value.isascii() and value.isdigit()) or len(value) > 19 or int(value) >= _LATEST:
        raise InputError(
            "input.invalid",
            f"SOURCE_DATE_EPOCH must be an integer from 0 to {_LATEST - 1}, not {value[:40]!r}",
        )
    return int(value)


# Times are CBOR unsigned integers that readers take as 64-bit: past 2^63 - 1 a
# writer would need a bignum, which canonical CBOR here forbids.
_LATEST = 2**63


def parse_expires(text: str, created: int) -> int:
    """An ISO-8601 time ('2027-01-01', '2027-01-01T00:00:00Z') or a duration ('90d')
    after ``created``. A time that has already passed is refused: the package would be
    dead on arrival."""
    try:
        value = created + parse_duration(text)
    except ValueError:
        value = _parse_time(text)
    if value <= created:
        raise InputError("input.invalid", f"--expires {text!r} is not after the creation time")
    if value >= _LATEST:
        raise InputError("input.invalid", f"--expires {text!r} is too far in the future")
    if value <= now():
        raise InputError("input.invalid", f"--expires {text!r} has already passed")
    return value


def _parse_time(text: str) -> int:
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            "input.invalid", f"--expires {text!r}: not an ISO-8601 time or a duration like 90d"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp())


# glibc mallopt() parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed segment buffers for reuse instead of returning them to
    the kernel: every segment allocates a few multi-megabyte buffers, and fresh pages
    cost a page fault and a zeroing each (about a third of `open`'s CPU time here).
    Process-wide, so only the CLI calls it; a server embedding the loader can set
    MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ itself. Returns False where
    there is no glibc."""
    import ctypes

    try:
        # The process's own symbols: libc is already loaded (no library search).
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # Buffers up to 64 MiB come from the heap, and up to 1 GiB of free heap is kept.
    return bool(mallopt(_M_MMAP_THRESHOLD, 64 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
