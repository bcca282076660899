"""A load that starts on a thread while the same thread is in the middle of
another one: a signal handler that reads the package (the handler runs between
two bytecodes of the interrupted read), or any callback that runs inside a
decode. The inner read gets scratch buffers of its own, so it cannot change the
bytes the outer one is decoding, and no lock on the way is one the outer read
already holds in a way that makes the inner one wait for ever."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import Tensor, write_safetensors

import secpack
from secpack.api.keyfiles import load_recipient, load_signing_key
from secpack.api.seal import seal
from secpack.codec import plain

ROOT = Path(__file__).resolve().parents[2]
KEYS = ROOT / "keys-example"


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "encrypted"])
def sealed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("reentry") / "m"
    root.mkdir()
    rng = np.random.default_rng(9)
    arrays = {f"w{i}": rng.standard_normal((256, 128 + 8 * i)).astype(np.float32) for i in range(6)}
    write_safetensors(
        root / "model.safetensors",
        {n: Tensor("F32", a.shape, a.tobytes()) for n, a in arrays.items()},
    )
    (root / "notes.txt").write_bytes(bytes(range(256)) * 4096)  # 1 MiB, one file
    pkg = root.parent / "m.spk"
    seal(
        str(root),
        str(pkg),
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
        recipients=[(None, load_recipient(str(KEYS / "recipient-x25519.key.pub")))]
        if request.param
        else [],
        encrypt=request.param,
        segment_size=1 << 20,
    )
    return root, pkg


def _open(pkg: Path, threads: int = 1) -> secpack.Package:
    return secpack.open_package(
        pkg,
        identity=str(KEYS / "recipient-x25519.key"),
        trust=[str(KEYS / "signing-ed25519.key.pub")],
        threads=threads,
    )


def _run(body: Any, timeout: float = 60.0) -> Any:
    """``body()`` on a thread of its own, so that a deadlock fails the test
    instead of hanging it."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = body()
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail("the nested read waits for ever")
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.parametrize("outer", ["read_file", "tensor", "state_dict"])
def test_a_read_nested_inside_a_decode_leaves_both_reads_exact(
    sealed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, outer: str
) -> None:
    """Each time a segment's payload is about to be decoded (its digest checked,
    it decrypted), another read of the same package runs first on the same
    thread: the first time inside the header check (which holds the file's check
    lock), then inside the outer read's own segments."""
    root, pkg = sealed
    notes = (root / "notes.txt").read_bytes()
    model = (root / "model.safetensors").read_bytes()
    real_decode = plain.decode_plain  # the first step of every segment's decode
    nested: list[bytes] = []
    depth = [0]

    with _open(pkg) as p:

        def decode_with_a_read_in_between(*args: Any, **kwargs: Any) -> bool:
            if depth[0] == 0 and len(nested) < 8:
                depth[0] += 1
                try:
                    # Alternately a tensor, whose read checks the model file's
                    # header (the first one inside the outer read's check of that
                    # header, under its lock), and a whole file.
                    if len(nested) % 2:
                        nested.append(p.read_file("files", "notes.txt"))
                    else:
                        nested.append(p.tensor("w3").tobytes())
                finally:
                    depth[0] -= 1
            return real_decode(*args, **kwargs)

        monkeypatch.setattr(plain, "decode_plain", decode_with_a_read_in_between)
        if outer == "read_file":
            got = _run(lambda: p.read_file("weights", "model.safetensors"))
            assert got == model
        elif outer == "tensor":
            got = _run(lambda: p.tensor("w5"))
            assert got.tobytes() == _tensor_bytes(model, "w5")
        else:
            sd = _run(lambda: p.state_dict("weights"))
            for name, array in sd.items():
                assert array.tobytes() == _tensor_bytes(model, name), name
    assert len(nested) >= 2
    w3 = _tensor_bytes(model, "w3")
    assert all(n == (w3 if i % 2 == 0 else notes) for i, n in enumerate(nested))


def _tensor_bytes(file: bytes, name: str) -> bytes:
    import json

    n = int.from_bytes(file[:8], "little")
    begin, end = json.loads(file[8 : 8 + n])[name]["data_offsets"]
    return file[8 + n + begin : 8 + n + end]


def test_a_signal_handler_that_reads_gets_exact_bytes_and_so_does_the_read_it_interrupts(
    sealed: tuple[Path, Path],
) -> None:
    """Real signals, on the main thread, as a server's handler would get them."""
    assert threading.current_thread() is threading.main_thread()  # where handlers run
    root, pkg = sealed
    notes = (root / "notes.txt").read_bytes()
    model = (root / "model.safetensors").read_bytes()
    seen: list[bool] = []
    with _open(pkg) as p:

        def handler(_signum: int, _frame: Any) -> None:
            seen.append(p.read_file("files", "notes.txt") == notes)

        old = signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.002, 0.002)
        try:
            for _ in range(20):
                assert p.read_file("weights", "model.safetensors") == model
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, old)
    assert seen and all(seen)


def test_a_use_nested_before_the_outer_takes_a_buffer_leaves_the_threads_own() -> None:
    """The nested use comes before the use it interrupted has taken any buffer
    (a thread's first decode): afterwards the thread still has one set of buffers
    of its own, kept from use to use, and the depth is back to none."""
    from secpack import buffers

    seen: dict[str, Any] = {}

    def fresh_thread() -> None:
        with buffers.own_scratch():
            with buffers.own_scratch():
                inner = buffers.scratch("t.x", 64)
            outer = buffers.scratch("t.x", 64)
            seen["distinct"] = inner.obj is not outer.obj
        with buffers.own_scratch():
            seen["kept"] = buffers.scratch("t.x", 64).obj is outer.obj
        seen["depth"] = buffers._local.__dict__["depth"]

    _run(fresh_thread)
    assert seen == {"distinct": True, "kept": True, "depth": 0}


