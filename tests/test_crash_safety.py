"""Crash safety of the output paths (docs/FORMAT.md, end of §9: output is written
under a temporary name and renamed into place only when complete).

- ``seal``, ``open`` and ``sign`` are SIGKILLed at seeded random moments spread
  over the whole length of the operation. After every kill the destination holds
  nothing (for in-place ``sign``: the original bytes) or the complete, verifiable
  result; whatever else is there is a temporary named after the destination and
  the killed pid, and the next run of the same verb to the same destination
  removes it and succeeds.
- A full file system (a small tmpfs, root only) makes ``seal``, ``open`` and
  ``sign`` fail with ``output.io`` and leave nothing behind.

The kill trials print how many trials ended in each outcome (``pytest -rP``).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from crash_helpers import Zygote, temporaries
from helpers import KeyPair, KeyRing, build_model, fails, run_cli, tree_entries

# 196608 rows: 16.5 MiB of tensors and a 2.3 MiB file, so that every verb runs for
# a few tenths of a second and a kill can land anywhere in it.
BIG_SCALE = 3 << 16
TRIALS = 30
SEEDS = {"seal": 1101, "open": 2202, "sign": 3303}

# Beside versions.json: the rollback state's lock, and the audit log with its head.
LOCK = ("versions.lock", "audit.jsonl", "audit.jsonl.head")
NOTHING = "nothing"
COMPLETE = "complete"


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crash")


@pytest.fixture(scope="module")
def big_model(work: Path) -> Path:
    return build_model(work / "big", scale=BIG_SCALE)


@pytest.fixture(scope="module")
def big_files(big_model: Path) -> dict[str, bytes]:
    """Every file of ``big_model`` by relative path, to compare opened trees against."""
    files, _ = tree_entries(big_model)
    return {rel: (big_model / rel).read_bytes() for rel in files}


def assert_tree_is(root: Path, want: dict[str, bytes], want_dirs: set[str]) -> None:
    """``root`` holds exactly the files ``want``, byte for byte, in the directories
    ``want_dirs`` (a one-read version of helpers.assert_same_tree)."""
    files, dirs = tree_entries(root)
    assert files == set(want) and dirs == want_dirs, (files, dirs)
    for rel, data in want.items():
        assert (root / rel).read_bytes() == data, rel


@pytest.fixture(scope="module")
def zygote(work: Path) -> Iterator[Zygote]:
    z = Zygote(work / "zygote")
    try:
        yield z
    finally:
        z.close()


@pytest.fixture(scope="module")
def qa_key(keys: KeyRing) -> KeyPair:
    """A second signer. Its own name: KeyRing caches keys by name whatever the
    algorithm, and test_keys_cli.py expects "qa" to be an ECDSA key."""
    return keys.signing("crash-cosigner")


@pytest.fixture(scope="module")
def big_package(
    work: Path, zygote: Zygote, big_model: Path, release_key: KeyPair, server_key: KeyPair
) -> Path:
    """``big_model`` sealed by release_key for server_key; read-only for tests."""
    out = work / "big.spk"
    end = zygote.run(
        "seal",
        source=big_model,
        output=out,
        sign_key=release_key.private,
        recipient=server_key.public,
    )
    assert end.code == 0, end.log
    return out


def policy(*trusted: KeyPair, threshold: int = 1) -> Any:
    from secpack.sign.policy import policy_from_keys

    return policy_from_keys(
        [(str(k.public), k.public.read_bytes()) for k in trusted], threshold=threshold
    )


# --- the trial loop ------------------------------------------------------------------------


def kill_trials(
    zygote: Zygote,
    verb: str,
    dest: Path,
    args_for: Callable[[int], dict[str, Any]],
    examine: Callable[[int, int], str],
    reset: Callable[[int], None],
    recover_args: Callable[[int, str], dict[str, Any]] | None = None,
) -> Counter[str]:
    """Run ``verb`` TRIALS times with ``args_for(i)``, SIGKILLing it after a delay drawn
    (seeded) across its uninterrupted duration and a little beyond.

    After each trial ``examine(i, pid)`` says whether the destination holds NOTHING
    or the COMPLETE result (and fails on anything else), every other entry next to
    ``dest`` must be a temporary named after it and the killed pid, and when there
    are such temporaries the next run of ``verb`` to ``dest`` must succeed and remove
    them. ``reset(i)`` then restores the starting point.
    """
    durations = []
    for warmup in (-1, -2):
        end = zygote.run(verb, **args_for(warmup))
        assert end.code == 0, end.log
        assert examine(warmup, 0) == COMPLETE
        assert temporaries(dest.parent, dest.name) == {}
        durations.append(end.seconds)
        reset(warmup)
    span = 1.15 * max(durations)  # ~1/8 of the kills come after the end: nothing to break
    rng = random.Random(SEEDS[verb])
    # Stratified: one delay in each of TRIALS equal slices of the span, in shuffled order.
    delays = [span * (i + rng.random()) / TRIALS for i in range(TRIALS)]
    delays[0] = 0.0  # at least one kill right at the start
    rng.shuffle(delays)

    counts: Counter[str] = Counter()
    for i, delay in enumerate(delays):
        pid = zygote.start(verb, **args_for(i))
        time.sleep(delay)
        end = zygote.finish(kill=True)
        assert end.code == 0 or end.killed, end.log
        stale = temporaries(dest.parent, dest.name)
        assert all(owner == pid for owner in stale.values()), (pid, stale)
        outcome = examine(i, pid)
        assert outcome in (NOTHING, COMPLETE)
        counts["killed" if end.killed else "finished before the kill"] += 1
        counts[outcome + (" + stale temp" if stale else "")] += 1
        if not end.killed:
            assert outcome == COMPLETE and not stale, (outcome, stale)
        if stale:
            counts["stale temp present"] += 1
            again = zygote.run(verb, **(recover_args or (lambda i, _: args_for(i)))(i, outcome))
            assert again.code == 0, again.log
            assert temporaries(dest.parent, dest.name) == {}
            assert examine(i, 0) == COMPLETE
        reset(i)
    # The first kill comes at once; anything that takes a few tenths of a second is
    # interrupted by it, so the loop cannot have tested only finished runs.
    assert counts["killed"] > 0, counts
    print(f"\n{verb}: {TRIALS} kill trials: {dict(sorted(counts.items()))}")
    return counts


# --- seal, open, sign under SIGKILL --------------------------------------------------------


@pytest.mark.slow
def test_seal_killed_at_random_points(
    work: Path, zygote: Zygote, big_model: Path, release_key: KeyPair, server_key: KeyPair
) -> None:
    dest = work / "seal-out" / "model.spk"
    dest.parent.mkdir()
    trusted = policy(release_key)

    def args_for(i: int, force: bool = False) -> dict[str, Any]:
        return {
            "source": big_model,
            "output": dest,
            "sign_key": release_key.private,
            "recipient": server_key.public,
            "force": force,
        }

    def examine(i: int, pid: int) -> str:
        if not os.path.lexists(dest):
            return NOTHING
        from secpack.api.verify import verify

        verify(str(dest), trusted)  # framing, signature and every stored byte
        return COMPLETE

    def reset(i: int) -> None:
        dest.unlink(missing_ok=True)

    # A stale temporary next to a complete package (a kill between link and unlink)
    # is cleaned up by the next seal only with --force: without it the verb refuses
    # the existing output before it writes (or cleans) anything.
    kill_trials(
        zygote,
        "seal",
        dest,
        args_for,
        examine,
        reset,
        recover_args=lambda i, outcome: args_for(i, force=outcome == COMPLETE),
    )


@pytest.mark.slow
def test_open_killed_at_random_points(
    work: Path,
    zygote: Zygote,
    big_model: Path,
    big_files: dict[str, bytes],
    big_package: Path,
    release_key: KeyPair,
    server_key: KeyPair,
) -> None:
    want_dirs = tree_entries(big_model)[1]
    dest = work / "open-out" / "model"
    dest.parent.mkdir()
    states = work / "open-state"  # a fresh rollback state per trial: every open records

    def args_for(i: int) -> dict[str, Any]:
        return {
            "package": big_package,
            "output": dest,
            "identity": server_key.private,
            "trust": release_key.public,
            "state_dir": states / str(i),
        }

    state_temps = 0

    def examine(i: int, pid: int) -> str:
        nonlocal state_temps
        # The state file is rewritten (temporary + rename) after the output is in
        # place; a kill there must leave a parseable file or none, plus at most a
        # recognisable temporary of the killed process.
        state_dir = states / str(i)
        if state_dir.is_dir():
            found = temporaries(state_dir, "versions.json", also=LOCK)
            assert all(owner == pid for owner in found.values()), (pid, found)
            state_temps += len(found)
            state_file = state_dir / "versions.json"
            if state_file.exists():
                import json

                doc = json.loads(state_file.read_text())
                assert doc["format"] == 1 and isinstance(doc["packages"], dict), doc
        if not os.path.lexists(dest):
            return NOTHING
        assert_tree_is(dest, big_files, want_dirs)
        return COMPLETE

    def reset(i: int) -> None:
        if os.path.lexists(dest):
            shutil.rmtree(dest)
        state_dir = states / str(i)
        if state_dir.is_dir() and temporaries(state_dir, "versions.json", also=LOCK):
            # A kill while the state file was being replaced: the next open that
            # records a version (this one, to the same destination) removes it.
            end = zygote.run("open", **args_for(i))
            assert end.code == 0, end.log
            assert temporaries(state_dir, "versions.json", also=LOCK) == {}
            shutil.rmtree(dest)

    kill_trials(zygote, "open", dest, args_for, examine, reset)
    print(f"open: rollback-state temporaries left by the kills: {state_temps}")


@pytest.mark.slow
def test_sign_in_place_killed_at_random_points(
    work: Path, zygote: Zygote, big_package: Path, release_key: KeyPair, qa_key: KeyPair
) -> None:
    from secpack.api.verify import verify
    from secpack.format.limits import DEFAULT_LIMITS
    from secpack.package.reader import read_header
    from secpack.transport.spkfile import FileSource

    dest = work / "sign-out" / "model.spk"
    dest.parent.mkdir()
    shutil.copyfile(big_package, dest)
    original = big_package.read_bytes()
    with FileSource(str(big_package)) as src:
        signed_part = read_header(src, DEFAULT_LIMITS).layout.sigs_off
    release_only, qa_only = policy(release_key), policy(qa_key)
    both = policy(release_key, qa_key, threshold=2)

    def args_for(i: int) -> dict[str, Any]:
        return {"package": dest, "key": qa_key.private}

    def examine(i: int, pid: int) -> str:
        data = dest.read_bytes()
        if data == original:
            return NOTHING
        # The new signature is there: the package verifies with either key alone and
        # with both together, and only the signature section changed.
        for pol in (release_only, qa_only, both):
            verify(str(dest), pol)
        assert data[:signed_part] == original[:signed_part]
        return COMPLETE

    def reset(i: int) -> None:
        if dest.read_bytes() != original:
            shutil.copyfile(big_package, dest)

    kill_trials(zygote, "sign", dest, args_for, examine, reset)


def test_stale_temporaries_of_a_live_process_are_kept(
    work: Path, zygote: Zygote, model_dir: Path, release_key: KeyPair, server_key: KeyPair
) -> None:
    """remove_stale only removes temporaries whose pid no longer runs: a temporary
    named after a live process (another writer of the same destination) survives a
    seal to that destination, a dead one does not."""
    out = work / "live-temps"
    out.mkdir()
    dest = out / "m.spk"
    sleeper = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        from secpack.transport.atomic import origin

        live_tmp = out / f".m.spk.secpack-tmp-{origin()}-{sleeper.pid}-0123abcd"
        dead_tmp = out / f".m.spk.secpack-tmp-{origin()}-{dead.pid}-89abcdef"
        # From another boot or PID namespace the pid means nothing: never removed.
        foreign_tmp = out / f".m.spk.secpack-tmp-00000000-{dead.pid}-89abcdef"
        live_tmp.write_bytes(b"in progress")
        dead_tmp.write_bytes(b"abandoned")
        foreign_tmp.write_bytes(b"someone else's")
        end = zygote.run(
            "seal",
            source=model_dir,
            output=dest,
            sign_key=release_key.private,
            recipient=server_key.public,
        )
        assert end.code == 0, end.log
        assert sorted(os.listdir(out)) == sorted([dest.name, live_tmp.name, foreign_tmp.name])
    finally:
        sleeper.kill()
        sleeper.wait()


# --- full disk -----------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount small tmpfs file systems (root only); unmounted afterwards whatever happens."""
    mounted: list[Path] = []

    def mount(size: str, nr_inodes: int | None = None) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        if shutil.which("mount") is None:
            pytest.skip("no mount(8) on this system")
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        options = f"size={size}" + (f",nr_inodes={nr_inodes}" if nr_inodes else "")
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip() or res.returncode}")
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in reversed(mounted):
            res = subprocess.run(["umount", str(point)], capture_output=True, check=False)
            if res.returncode != 0:
                subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


