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
    shell's code for SIGINT) at once."""
    if as_json:
        doc = {"ok": False, "error": {"code": "interrupted", "message": INTERRUPTED}}
        sys.stdout.write(json.dumps(doc) + "\n")
    sys.stderr.write(f"error[interrupted]: {INTERRUPTED}\n")
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe: the exit status still says it.
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(130)


def main() -> NoReturn:
    try:
        from secpack.cli import main as cli_main
    except KeyboardInterrupt:
        interrupted("--json" in sys.argv[1:])
    cli_main()
