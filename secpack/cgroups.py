"""The limits this process's control groups set: a CPU quota (``docker --cpus``,
a Kubernetes CPU limit, systemd's ``CPUQuota=``) and a memory limit
(``docker --memory``, a Kubernetes memory limit).

Neither shows where a process usually looks. A container limited to 2 CPUs on
a 64-CPU node still sees 64 in its affinity mask, and one limited to 512 MiB
still sees the node's memory. Threads beyond the quota gain nothing, since the kernel throttles
the group as a whole, and each worker holds its own buffers: so the default
worker count follows both (secpack.workers). A quota is rounded up, as Go (1.25)
and the JVM do.

Both cgroup versions are read, and every level from the process's group up to
the mount's root, since a parent's limit binds its children: the smallest one
counts. Any file that is missing, unreadable or malformed counts as no limit;
this is a hint for a thread count, never a reason to fail.
"""

from __future__ import annotations

import math
import os
import posixpath
import stat
from collections.abc import Callable

__all__ = ["cpu_quota", "memory_limit"]

# What a line of /proc/self/mountinfo holds before its " - " separator, at least:
# mount id, parent id, major:minor, root, mount point.
_MOUNTINFO_FIELDS = 5


def cpu_quota(proc: str = "/proc") -> int | None:
    """The CPUs the process's control groups allow, rounded up (at least 1), or
    None where no quota is set or none can be read. ``proc`` is where procfs is
    mounted; the cgroup file systems are found through its mountinfo."""
    limits = _limits(proc, "cpu", _v1_cpu, _v2_cpu)
    return max(1, math.ceil(min(limits))) if limits else None


def memory_limit(proc: str = "/proc") -> int | None:
    """The bytes of memory the process's control groups allow, or None where no
    limit is set or none can be read."""
    limits = _limits(proc, "memory", _v1_memory, _v2_memory)
    return int(min(limits)) if limits else None


def _limits(
    proc: str,
    controller: str,
    v1_read: Callable[[str], float | None],
    v2_read: Callable[[str], float | None],
) -> list[float]:
    """Every limit of ``controller`` on the way from the process's groups up to
    their mounts' roots, in either cgroup version."""
    # Read as bytes and decoded as the file system's names are: a group or a mount
    # point may have any name but "\n" (escaped in mountinfo, not in cgroup), and
    # str.splitlines() would also split at "\x1c" or U+2028.
    cgroup = _read_regular(os.path.join(proc, "self", "cgroup"), _PROC_MAX)
    mountinfo = _read_regular(os.path.join(proc, "self", "mountinfo"), _PROC_MAX)
    if cgroup is None or mountinfo is None:
        return []
    groups = os.fsdecode(cgroup).split("\n")
    mounts = os.fsdecode(mountinfo).split("\n")
    # The group path per version: v2's one line is "0::/path"; a v1 line names its
    # controllers, "4:cpu,cpuacct:/path".
    v2_path: str | None = None
    v1_path: str | None = None
    for line in groups:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        elif controller in parts[1].split(","):
            v1_path = parts[2]
    limits: list[float] = []
    for line in mounts:
        fields, sep, tail = line.partition(" - ")
        head = fields.split(" ")
        rest = tail.split(" ")
        if not sep or len(head) < _MOUNTINFO_FIELDS or len(rest) < 3:
            continue
        root, point = _unescape(head[3]), _unescape(head[4])
        fstype, options = rest[0], rest[2].split(",")
        if fstype == "cgroup2" and v2_path is not None:
            limits += _walk(point, root, v2_path, v2_read)
        elif fstype == "cgroup" and v1_path is not None and controller in options:
            limits += _walk(point, root, v1_path, v1_read)
    return limits


# /proc/self/mountinfo of a host with many mounts (a Kubernetes node) runs to a few
# hundred KB; past this much it is not a file to scan for a thread count.
_PROC_MAX = 4 << 20
# A control file holds one or two numbers.
_CONTROL_MAX = 4096


def _read_regular(path: str, most: int) -> bytes | None:
    """A whole file of at most ``most`` bytes, or None. Opened without blocking
    and read only if it is a regular file, as every procfs and cgroup file is: a
    FIFO or a device put at its name would otherwise stop the process here."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):  # ValueError: a NUL in a group's name
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, total = [], 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            total += len(chunk)
            if total > most:
                return None
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _walk(point: str, root: str, path: str, read: Callable[[str], float | None]) -> list[float]:
    """The limits at every level from the group's directory up to the mount point,
    where the mount shows the group: its root is the group or one of the group's
    ancestors (a container's own subtree, mounted without a cgroup namespace, has
    the group itself as root). A mount of another part of the hierarchy (a bind
    mount of a sibling group; the part above a nested namespace's root, where the
    group reads "/../x") says nothing of this process's limits."""
    # The kernel writes group paths whole ("/a/b"), and a group above the reader's
    # namespace as "/../x": normpath would turn that into "/x", another group.
    if not path.startswith("/") or not root.startswith("/") or ".." in path.split("/"):
        return []
    rel = posixpath.relpath(posixpath.normpath(path), posixpath.normpath(root))
    if rel == ".." or rel.startswith("../"):
        return []
    levels = [os.path.normpath(point)]
    for name in rel.split("/") if rel != "." else []:
        levels.append(os.path.join(levels[-1], name))
    return [limit for limit in map(read, levels) if limit is not None]


def _read(path: str) -> str | None:
    """A control file's text, or None."""
    data = _read_regular(path, _CONTROL_MAX)
    try:
        return None if data is None else data.decode("ascii")
    except UnicodeDecodeError:
        return None


def _v2_cpu(directory: str) -> float | None:
    """``cpu.max``: "QUOTA PERIOD", or "max PERIOD" for none."""
    text = _read(os.path.join(directory, "cpu.max"))
    if text is None:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    return _ratio(parts[0], parts[1])


def _v1_cpu(directory: str) -> float | None:
    """``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``; a quota of -1 is none."""
    quota = _read(os.path.join(directory, "cpu.cfs_quota_us"))
    period = _read(os.path.join(directory, "cpu.cfs_period_us"))
    if quota is None or period is None:
        return None
    return _ratio(quota.strip(), period.strip())


# cgroup v1 writes "no limit" as the largest page-aligned signed 64-bit number
# (9223372036854771712); anything from 2^62 bytes up is taken as none.
_NO_LIMIT = 1 << 62


def _v2_memory(directory: str) -> float | None:
    """``memory.max``: bytes, or "max" for none."""
    return _bytes(_read(os.path.join(directory, "memory.max")))


def _v1_memory(directory: str) -> float | None:
    """``memory.limit_in_bytes``."""
    return _bytes(_read(os.path.join(directory, "memory.limit_in_bytes")))


def _bytes(text: str | None) -> float | None:
    try:
        value = int((text or "").strip())
    except ValueError:
        return None
    return value if 0 < value < _NO_LIMIT else None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _unescape(field: str) -> str:
    """mountinfo writes a space, tab, newline or backslash in a path as an octal
    escape (\\040)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        digits = field[i + 1 : i + 4]
        if field[i] == "\\" and len(digits) == 3 and all(c in "01234567" for c in digits):
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)