def test_seal_onto_a_full_disk_fails_cleanly(
    tmpfs: Callable[..., Path], big_model: Path, release_key: KeyPair, server_key: KeyPair
) -> None:
    from secpack.api.keyfiles import load_recipient, load_signing_key
    from secpack.api.seal import seal
    from secpack.errors import SecpackError

    disk = tmpfs("8m")
    with pytest.raises(SecpackError) as err:
        seal(
            str(big_model),
            str(disk / "model.spk"),
            sign_keys=[load_signing_key(str(release_key.private))],
            recipients=[(None, load_recipient(str(server_key.public)))],
        )
    assert err.value.code == "output.io"
    assert os.listdir(disk) == []

    res = fails(
        "output.io",
        "seal",
        big_model,
        "-o",
        disk / "model.spk",
        "--sign-key",
        release_key.private,
        "--recipient",
        server_key.public,
        subprocess_=True,
    )
    assert "No space left on device" in res.stderr
    assert os.listdir(disk) == []


def test_open_onto_a_full_disk_fails_cleanly(
    tmpfs: Callable[..., Path],
    big_package: Path,
    release_key: KeyPair,
    server_key: KeyPair,
    _isolated_state: Path,
) -> None:
    from secpack.api.extract import extract
    from secpack.api.keyfiles import load_identity
    from secpack.errors import SecpackError

    disk = tmpfs("8m")
    with pytest.raises(SecpackError) as err:
        extract(
            str(big_package),
            str(disk / "model"),
            identities=[load_identity(str(server_key.private))],
            policy=policy(release_key),
        )
    assert err.value.code == "output.io"
    assert os.listdir(disk) == []

    res = fails(
        "output.io",
        "open",
        big_package,
        "-o",
        disk / "model",
        "--identity",
        server_key.private,
        "--trust",
        release_key.public,
        subprocess_=True,
    )
    assert "No space left on device" in res.stderr
    assert os.listdir(disk) == []
    # A failed open is not a use of the package: no version was recorded.
    assert not (_isolated_state / "versions.json").exists()


