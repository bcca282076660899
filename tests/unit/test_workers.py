"""Worker-thread counts: every usable CPU, as far as the memory budget allows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from secpack import workers
from secpack.cgroups import cpu_quota, memory_limit
from secpack.errors import SecpackError

MiB = 1 << 20


def test_an_explicit_count_is_kept() -> None:
    import numpy as np

    assert workers.worker_threads(1, 16 * MiB) == 1
    assert workers.worker_threads(np.int64(3), MiB) == 3  # type: ignore[arg-type]
    assert workers.worker_threads(48, 16 * MiB) == 48
    assert workers.worker_threads(workers.MAX_THREADS, MiB) == workers.MAX_THREADS


@pytest.mark.parametrize("count", [-1, workers.MAX_THREADS + 1, 10**20, 2.5, True, "4", None])
def test_a_count_out_of_range_or_not_an_int_is_refused(count: object) -> None:
    with pytest.raises(SecpackError) as err:
        workers.worker_threads(count, MiB)  # type: ignore[arg-type]
    assert err.value.code == "input.invalid"


@pytest.mark.parametrize(
    ("cpus", "segment", "expected"),
    [
        (2, 4 * MiB, 2),  # this kind of machine: one per CPU
        (64, 4 * MiB, 10),  # 320 MiB / (8 x 4 MiB)
        (64, 16 * MiB, 2),  # the largest segments
        (64, 1 * MiB, 40),
        (64, 0, 64),  # an empty package: nothing to hold
        (1, 16 * MiB, 1),
    ],
)
def test_the_default_is_capped_by_the_memory_budget(
    monkeypatch: pytest.MonkeyPatch, cpus: int, segment: int, expected: int
) -> None:
    monkeypatch.setattr(workers, "usable_cpus", lambda: cpus)
    monkeypatch.setattr(workers, "memory_limit", lambda: None)  # whatever this host's is
    assert workers.worker_threads(0, segment) == expected


@pytest.mark.parametrize(
    ("level", "segment", "expected"),
    [
        (19, 4 * MiB, 2),  # max: two level-19 contexts, whatever the segments
        (19, 1 * MiB, 2),
        (19, 16 * MiB, 2),
        (3, 4 * MiB, 10),  # balanced's context never limits: the segments do
        (1, 1 * MiB, 40),
    ],
)
def test_the_seals_zstd_contexts_are_budgeted_too(
    monkeypatch: pytest.MonkeyPatch, level: int, segment: int, expected: int
) -> None:
    """Each seal worker keeps a zstd context of the profile's level (81 MiB at max,
    by zstd's estimate): 8 workers at max peaked at 714 MB before these counted."""
    from secpack.codec import zstd

    monkeypatch.setattr(workers, "usable_cpus", lambda: 64)
    monkeypatch.setattr(workers, "memory_limit", lambda: None)
    assert workers.worker_threads(0, segment, zstd.context_bytes(level)) == expected
    # Under a container's limit the contexts' budget shrinks with the segments':
    # at 512 MiB (a budget of 192 MiB, 115 for contexts) max runs one worker.
    monkeypatch.setattr(workers, "memory_limit", lambda: 512 * MiB)
    assert workers.worker_threads(0, segment, zstd.context_bytes(level)) == (
        1 if level == 19 else (192 * MiB) // (8 * segment)
    )
    monkeypatch.setattr(workers, "memory_limit", lambda: 256 * MiB)  # budget 64 MiB
    assert workers.worker_threads(0, segment, zstd.context_bytes(level)) == (
        1 if level == 19 else max(1, (64 * MiB) // (8 * segment))
    )


@pytest.mark.parametrize(
    ("limit_mib", "budget_mib", "expected"),
    [
        (None, 320, 10),  # no limit: the fixed budget
        (8192, 320, 10),  # a roomy limit changes nothing
        (512, 192, 6),  # (512 - 128) / 2
        (256, 64, 2),
        (192, 32, 1),
        (100, 0, 1),  # below the baseline: still one worker
    ],
)
def test_a_memory_limit_lowers_the_budget(
    monkeypatch: pytest.MonkeyPatch, limit_mib: int | None, budget_mib: int, expected: int
) -> None:
    limit = None if limit_mib is None else limit_mib * MiB
    monkeypatch.setattr(workers, "memory_limit", lambda: limit)
    monkeypatch.setattr(workers, "usable_cpus", lambda: 64)
    assert workers.memory_budget() == budget_mib * MiB
    assert workers.worker_threads(0, 4 * MiB) == expected


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity")
def test_usable_cpus_follows_the_affinity_mask() -> None:
    """Under taskset (or a cpuset) only the allowed CPUs count."""
    code = (
        "import os\n"
        "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
        "from secpack.workers import usable_cpus\n"
        "print(usable_cpus(), os.cpu_count())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    usable, total = map(int, out.stdout.split())
    assert usable == 1 and total >= 1


def _fake_proc(tmp_path: Path, cgroup: str, mountinfo: list[str]) -> str:
    """A procfs holding only what cpu_quota reads: self/cgroup and self/mountinfo."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    (proc / "self" / "mountinfo").write_text("".join(line + "\n" for line in mountinfo))
    return str(proc)


def _write(path: Path, text: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name, value in (line.split("=", 1) for line in text.split(";")):
        (path / name).write_text(value + "\n")


def test_cgroup_v2_quota_is_the_smallest_on_the_way_to_the_root(tmp_path: Path) -> None:
    """A parent's limit binds its children: 2.5 CPUs below a group of 4 is 3 workers."""
    mnt = tmp_path / "cg2"
    _write(mnt, "cpu.max=max 100000")
    _write(mnt / "kubepods", "cpu.max=400000 100000")
    _write(mnt / "kubepods" / "pod", "cpu.max=250000 100000")
    proc = _fake_proc(
        tmp_path, "0::/kubepods/pod\n", [f"30 23 0:26 / {mnt} rw,nosuid - cgroup2 cgroup2 rw"]
    )
    assert cpu_quota(proc) == 3
    _write(mnt / "kubepods", "cpu.max=100000 100000")  # the parent is the tighter one
    assert cpu_quota(proc) == 1
    _write(mnt / "kubepods", "cpu.max=max 100000")
    _write(mnt / "kubepods" / "pod", "cpu.max=max 100000")
    assert cpu_quota(proc) is None


def test_cgroup_v1_quota_with_joined_controllers(tmp_path: Path) -> None:
    mnt = tmp_path / "cpu,cpuacct"
    _write(mnt, "cpu.cfs_quota_us=-1;cpu.cfs_period_us=100000")
    _write(mnt / "docker" / "abc", "cpu.cfs_quota_us=50000;cpu.cfs_period_us=100000")
    lines = [
        f"35 25 0:31 / {mnt} rw,nosuid - cgroup cgroup rw,cpu,cpuacct",
        f"36 25 0:32 / {tmp_path / 'memory'} rw,nosuid - cgroup cgroup rw,memory",
    ]
    proc = _fake_proc(tmp_path, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n", lines)
    assert cpu_quota(proc) == 1  # half a CPU still runs one worker


def test_a_container_given_only_its_own_subtree_is_read_at_the_mount(tmp_path: Path) -> None:
    """Without a cgroup namespace the path is the host's, and the container's mount
    holds only its own group: the mount's root is /docker/abc."""
    mnt = tmp_path / "cpu"
    _write(mnt, "cpu.cfs_quota_us=200000;cpu.cfs_period_us=100000")
    line = f"35 25 0:31 /docker/abc {mnt} rw - cgroup cgroup rw,cpu"
    assert cpu_quota(_fake_proc(tmp_path, "4:cpu:/docker/abc\n", [line])) == 2
    below = tmp_path / "cpu" / "job"
    _write(below, "cpu.cfs_quota_us=100000;cpu.cfs_period_us=100000")
    assert cpu_quota(_fake_proc(tmp_path / "b", "4:cpu:/docker/abc/job\n", [line])) == 1


@pytest.mark.parametrize(
    ("group", "root"),
    [
        ("/elsewhere", "/docker/abc"),  # a mount of another group's subtree
        ("/rv-mine", "/rv-other"),  # a bind mount of a sibling group
        ("/docker/abcd", "/docker/abc"),  # a sibling whose name merely extends it
        ("/../../foo", "/"),  # above a nested cgroup namespace's root
    ],
)
def test_a_mount_that_does_not_show_the_group_gives_no_limit(
    tmp_path: Path, group: str, root: str
) -> None:
    mnt = tmp_path / "cpu"
    _write(mnt, "cpu.cfs_quota_us=100000;cpu.cfs_period_us=100000")
    (mnt / "foo").mkdir()  # where "/../../foo" would land if it were normalised
    (mnt / "foo" / "cpu.cfs_quota_us").write_text("100000")
    (mnt / "foo" / "cpu.cfs_period_us").write_text("100000")
    line = f"35 25 0:31 {root} {mnt} rw - cgroup cgroup rw,cpu"
    assert cpu_quota(_fake_proc(tmp_path, f"4:cpu:{group}\n", [line])) is None


def test_a_group_named_like_dots_is_still_below_the_root(tmp_path: Path) -> None:
    mnt = tmp_path / "cpu"
    _write(mnt / "..dots", "cpu.cfs_quota_us=100000;cpu.cfs_period_us=100000")
    line = f"35 25 0:31 / {mnt} rw - cgroup cgroup rw,cpu"
    assert cpu_quota(_fake_proc(tmp_path, "4:cpu:/..dots\n", [line])) == 1


def test_only_the_cpu_controller_counts(tmp_path: Path) -> None:
    """A v1 mount without the cpu controller is not read, though it holds files of
    the same names; the group path is the cpu line's, whatever line comes after."""
    cpu, memory = tmp_path / "cpu", tmp_path / "memory"
    _write(cpu / "mine", "cpu.cfs_quota_us=300000;cpu.cfs_period_us=100000")
    _write(memory / "mine", "cpu.cfs_quota_us=100000;cpu.cfs_period_us=100000")
    _write(memory / "other", "cpu.cfs_quota_us=100000;cpu.cfs_period_us=100000")
    lines = [
        f"35 25 0:31 / {cpu} rw - cgroup cgroup rw,cpu,cpuacct",
        f"36 25 0:32 / {memory} rw - cgroup cgroup rw,memory",
    ]
    groups = "4:cpu,cpuacct:/mine\n5:memory:/other\n"
    assert cpu_quota(_fake_proc(tmp_path, groups, lines)) == 3


def test_names_with_any_byte_but_newline(tmp_path: Path) -> None:
    """A group or a mount point may be named with bytes that are not UTF-8, or with
    characters str.splitlines() takes for line ends: none of that loses the quota."""
    mnt = tmp_path / "cg2"
    names = ["sep\u2028arator", "fs\x1csep", "caf\udce9"]  # the last: byte 0xe9, not UTF-8
    for name in names:
        _write(mnt / name, "cpu.max=100000 100000")
    odd_mount = os.fsencode(str(tmp_path / "caf\udce9")).replace(b" ", b"\\040")
    for k, name in enumerate(names):
        proc = tmp_path / f"proc{k}" / "self"
        proc.mkdir(parents=True)
        (proc / "cgroup").write_bytes(b"0::/" + os.fsencode(name) + b"\n")
        (proc / "mountinfo").write_bytes(
            b"22 1 0:20 / "
            + odd_mount
            + b" rw - tmpfs tmpfs rw\n"
            + b"30 23 0:26 / "
            + os.fsencode(str(mnt))
            + b" rw - cgroup2 cgroup2 rw\n"
        )
        assert cpu_quota(str(proc.parent)) == 1, name


def test_a_mount_point_with_a_space_is_unescaped(tmp_path: Path) -> None:
    mnt = tmp_path / "cgroup root"
    _write(mnt / "g", "cpu.max=300000 100000")
    escaped = str(mnt).replace(" ", "\\040")
    proc = _fake_proc(tmp_path, "0::/g\n", [f"30 23 0:26 / {escaped} rw - cgroup2 cgroup2 rw"])
    assert cpu_quota(proc) == 3


@pytest.mark.parametrize(
    "cpu_max", ["", "garbage", "max", "0 100000", "-5 100000", "100000 0", "1 2 3", "\xff"]
)
def test_an_unreadable_or_odd_quota_is_no_quota(tmp_path: Path, cpu_max: str) -> None:
    mnt = tmp_path / "cg2"
    mnt.mkdir()
    (mnt / "cpu.max").write_bytes(cpu_max.encode("latin-1"))
    proc = _fake_proc(tmp_path, "0::/\n", [f"30 23 0:26 / {mnt} rw - cgroup2 cgroup2 rw"])
    assert cpu_quota(proc) is None


def test_no_procfs_is_no_quota(tmp_path: Path) -> None:
    assert cpu_quota(str(tmp_path / "missing")) is None
    proc = _fake_proc(tmp_path, "not a cgroup line\n", ["short", "1 2 3 4 5 - cgroup2"])
    assert cpu_quota(proc) is None


def test_memory_limits_v1_and_v2(tmp_path: Path) -> None:
    """The smallest limit on the way up counts; v1's "no limit" is its largest
    page-aligned number, v2's is "max"."""
    v2 = tmp_path / "cg2"
    _write(v2, "memory.max=max")
    _write(v2 / "pod", "memory.max=1073741824")
    _write(v2 / "pod" / "app", "memory.max=max")
    line = f"30 23 0:26 / {v2} rw - cgroup2 cgroup2 rw"
    assert memory_limit(_fake_proc(tmp_path / "a", "0::/pod/app\n", [line])) == 1 << 30
    assert cpu_quota(_fake_proc(tmp_path / "b", "0::/pod/app\n", [line])) is None
    v1 = tmp_path / "memory"
    _write(v1, "memory.limit_in_bytes=9223372036854771712")
    _write(v1 / "job", "memory.limit_in_bytes=536870912")
    lines = [
        f"35 25 0:31 / {tmp_path / 'cpu'} rw - cgroup cgroup rw,cpu",
        f"36 25 0:32 / {v1} rw - cgroup cgroup rw,memory",
    ]
    groups = "4:cpu:/\n5:memory:/job\n"
    assert memory_limit(_fake_proc(tmp_path / "c", groups, lines)) == 512 * MiB
    assert memory_limit(_fake_proc(tmp_path / "d", "4:cpu:/\n5:memory:/\n", lines)) is None
    _write(v1 / "job", "memory.limit_in_bytes=garbage")
    assert memory_limit(_fake_proc(tmp_path / "e", groups, lines)) is None


def test_usable_cpus_is_capped_by_the_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "cpu_quota", lambda: 1)
    assert workers.usable_cpus() == 1
    monkeypatch.setattr(workers, "cpu_quota", lambda: 10_000)
    assert workers.usable_cpus() == len(os.sched_getaffinity(0))


def _in_new_group(parent: Path, limits: dict[str, str], probe: str) -> list[int]:
    """Make a real cgroup below ``parent`` with ``limits`` (file -> value), run a
    child that joins it before it imports secpack and prints the integers of
    ``probe`` (Python, over secpack.workers), and remove the group again."""
    group = parent / f"secpack-test-{os.getpid()}"
    group.mkdir()
    try:
        for name, value in limits.items():
            (group / name).write_text(value)
        code = (
            "import os\n"
            f"open({str(group / 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
            "from secpack import workers\n"
            f"print(*({probe}))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        return [int(word) for word in out.stdout.split()]
    finally:
        group.rmdir()


# Where cgroup v1 mounts its cpu controller on Debian and in most containers.
_V1_CPU = Path("/sys/fs/cgroup/cpu")


@pytest.mark.skipif(
    not (os.access(_V1_CPU, os.W_OK) and (_V1_CPU / "cgroup.procs").exists()),
    reason="needs a writable cgroup v1 cpu hierarchy (root in a container that has one)",
)
def test_a_real_cgroup_quota_lowers_the_worker_count() -> None:
    """A child in a real cgroup limited to one CPU runs one worker by default, on a
    machine whose affinity mask gives it more."""
    one_cpu = {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "100000"}
    probe = (
        "len(os.sched_getaffinity(0)), workers.usable_cpus(), workers.worker_threads(0, 1 << 20)"
    )
    affinity, usable, threads = _in_new_group(_V1_CPU, one_cpu, probe)
    if affinity == 1:
        pytest.skip("one CPU in the affinity mask: the quota cannot lower it")
    assert (usable, threads) == (1, 1)


def _own_v1_memory_group() -> Path | None:
    """This process's own cgroup v1 memory directory, where it has one."""
    mount = Path("/sys/fs/cgroup/memory")
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            own = mount / path.lstrip("/")
            return own if (own / "cgroup.procs").exists() else None
    return None


_V1_MEMORY = _own_v1_memory_group() if Path("/proc/self/cgroup").exists() else None


@pytest.mark.skipif(
    _V1_MEMORY is None or not os.access(_V1_MEMORY, os.W_OK),
    reason="needs a writable cgroup v1 memory hierarchy (root in a container that has one)",
)
def test_a_real_memory_limit_lowers_the_worker_count() -> None:
    """A child in a real cgroup limited to 192 MiB runs one worker at 4 MiB
    segments (a budget of 32 MiB), where the CPUs alone would give it more. The
    group is made below this process's own."""
    assert _V1_MEMORY is not None
    limit = {"memory.limit_in_bytes": str(192 * MiB)}
    probe = "workers.usable_cpus(), workers.memory_budget(), workers.worker_threads(0, 4 << 20)"
    cpus, budget, threads = _in_new_group(_V1_MEMORY, limit, probe)
    if cpus == 1:
        pytest.skip("one usable CPU: the memory limit cannot lower the count")
    assert (budget, threads) == (32 * MiB, 1)


def test_odd_control_files_give_no_limit_and_never_block(tmp_path: Path) -> None:
    """A NUL in a group's name, a FIFO or a directory where a control file should
    be: no limit, at once (a FIFO read would have waited for a writer for ever)."""
    mnt = tmp_path / "cg2"
    (mnt / "grp").mkdir(parents=True)
    os.mkfifo(mnt / "grp" / "memory.max")
    (mnt / "grp" / "cpu.max").mkdir()
    line = f"30 23 0:26 / {mnt} rw - cgroup2 cgroup2 rw"
    proc = _fake_proc(tmp_path / "a", "0::/grp\n", [line])
    assert (cpu_quota(proc), memory_limit(proc)) == (None, None)
    nul = _fake_proc(tmp_path / "b", "0::/grp\0x\n", [line])
    assert (cpu_quota(nul), memory_limit(nul)) == (None, None)
    fifo_proc = tmp_path / "c" / "proc"
    (fifo_proc / "self").mkdir(parents=True)
    os.mkfifo(fifo_proc / "self" / "cgroup")
    (fifo_proc / "self" / "mountinfo").write_text(line + "\n")
    assert cpu_quota(str(fifo_proc)) is None
