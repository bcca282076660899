"""Running and timing the benchmark's child processes.

Every measured command runs in a process of its own and is timed by wall clock;
its peak RSS is its own high-water mark (GNU time's ``%M`` where present).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "GNU_TIME",
    "Child",
    "ChildFailed",
    "cmd",
    "quote",
    "reported_seconds",
    "run_child",
    "settle",
    "shell",
]


@dataclass(frozen=True)
class Child:
    argv: tuple[str, ...]
    rc: int
    wall: float
    rss_kib: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, object]:
        """The last JSON object line the child printed on stdout ({} if none)."""
        for raw in reversed(self.stdout.splitlines()):
            line = raw.strip()
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    return obj
        return {}


class ChildFailed(RuntimeError):
    pass


def _gnu_time() -> str | None:
    """GNU time, if present and it understands ``-f %M -o FILE``."""
    exe = shutil.which("time") or ("/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None)
    if exe is None:
        return None
    with tempfile.NamedTemporaryFile("r") as f:
        probe = subprocess.run([exe, "-f", "%M", "-o", f.name, "true"], check=False)
        text = f.read().split()
    return exe if probe.returncode == 0 and text and text[-1].isdigit() else None


# Peak RSS: os.wait4's ru_maxrss for a child that Python spawns (vfork + exec) starts at
# the *parent's* peak RSS, because exec records the old address space's high-water mark.
# GNU time forks the command from a ~2 MiB process and reports only that child's peak,
# so it is used when present; without it the figures have the harness's RSS as a floor.
GNU_TIME = _gnu_time()


def run_child(argv: Sequence[str], cwd: Path | None = None) -> Child:
    """Run ``argv`` to completion; wall time and the child's own peak RSS."""
    env = dict(os.environ)
    env.pop("SECPACK_POLICY", None)
    env["NO_COLOR"] = "1"
    # Every tool alike: none of them uses BLAS, and OpenBLAS's idle threads spin for
    # a while after numpy's import, which on 2 CPUs took 100-200 ms of CPU from the
    # work that followed (the secpack CLI sets the same for itself).
    env["OPENBLAS_NUM_THREADS"] = "1"
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as rss_file,
    ):
        full = list(argv)
        if GNU_TIME:
            full = [GNU_TIME, "-f", "%M", "-o", rss_file.name, *full]
        started = time.perf_counter()
        proc = subprocess.Popen(
            full, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd, env=env
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        rss_kib = usage.ru_maxrss  # KiB on Linux
        if GNU_TIME:
            words = rss_file.read().split()
            rss_kib = int(words[-1]) if words and words[-1].isdigit() else -1
        out.seek(0)
        err.seek(0)
        child = Child(
            tuple(argv),
            proc.returncode,
            wall,
            rss_kib,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )
    if child.rc != 0:
        raise ChildFailed(
            f"{shlex.join(argv)} exited {child.rc}\n{child.stdout[-2000:]}{child.stderr[-2000:]}"
        )
    return child


def cmd(*parts: str | Path) -> list[str]:
    return [str(p) for p in parts]


def quote(*parts: str | Path) -> str:
    """Shell-quoted words, for the composed pipelines."""
    return " ".join(shlex.quote(str(p)) for p in parts)


def shell(script: str) -> list[str]:
    return ["bash", "-o", "pipefail", "-c", script]


def settle() -> None:
    """Flush dirty pages left by the previous command, so it is not billed to the next."""
    os.sync()


def reported_seconds(child: Child) -> float | None:
    """The ``seconds`` the child reported itself (its in-process time), if any."""
    value = child.json().get("seconds")
    return float(value) if isinstance(value, int | float) else None