def test_sign_on_a_full_disk_keeps_the_package(
    tmpfs: Callable[..., Path], big_package: Path, qa_key: KeyPair
) -> None:
    """Room for the package but not for a second copy: signing in place or into a
    new file fails with output.io and the package keeps its bytes."""
    size = big_package.stat().st_size
    disk = tmpfs(f"{(size + size // 2) // (1 << 20) + 1}m")
    pkg = disk / "model.spk"
    shutil.copyfile(big_package, pkg)

    fails("output.io", "sign", pkg, "--key", qa_key.private, subprocess_=True)
    fails("output.io", "sign", pkg, "--key", qa_key.private, "-o", disk / "copy.spk")
    assert os.listdir(disk) == [pkg.name]
    assert pkg.read_bytes() == big_package.read_bytes()


def test_open_out_of_inodes_is_an_io_error(
    tmpfs: Callable[..., Path], sealed: Path, release_key: KeyPair, server_key: KeyPair
) -> None:
    disk = tmpfs("64m", nr_inodes=5)  # the model has 6 files in 2 directories
    res = run_cli(
        "open",
        sealed,
        "-o",
        disk / "model",
        "--identity",
        server_key.private,
        "--trust",
        release_key.public,
    )
    assert res.returncode != 0 and "Traceback" not in res.stderr, str(res)
    assert "No space left on device" in res.stderr, str(res)
    assert os.listdir(disk) == []  # nothing left behind
    assert res.error_code == "output.io", str(res)  # today: output.unsafe


