"""Process plumbing for the crash-safety tests.

A *zygote* process imports secpack once and then forks one child per operation
(``seal``, ``open`` or ``sign`` through the library), so that a test can start an
operation, SIGKILL it at a chosen moment and learn how it ended, for the price of
a fork instead of a Python start-up (about half a second per process here).

The zygote itself stays single-threaded: it only forks and reaps. All secpack
work, and every thread secpack starts, happens in the children. A child is
reaped only when the test asks for it, so its pid cannot be handed to an
unrelated process before the kill is sent.

Protocol, one JSON object per line. The test sends
``{"cmd": "run", "verb": ..., "args": {...}, "state_dir": ..., "log": ...}``; the
zygote forks and answers ``{"pid": N}``. The test then sends ``{"cmd": "kill"}``
or ``{"cmd": "wait"}``; the zygote SIGKILLs the child (for ``kill``), reaps it and
answers ``{"exit": code}``, where a negative code is the signal that ended it.
A child that fails writes its error code and traceback to ``log``.

Run as a script, this module is the zygote; imported, it offers :class:`Zygote`
and the naming rules of secpack's temporaries.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

TMP_MARKER = ".secpack-tmp-"


def temp_pattern(dest_name: str) -> re.Pattern[str]:
    """How secpack names a temporary for ``dest_name``:
    ``.<name>.secpack-tmp-<origin: 8 hex>-<pid>-<8 hex>``."""
    return re.compile(re.escape(f".{dest_name}{TMP_MARKER}") + r"[0-9a-f]{8}-(\d+)-[0-9a-f]{8}")


def temporaries(parent: Path, dest_name: str, also: tuple[str, ...] = ()) -> dict[str, int]:
    """Every entry of ``parent`` other than ``dest_name`` (and the names in ``also``),
    mapped to the pid in its name. Fails on any entry that is not a recognisable
    temporary of ``dest_name``."""
    pattern = temp_pattern(dest_name)
    found: dict[str, int] = {}
    for entry in sorted(os.listdir(parent)):
        if entry == dest_name or entry in also:
            continue
        if any(temp_pattern(name).fullmatch(entry) for name in also):
            continue  # a temporary of a neighbour (the audit log's head), cleaned the same way
        m = pattern.fullmatch(entry)
        assert m, f"unrecognisable leftover {entry!r} next to {dest_name!r} in {parent}"
        found[entry] = int(m.group(1))
    return found


# --- the zygote (child side) ---------------------------------------------------------------


def _operate(verb: str, args: dict[str, Any]) -> None:
    from secpack.api.keyfiles import (
        load_identity,
        load_recipient,
        load_signing_key,
        resolve_policy,
    )

    if verb == "seal":
        from secpack.api.seal import seal

        seal(
            args["source"],
            args["output"],
            sign_keys=[load_signing_key(args["sign_key"])],
            recipients=[(None, load_recipient(args["recipient"]))],
            overwrite=bool(args.get("force", False)),
        )
    elif verb == "open":
        from secpack.api.extract import extract

        extract(
            args["package"],
            args["output"],
            identities=[load_identity(args["identity"])],
            policy=resolve_policy([args["trust"]], None),
        )
    elif verb == "sign":
        from secpack.api.signing import add_signature

        add_signature(args["package"], load_signing_key(args["key"]), args.get("output"))
    else:
        raise ValueError(f"unknown verb {verb!r}")


def _child(request: dict[str, Any]) -> int:
    """Runs in the forked child; returns its exit status."""
    from secpack.errors import SecpackError

    os.environ["SECPACK_STATE_DIR"] = request["state_dir"]
    try:
        _operate(request["verb"], request["args"])
    except SecpackError as err:
        Path(request["log"]).write_text(f"{err.code}\n{traceback.format_exc()}")
        return 1
    except BaseException:
        Path(request["log"]).write_text(f"exception\n{traceback.format_exc()}")
        return 2
    return 0


def _preload() -> None:
    """Import everything the verbs use, lazily imported modules included, so that a
    child spends its time on the work and not on imports."""
    import unicodedata  # noqa: F401  (secpack.package.plan imports it lazily)

    import cbor2  # noqa: F401  (secpack.format.cbor imports it lazily)

    import secpack.api.extract
    import secpack.api.keyfiles
    import secpack.api.seal
    import secpack.api.signing
    import secpack.api.verify  # noqa: F401


def serve(inp: IO[str], out: IO[str]) -> None:
    _preload()

    def reply(msg: dict[str, Any]) -> None:
        out.write(json.dumps(msg) + "\n")
        out.flush()  # nothing may sit in the buffer when the next fork copies it

    reply({"ready": True})
    child = 0
    for line in inp:
        request = json.loads(line)
        if request["cmd"] == "run":
            child = os.fork()
            if child == 0:
                os._exit(_child(request))
            reply({"pid": child})
        else:
            if request["cmd"] == "kill":
                os.kill(child, signal.SIGKILL)  # still unreaped: the pid is ours
            _, status = os.waitpid(child, 0)
            reply({"exit": os.waitstatus_to_exitcode(status)})


# --- the test side -------------------------------------------------------------------------


@dataclass(frozen=True)
class Ended:
    code: int  # 0: finished; 1: SecpackError; 2: other exception; -9: SIGKILL
    log: str  # the child's error code and traceback when it failed
    seconds: float  # from the start request to the reaping

    @property
    def killed(self) -> bool:
        return self.code == -signal.SIGKILL


class Zygote:
    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self._stderr = open(workdir / "zygote.stderr", "wb")  # noqa: SIM115  (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._buf = b""
        self._runs = 0
        self._pid = 0
        self._log = workdir / "none.log"
        self._started = 0.0
        assert self._recv(120) == {"ready": True}, self._zygote_stderr()

    def _zygote_stderr(self) -> str:
        return (self.workdir / "zygote.stderr").read_text(errors="replace")

    def _send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
        self.proc.stdin.flush()

    def _recv(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                raise TimeoutError(f"no answer from the zygote in {timeout} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError(f"the zygote exited:\n{self._zygote_stderr()}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def start(self, verb: str, state_dir: Path | None = None, **args: Any) -> int:
        """Fork a child that runs ``verb``; return its pid."""
        self._runs += 1
        self._log = self.workdir / f"child-{self._runs}.log"
        self._started = time.perf_counter()
        self._send(
            {
                "cmd": "run",
                "verb": verb,
                "args": {k: os.fspath(v) if isinstance(v, Path) else v for k, v in args.items()},
                "state_dir": os.fspath(state_dir or self.state_dir),
                "log": os.fspath(self._log),
            }
        )
        self._pid = int(self._recv(30)["pid"])
        return self._pid

    def finish(self, kill: bool, timeout: float = 180) -> Ended:
        """SIGKILL the child (if ``kill``) and reap it."""
        self._send({"cmd": "kill" if kill else "wait"})
        try:
            code = int(self._recv(timeout)["exit"])
        except TimeoutError:
            os.kill(self._pid, signal.SIGKILL)  # unreaped, so still our child's pid
            self._recv(30)
            raise AssertionError(f"child {self._pid} hung for {timeout} s") from None
        seconds = time.perf_counter() - self._started
        log = self._log.read_text() if self._log.exists() else ""
        return Ended(code, log, seconds)

    def run(self, verb: str, state_dir: Path | None = None, **args: Any) -> Ended:
        """Run ``verb`` to the end in a fresh child."""
        self.start(verb, state_dir, **args)
        return self.finish(kill=False)

    def close(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)
