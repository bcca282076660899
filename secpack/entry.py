"""The console script's first frame: it imports the command line (typer, then the
verb's modules), so that an interrupt during those imports, before any verb has
begun, ends as ``error[interrupted]`` with exit 130 and not as a traceback
(SIGTERM takes the same way out, with exit 143).

It imports nothing but the standard library before the command line."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from typing import NoReturn

__all__ = ["interrupt_status", "interrupted", "main", "one_malloc_arena"]

# What an interrupt reports, before or after a verb began: nothing is ever left
# half-written (outputs are built under temporary names and renamed whole).
INTERRUPTED = "stopped; nothing was left half-written"


# The signal that ended the run, once one has (SIGTERM); none for Ctrl-C.
_signalled: list[int] = []


def interrupt_status() -> int:
    """128 + the signal, as a shell reports a process a signal ended: 130 for
    Ctrl-C (SIGINT), 143 for SIGTERM."""
    return 128 + (_signalled[-1] if _signalled else signal.SIGINT)


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (timeout(1), docker stop, a cancelled CI job) takes Ctrl-C's way out,
    # through every cleanup on the way: without this the process died at once and
    # left a temporary of decrypted files behind.
    _signalled.append(signum)
    raise KeyboardInterrupt


def interrupted(as_json: bool) -> NoReturn:
    """Report ``interrupted`` as every other error is reported, and exit at once
    with ``interrupt_status()``. It writes what secpack.cli.render's ``fail``
    writes, by itself: importing that module imports typer, which is what may have
    been interrupted."""
    doc = {"ok": False, "error": {"code": "interrupted", "message": INTERRUPTED}}
    writes = [(sys.stdout, json.dumps(doc) + "\n")] if as_json else []
    writes.append((sys.stderr, f"error[interrupted]: {INTERRUPTED}\n"))
    for stream, text in writes:
        # A closed stream (None), a full disk or a closed pipe: the exit status
        # still says it.
        with contextlib.suppress(Exception):
            stream.write(text)
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(interrupt_status())


# glibc's mallopt() parameter for the most malloc arenas (malloc.h: M_ARENA_MAX).
_M_ARENA_MAX = -8


def one_malloc_arena() -> bool:
    """Under an address-space limit (``ulimit -v``, RLIMIT_AS; some batch
    schedulers set one), have every thread allocate from glibc's main malloc
    arena. True where that was done.

    Why: a thread gets an arena of its own on its first malloc, and making one
    reserves 64 MiB of address space. Near the limit a worker's first small
    allocations then fail while the segments' large ones still fit, and one
    that fails inside the OpenSSL bundled with cryptography (4.0.3) recurses
    until the thread's stack runs out: the process died of SIGSEGV with no
    message. Sealing a small model under every limit from 40 MiB short of enough
    to 1 MiB short, twice, crashed so at 19 and at 1 MiB short each time; with
    one arena every one of those runs said limit.exceeded. Without a limit the
    arenas only spare threads waiting on each other's malloc, so nothing is
    changed there; nor where the user chose glibc's arena count
    (``MALLOC_ARENA_MAX``, or ``arena_max`` in ``GLIBC_TUNABLES``)."""
    if "MALLOC_ARENA_MAX" in os.environ or "arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's C library
    except (OSError, AttributeError):  # a C library without it (not glibc)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_ARENA_MAX, 1))


def main() -> NoReturn:
    # secpack makes no BLAS call worth a thread (numpy's dot of 1-D vectors, for
    # variant errors, runs on one), but OpenBLAS starts one thread per CPU when
    # numpy is imported, and they spin for a while before sleeping: on 2 CPUs
    # that took 100-200 ms of CPU from every seal and open, right when the
    # workers start (measured with `perf stat`). A value the user set is kept.
    # Only the command line does this: a library must not change its host's BLAS.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # Before any thread starts; and only the command line: a library must not
    # change how its host allocates.
    one_malloc_arena()
    # Only the command line: a library must not take over its host's signals.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        from secpack.cli import main as cli_main
    except KeyboardInterrupt:
        interrupted("--json" in sys.argv[1:])
    cli_main()
