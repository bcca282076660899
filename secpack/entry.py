"""The console script's first frame: it imports the command line (typer, then the
verb's modules), so that an interrupt during those imports, before any verb has
begun, ends as ``error[interrupted]`` with exit 130 and not as a traceback.

It imports nothing but the standard library before the command line."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import NoReturn

__all__ = ["interrupted", "main"]

# What an interrupt reports, before or after a verb began: nothing is ever left
# half-written (outputs are built under temporary names and renamed whole).
INTERRUPTED = "stopped; nothing was left half-written"


def interrupted(as_json: bool) -> NoReturn:
    """Report ``interrupted`` as every other error is reported, and exit 130 (the
    shell's code for SIGINT) at once. It writes what secpack.cli.render's ``fail``
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
    os._exit(130)


def main() -> NoReturn:
    # secpack makes no BLAS call worth a thread (numpy's dot of 1-D vectors, for
    # variant errors, runs on one), but OpenBLAS starts one thread per CPU when
    # numpy is imported, and they spin for a while before sleeping: on 2 CPUs
    # that took 100-200 ms of CPU from every seal and open, right when the
    # workers start (measured with `perf stat`). A value the user set is kept.
    # Only the command line does this: a library must not change its host's BLAS.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        from secpack.cli import main as cli_main
    except KeyboardInterrupt:
        interrupted("--json" in sys.argv[1:])
    cli_main()