def test_open_into_an_empty_mount_point_is_refused_before_writing(
    tmpfs: Callable[..., Path],
    big_package: Path,
    release_key: KeyPair,
    server_key: KeyPair,
    tmp_path: Path,
) -> None:
    """An empty tmpfs mounted to keep plaintext off the disk cannot be replaced by a
    rename: open refuses it at once, instead of decrypting everything next to it on
    the parent's file system and failing at the end."""
    point = tmpfs("8m")
    before = sorted(os.listdir(point.parent))
    _refused_as_mount_point(big_package, point, release_key, server_key)
    assert sorted(os.listdir(point.parent)) == before and os.listdir(point) == []


def _refused_as_mount_point(
    package: Path, point: Path, release_key: KeyPair, server_key: KeyPair
) -> None:
    from secpack.api.extract import extract
    from secpack.api.keyfiles import load_identity
    from secpack.errors import SecpackError

    with pytest.raises(SecpackError) as err:
        extract(
            str(package),
            str(point),
            identities=[load_identity(str(server_key.private))],
            policy=policy(release_key),
        )
    assert err.value.code == "output.exists" and "mount point" in err.value.detail


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_open_stopped_by_a_signal_leaves_no_plaintext(
    work: Path, big_package: Path, release_key: KeyPair, server_key: KeyPair, sig: str
) -> None:
    """SIGTERM (timeout(1), docker stop, a cancelled CI job) takes the same way out
    as Ctrl-C: the temporary of decrypted files is removed, the output never
    appears, and the status is 128 + the signal."""
    import signal

    from helpers import SECPACK, clean_env

    parent = work / f"stop-{sig}"
    parent.mkdir()
    out = parent / "model"
    proc = subprocess.Popen(
        [SECPACK, "open", str(big_package), "-o", str(out), "--threads", "1",
         "--identity", str(server_key.private), "--trust", str(release_key.public)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    # Wait until decrypted files are being written into the temporary.
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.is_file() for p in parent.rglob("*") if p.parent != parent):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "open finished before it could be stopped"
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + getattr(signal, sig), err
    assert err.startswith("error[interrupted]: ") and "Traceback" not in err
    assert os.listdir(parent) == []


def test_open_into_a_bind_mount_is_refused_before_writing(
    big_package: Path, release_key: KeyPair, server_key: KeyPair, tmp_path: Path
) -> None:
    """A bind mount of a directory of the same file system is a mount point too
    (rename cannot replace it), though its device number does not say so."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a bind mount needs root and mount(8)")
    source, point = tmp_path / "source", tmp_path / "point"
    source.mkdir()
    point.mkdir()
    res = subprocess.run(
        ["mount", "--bind", str(source), str(point)], capture_output=True, check=False
    )
    if res.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {res.stderr.decode().strip()}")
    try:
        _refused_as_mount_point(big_package, point, release_key, server_key)
        assert sorted(os.listdir(tmp_path)) == ["point", "source"]
    finally:
        subprocess.run(["umount", str(point)], capture_output=True, check=False)


def _can_unshare_mounts() -> bool:
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(
    not (os.path.exists("/proc/sys/kernel/random/boot_id") and _can_unshare_mounts()),
    reason="needs root and mount namespaces (unshare -m) to change what boot_id reads",
)
@pytest.mark.parametrize("content", [b"\xff\xfe not text\n", b"", b"x" * 100_000])
def test_an_odd_boot_id_still_tags_temporaries(tmp_path: Path, content: bytes) -> None:
    """Temporaries are tagged with the boot id. One that is not ASCII (a sandbox's
    /proc, say) made every seal and open fail with input.invalid; any content now
    gives a tag, and the same one each time."""
    fake = tmp_path / "boot_id"
    fake.write_bytes(content)
    code = "from secpack.transport.atomic import _origin; print(_origin(), _origin())"
    script = f'mount --bind {fake} /proc/sys/kernel/random/boot_id && exec "$0" -c "{code}"'
    import sys

    res = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, sys.executable],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    first, second = res.stdout.split()
    assert first == second and len(first) == 8