def test_a_nested_use_that_raises_puts_the_threads_buffers_back() -> None:
    from secpack import buffers

    seen: dict[str, Any] = {}

    def fresh_thread() -> None:
        with buffers.own_scratch():
            mine = buffers.scratch("t.y", 64)
            with pytest.raises(KeyboardInterrupt), buffers.own_scratch():
                buffers.scratch("t.y", 64)
                raise KeyboardInterrupt
            seen["same"] = buffers.scratch("t.y", 64).obj is mine.obj
        seen["depth"] = buffers._local.__dict__["depth"]

    _run(fresh_thread)
    assert seen == {"same": True, "depth": 0}


def test_a_load_nested_while_the_pool_is_being_submitted_to_works_in_the_thread(
    sealed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """threads=2: the nested load comes while the interrupted one is inside
    ThreadPoolExecutor.submit, holding the pool's lock (not re-entrant), and then
    while the pool is being made. It must not touch the pool: it decodes in its
    own thread, makes no second pool, and both loads return exact bytes."""
    import concurrent.futures.thread as cft

    from secpack.api import loader

    root, pkg = sealed
    model = (root / "model.safetensors").read_bytes()
    nested: list[bytes] = []
    pools: list[object] = []
    real_submit, real_pool = cft.ThreadPoolExecutor.submit, loader.worker_pool

    with _open(pkg, threads=2) as p:

        def worker_pool(*args: Any, **kwargs: Any) -> Any:
            if not pools:  # the first pool: a load comes while it is being made
                nested.append(p.read_file("weights", "model.safetensors"))
            pools.append(real_pool(*args, **kwargs))
            return pools[-1]

        def submit(self: Any, *args: Any, **kwargs: Any) -> Any:
            if len(nested) == 1:
                with self._shutdown_lock:  # as submit holds it
                    nested.append(p.read_file("weights", "model.safetensors"))
            return real_submit(self, *args, **kwargs)

        monkeypatch.setattr(loader, "worker_pool", worker_pool)
        monkeypatch.setattr(cft.ThreadPoolExecutor, "submit", submit)
        sd = _run(lambda: p.state_dict("weights"))
        for name, array in sd.items():
            assert array.tobytes() == _tensor_bytes(model, name), name
    # Reads of several segments each, which a load that is not nested hands to
    # the pool.
    assert nested == [model, model]
    assert len(pools) == 1
    assert getattr(loader._thread, "depth", 0) == 0


def test_a_load_between_two_tensors_of_an_iteration_is_not_nested(
    sealed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer's own code between two tensors of iter_tensors is outside any
    load: a load it makes there uses the pool as any other does."""
    from secpack.api import loader

    _, pkg = sealed
    depths: list[int] = []
    real = loader.Package._executor

    def executor(self: Any) -> Any:
        depths.append(loader._thread.depth)
        return real(self)

    monkeypatch.setattr(loader.Package, "_executor", executor)
    with _open(pkg, threads=2) as p:
        for name, _ in p.iter_tensors("weights"):
            depths.append(-1)  # the consumer's turn
            p.read_file("files", "notes.txt")
            if name == "w2":
                break
    assert depths and all(d in (-1, 1) for d in depths), depths
    assert getattr(loader._thread, "depth", 0) == 0


def test_a_verify_nested_inside_a_verify_passes_both(
    sealed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """threads=1: between the outer verify's read of its largest segment and the
    check of its digest, a whole verify of the same package runs on the same thread.
    Both pass: the nested one reads into buffers of its own."""
    import hashlib
    import types

    from secpack.api.verify import verify
    from secpack.package import reader
    from secpack.sign.policy import policy_from_keys

    _, pkg = sealed
    policy = policy_from_keys([("k", (KEYS / "signing-ed25519.key.pub").read_bytes())])
    nested: list[str] = []
    report = verify(str(pkg), policy, threads=1)
    largest = max(s.stored for c in report.manifest.components for s in c.segments)

    def sha256(data: Any = b"") -> Any:
        # At the check of the largest segment: the buffer has then grown to it, so
        # the nested verify's reads all land in it rather than in a new one.
        if len(data) == largest and not nested:
            nested.append("started")
            verify(str(pkg), policy, threads=1)
            nested.append("passed")
        return hashlib.sha256(data)

    monkeypatch.setattr(reader, "hashlib", types.SimpleNamespace(sha256=sha256))
    monkeypatch.setenv("SECPACK_AUDIT", "off")
    _run(lambda: verify(str(pkg), policy, threads=1))
    assert nested == ["started", "passed"]


def test_a_use_whose_end_was_never_run_leaves_later_uses_apart() -> None:
    """An interrupt that lands as a use ends, before it is unmarked, leaves the
    thread marked as in a use: later uses then each get buffers of their own,
    slower but never shared with the one they interrupt."""
    from secpack import buffers

    seen: dict[str, Any] = {}

    def fresh_thread() -> None:
        buffers.own_scratch().__enter__()  # its __exit__ never runs
        with buffers.own_scratch():
            outer = buffers.scratch("t.z", 64)
            with buffers.own_scratch():
                seen["apart"] = buffers.scratch("t.z", 64).obj is not outer.obj
            seen["outer kept"] = buffers.scratch("t.z", 64).obj is outer.obj
        seen["in use"] = buffers.in_use()

    _run(fresh_thread)
    assert seen == {"apart": True, "outer kept": True, "in use": True}
