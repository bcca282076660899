"""Turning reports into what people read (and into JSON). Only the CLI prints."""

import contextlib
import datetime as dt
import json
import os
import sys
from typing import Any

from secpack.errors import SecpackError, StdoutError

__all__ = [
    "fail",
    "human_ratio",
    "human_size",
    "human_time",
    "out",
    "printable",
    "progress_for",
    "write_err",
    "write_out",
]

# Characters a terminal acts on rather than shows: C0 and C1 controls and DEL
# (escape sequences, carriage returns, new lines that forge a line of output), the
# line and paragraph separators (new lines to some terminals and log viewers), and
# the bidirectional overrides that reorder what is shown. Names, paths and
# signature types come from the package, so each is shown as an escape instead.
_UNPRINTABLE = {
    c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    for c in [
        *range(0x20),
        *range(0x7F, 0xA0),
        *(0x061C, 0x200E, 0x200F, 0x2028, 0x2029),
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    ]
}


def printable(text: str) -> str:
    """``text`` with every character that a terminal would act on escaped."""
    return text.translate(_UNPRINTABLE)


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_ratio(part: int, whole: int) -> str:
    if whole == 0:
        return "n/a"
    ratio = part / whole
    return f"{ratio:.3f} ({(ratio - 1) * 100:+.1f}%)"


def human_time(ts: int | None) -> str:
    if ts is None:
        return "never"
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        # Signed, and valid, but past what a calendar date can show (year 9999).
        return f"{ts} (seconds since 1970, beyond year 9999)"


def write_out(text: str) -> None:
    """Write ``text`` to stdout and flush it, so that a full disk, a closed pipe or
    a closed stdout shows here, as a :class:`StdoutError`, and not later in an
    exit handler or as the failure of the work that came before."""
    stream = sys.stdout
    try:
        if stream is None:  # started with stdout closed (`>&-`)
            raise StdoutError("stdout is closed")
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        raise StdoutError("the reader closed the pipe", broken_pipe=True) from None
    except (OSError, ValueError) as exc:  # ValueError: a stream closed in this process
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StdoutError(reason) from None


def write_err(text: str) -> None:
    """Write ``text`` to stderr if it can be written. stderr is where failures are
    reported: when it is gone too, the exit status is all that is left, and a
    failure to write there must not replace what is being reported."""
    stream = sys.stderr
    if stream is None:
        return
    with contextlib.suppress(OSError, ValueError):
        stream.write(text)
        stream.flush()


def out(obj: dict[str, Any], as_json: bool, lines: list[str], quiet: bool) -> None:
    """Print a success: JSON on stdout, or human lines unless quiet."""
    if as_json:
        write_out(json.dumps({"ok": True, **obj}, sort_keys=True) + "\n")
    elif not quiet:
        write_out("".join(printable(line) + "\n" for line in lines))


def fail(err: SecpackError, as_json: bool) -> None:
    """Report an error: ``error[<code>]: <message>`` on stderr, or JSON on stdout.

    Never raises: the exit status reports the error whether or not stdout and
    stderr can still be written."""
    message = err.detail
    if as_json:
        doc = {"ok": False, "error": {"code": err.code, "message": message}}
        with contextlib.suppress(StdoutError):
            write_out(json.dumps(doc) + "\n")
    write_err(f"error[{err.code}]: {printable(message)}\n")


class _RichProgress:
    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self._task: Any = None

    def start(self, total: int, what: str) -> None:
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task(what, total=total)
        else:
            self._progress.update(self._task, description=what, total=total, completed=0)

    def advance(self, n: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)

    def stop(self) -> None:
        self._progress.stop()


class _Quiet:
    def start(self, total: int, what: str) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def stop(self) -> None:
        pass


# Work shorter than about a second finishes before a bar is worth drawing.
_BAR_THRESHOLD = 256 << 20


def progress_for(quiet: bool, as_json: bool, size_hint: int) -> _RichProgress | _Quiet:
    """A progress bar on a terminal for work worth watching; silence otherwise."""
    if quiet or as_json or sys.stderr is None or not sys.stderr.isatty() or os.environ.get("CI"):
        return _Quiet()
    if size_hint < _BAR_THRESHOLD:
        return _Quiet()
    return _RichProgress()
