"""Tampering: every single-byte change, every truncation and appended bytes make
``verify`` and ``open`` fail with a SecpackError, and ``open`` leaves nothing
behind. The exhaustive sweeps run through the library (a process start per
offset would take hours); a few representative cases go through the CLI.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from helpers import KeyPair, build_model, fails, leftovers

from secpack.api.extract import extract
from secpack.api.keyfiles import load_identity, load_recipient, load_signing_key
from secpack.api.seal import seal
from secpack.api.verify import verify
from secpack.errors import SecpackError
from secpack.format.container import Layout
from secpack.format.limits import DEFAULT_LIMITS
from secpack.package.reader import read_header
from secpack.sign.policy import Policy, policy_from_keys
from secpack.transport.spkfile import FileSource

# Codes a damaged package may legitimately produce. Anything else (or any exception
# that is not a SecpackError) is a bug: e.g. "internal", or "input.*" for a package.
TAMPER_CODES = {
    "container.magic",
    "container.version",
    "container.framing",
    "cbor.malformed",
    "cbor.forbidden",
    "cbor.noncanonical",
    "cbor.limit",
    "schema.invalid",
    "schema.unsupported",
    "sig.missing",
    "sig.malformed",
    "sig.untrusted",
    "integrity",
    "limit.exceeded",
}


@dataclass(frozen=True)
class Tamper:
    """A small sealed package and what it takes to verify and open it."""

    work: Path  # scratch directory (tmpfs when available: open() fsyncs every file)
    package: Path
    data: bytes
    layout: Layout
    model: Path
    release: KeyPair
    server: KeyPair

    def policy(self) -> Policy:
        return policy_from_keys([("release", self.release.public.read_bytes())])

    def identities(self) -> list[X25519PrivateKey]:
        return [load_identity(str(self.server.private))]


def _scratch_root() -> str | None:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


@pytest.fixture(scope="module")
def tamper(
    tmp_path_factory: pytest.TempPathFactory, release_key: KeyPair, server_key: KeyPair
) -> Iterator[Tamper]:
    work = Path(tempfile.mkdtemp(prefix="secpack-tamper-", dir=_scratch_root()))
    try:
        model = build_model(tmp_path_factory.mktemp("tamper-model") / "m", scale=4)
        pkg = work / "small.spk"
        seal(
            str(model),
            str(pkg),
            sign_keys=[load_signing_key(str(release_key.private))],
            recipients=[(None, load_recipient(str(server_key.public)))],
        )
        data = pkg.read_bytes()
        with FileSource(str(pkg)) as src:
            layout = read_header(src, DEFAULT_LIMITS).layout
        yield Tamper(work, pkg, data, layout, model, release_key, server_key)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _region(layout: Layout, offset: int) -> str:
    if offset < layout.manifest_off:
        return "preamble"
    if offset < layout.index_off:
        return "manifest"
    if offset < layout.blobs_off:
        return "index"
    if offset < layout.sigs_off:
        return "blobs"
    return "signatures"


# --- the sweep, run in worker processes ------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    tamper: Tamper
    kind: str  # "flip" or "truncate"
    offsets: tuple[int, ...]
    slot: int


@dataclass(frozen=True)
class _Outcome:
    offset: int
    verify: str  # the error code, or "ACCEPTED" / "<ExceptionType>" on a bug
    extract: str
    leftovers: tuple[str, ...]


def _code_of(call: Callable[[], object]) -> str:
    try:
        call()
    except SecpackError as err:
        return err.code
    except Exception as exc:
        return f"<{type(exc).__name__}: {exc}>"
    return "ACCEPTED"


def _mask(offset: int) -> int:
    """The bit changed at ``offset``: it rotates, so that every bit position of every
    field (CBOR major types included) is hit somewhere in the sweep."""
    return 1 << (offset % 8)


def _sweep(job: _Job) -> list[_Outcome]:
    t = job.tamper
    policy, ids = t.policy(), t.identities()
    slot = t.work / f"slot{job.slot}"
    slot.mkdir()
    path = slot / "t.spk"
    path.write_bytes(t.data)
    out_parent = slot / "parent"
    out_parent.mkdir()
    out = out_parent / "out"
    results = []
    fd = os.open(path, os.O_RDWR)
    try:
        for offset in job.offsets:
            if job.kind == "flip":
                os.pwrite(fd, bytes([t.data[offset] ^ _mask(offset)]), offset)
            else:
                os.ftruncate(fd, offset)  # offsets run downwards: each step only cuts
            v = _code_of(lambda: verify(str(path), policy, threads=1))
            x = _code_of(
                lambda: extract(str(path), str(out), identities=ids, policy=policy, threads=1)
            )
            left = tuple(sorted(os.listdir(out_parent)))
            if left:
                shutil.rmtree(out_parent)
                out_parent.mkdir()
            results.append(_Outcome(offset, v, x, left))
            if job.kind == "flip":
                os.pwrite(fd, t.data[offset : offset + 1], offset)
    finally:
        os.close(fd)
        shutil.rmtree(slot)
    return results


def _untraced() -> None:
    """Forked workers never report coverage (pytest-cov collects from this process only),
    yet an inherited tracer would make the sweep several times slower under --cov."""
    sys.settrace(None)
    threading.settrace(None)  # type: ignore[arg-type]


def _run_sweep(t: Tamper, kind: str, offsets: list[int]) -> list[_Outcome]:
    if kind == "truncate":
        # Cheap (framing fails first), so one process; offsets run downwards.
        return _sweep(_Job(t, kind, tuple(sorted(offsets, reverse=True)), 0))
    # Single-byte changes reach signature checks and decryption: spread over the cores.
    workers = max(1, min(os.cpu_count() or 1, 4))
    jobs = [_Job(t, kind, tuple(offsets[i::workers]), i) for i in range(workers)]
    jobs = [j for j in jobs if j.offsets]
    if len(jobs) == 1:
        return _sweep(jobs[0])
    # fork: the workers inherit the imported modules and the fixture's files as they are.
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(len(jobs), mp_context=ctx, initializer=_untraced) as pool:
        return [o for part in pool.map(_sweep, jobs) for o in part]


def _check(t: Tamper, outcomes: list[_Outcome], expected: int) -> Counter[str]:
    assert len(outcomes) == expected
    bad = [
        o
        for o in outcomes
        if o.verify not in TAMPER_CODES or o.extract not in TAMPER_CODES or o.leftovers
    ]
    assert not bad, [(o, _region(t.layout, o.offset)) for o in bad[:20]]
    return Counter(o.verify for o in outcomes) + Counter(o.extract for o in outcomes)


def test_package_is_small_and_sound(tamper: Tamper) -> None:
    assert 2_000 <= len(tamper.data) <= 100_000
    out = tamper.work / "sound"
    verify(str(tamper.package), tamper.policy())
    extract(str(tamper.package), str(out), identities=tamper.identities(), policy=tamper.policy())
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert "model.safetensors" in files and "sub/deep/x.bin" in files
    shutil.rmtree(out)


@pytest.mark.slow
def test_flip_every_byte(tamper: Tamper) -> None:
    offsets = list(range(len(tamper.data)))
    outcomes = _run_sweep(tamper, "flip", offsets)
    _check(tamper, outcomes, len(offsets))
    # Every stored byte is committed to by a segment digest: one opaque code.
    in_blobs = [o for o in outcomes if _region(tamper.layout, o.offset) == "blobs"]
    assert in_blobs
    assert {(o.verify, o.extract) for o in in_blobs} == {("integrity", "integrity")}


@pytest.mark.slow
def test_truncate_at_every_offset(tamper: Tamper) -> None:
    offsets = list(range(len(tamper.data)))
    outcomes = _run_sweep(tamper, "truncate", offsets)
    codes = _check(tamper, outcomes, len(offsets))
    assert set(codes) <= {"container.magic", "container.framing"}, codes


@pytest.mark.parametrize("extra", [b"\x00", b"\xa0" * 1000, b"SIGS"])
def test_appended_bytes(tamper: Tamper, extra: bytes) -> None:
    pkg = tamper.work / "appended.spk"
    pkg.write_bytes(tamper.data + extra)
    out = tamper.work / "parent" / "out"
    out.parent.mkdir()
    try:
        with pytest.raises(SecpackError) as err:
            verify(str(pkg), tamper.policy())
        assert err.value.code == "container.framing"
        with pytest.raises(SecpackError) as err:
            extract(str(pkg), str(out), identities=tamper.identities(), policy=tamper.policy())
        assert err.value.code == "container.framing"
        assert os.listdir(out.parent) == []
    finally:
        shutil.rmtree(out.parent)
        pkg.unlink()


# --- a few cases through the CLI --------------------------------------------------------------


def _damaged(t: Tamper, case: str) -> bytes:
    d, lay = t.data, t.layout

    def flip(offset: int) -> bytes:
        b = bytearray(d)
        b[offset] ^= 0x10
        return bytes(b)

    return {
        "magic": lambda: flip(0),
        "version": lambda: flip(9),
        "manifest": lambda: flip(lay.manifest_off + lay.manifest_len // 2),
        "index": lambda: flip(lay.index_off + lay.index_len - 1),
        "blob": lambda: flip(lay.blobs_off + lay.blobs_len // 2),
        "signature": lambda: flip(len(d) - 5),
        "truncated": lambda: d[: lay.sigs_off],
        "appended": lambda: d + b"\x00" * 1000,
    }[case]()


# One real process per kind of damage that the library test shows to be common;
# the rest run the Typer app in-process.
CLI_CASES = {
    "magic": False,
    "version": False,
    "manifest": False,
    "index": False,
    "blob": True,
    "signature": False,
    "truncated": True,
    "appended": False,
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_tampered_through_cli(tmp_path: Path, tamper: Tamper, case: str) -> None:
    pkg = tmp_path / "t.spk"
    pkg.write_bytes(_damaged(tamper, case))
    # The CLI must report exactly what the library raises.
    expected = _code_of(lambda: verify(str(pkg), tamper.policy()))
    assert expected in TAMPER_CODES
    trust = ("--trust", tamper.release.public)
    fails(expected, "verify", pkg, *trust)
    fails(expected, "verify", pkg, *trust, "--json")
    out = tmp_path / "parent" / "out"
    out.parent.mkdir()
    ident = ("--identity", tamper.server.private)
    fails(expected, "open", pkg, "-o", out, *ident, *trust, subprocess_=CLI_CASES[case])
    assert os.listdir(out.parent) == []
    assert leftovers(out.parent, "out") == []


def test_a_damaged_segment_is_located(tmp_path: Path, tamper: Tamper) -> None:
    """The code stays the one opaque ``integrity``; the message says which
    segment of which component holds the damaged byte, and where it lies in the
    package, so that a bad copy can be found and compared with a good one."""
    offset = tamper.layout.blobs_off + tamper.layout.blobs_len // 2
    pkg = tmp_path / "t.spk"
    pkg.write_bytes(_damaged(tamper, "blob"))
    with pytest.raises(SecpackError) as err:
        verify(str(pkg), tamper.policy())
    assert err.value.code == "integrity"
    hits = []
    with FileSource(str(tamper.package)) as src:
        header = read_header(src, DEFAULT_LIMITS)
        for c, comp in enumerate(header.manifest.components):
            for s, seg in enumerate(comp.segments):
                start = header.segment_offset(c, s)
                if start <= offset < start + seg.stored:
                    hits.append((comp.name, s, start, start + seg.stored - 1))
    assert len(hits) == 1
    name, seg, first, last = hits[0]
    assert (
        f"segment {seg} of component {name!r}, bytes {first}-{last} of the package"
        in err.value.detail
    ), err.value.detail
