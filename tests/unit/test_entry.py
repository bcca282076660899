"""The console script's first frame (secpack.entry)."""

from __future__ import annotations

import pytest

import secpack.cli
from secpack import entry


@pytest.mark.parametrize(("given", "seen"), [(None, "1"), ("4", "4")])
def test_the_cli_keeps_openblas_to_one_thread_unless_told(
    monkeypatch: pytest.MonkeyPatch, given: str | None, seen: str
) -> None:
    if given is None:
        monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", given)
    got: list[str | None] = []

    def fake_main() -> None:
        import os

        got.append(os.environ.get("OPENBLAS_NUM_THREADS"))
        raise SystemExit(0)

    monkeypatch.setattr(secpack.cli, "main", fake_main)
    with pytest.raises(SystemExit):
        entry.main()
    assert got == [seen]


_ARENA_PROBE = """
import resource, sys, threading
if sys.argv[1] != "none":
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, resource.RLIM_INFINITY))
from secpack.entry import one_malloc_arena
done = one_malloc_arena() if sys.argv[1] == "limit" else False


def vm():
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) << 10 for x in f if x.startswith("VmSize:"))


before, grown = vm(), []


def work():
    block = bytearray(100_000)  # past pymalloc: the thread's first malloc
    grown.append(vm() - before)


thread = threading.Thread(target=work)
thread.start()
thread.join()
print(done, grown[0] >> 20)
"""


@pytest.mark.parametrize(
    ("case", "done", "most_mib"),
    [
        # One arena: a thread costs its stack (8 MiB), not a 64 MiB arena.
        ("limit", True, 32),
        # The control: the same limit, left as glibc has it; a thread's first
        # malloc reserves its arena. (Were it not so, this test could not fail.)
        ("limit-untouched", False, None),
        # No limit: nothing to spare, nothing changed.
        ("none", False, None),
        # The user's own arena count is kept, as OPENBLAS_NUM_THREADS is.
        ("limit-user-arenas", False, None),
    ],
)
def test_under_an_address_space_limit_threads_share_one_malloc_arena(
    case: str, done: bool, most_mib: int | None
) -> None:
    """Near an address-space limit a thread's own arena (64 MiB reserved) made
    its first small allocations fail, and one that failed inside cryptography's
    OpenSSL crashed the process (see entry.one_malloc_arena)."""
    import os
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("RLIMIT_AS and /proc/self/status are Linux's")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    if case == "limit-user-arenas":
        env["MALLOC_ARENA_MAX"] = "8"
    res = subprocess.run(
        [sys.executable, "-c", _ARENA_PROBE, case.replace("-user-arenas", "")],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    said, grown = res.stdout.split()
    assert said == str(done)
    if most_mib is not None:
        assert int(grown) <= most_mib, grown
    else:
        assert int(grown) >= 64, grown
