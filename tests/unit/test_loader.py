"""The runtime loader: exact arrays, selective reads, rollback and freeze protection,
refuse-before-decode, and thread safety."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import multiprocessing
import struct
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import secpack
from secpack.api.keyfiles import load_recipient, load_signing_key
from secpack.api.seal import seal
from secpack.errors import SecpackError
from secpack.sign.policy import Policy, policy_from_keys

ROOT = Path(__file__).resolve().parents[2]
KEYS = ROOT / "keys-example"


def _source_tensors(path: Path) -> dict[str, tuple[str, list[int], bytes]]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    return {
        name: (
            v["dtype"],
            v["shape"],
            data[base + v["data_offsets"][0] : base + v["data_offsets"][1]],
        )
        for name, v in header.items()
    }


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtypes: dict[str, str]) -> None:
    header: dict[str, Any] = {}
    blobs, offset = [], 0
    for name, arr in tensors.items():
        raw = arr.tobytes()
        header[name] = {
            "dtype": dtypes[name],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loader") / "m"
    root.mkdir()
    rng = np.random.default_rng(7)
    f32 = rng.standard_normal((3000, 700)).astype(np.float32)  # ~8 MiB: several segments
    tensors = {
        "big.f32": f32,
        "small.bf16": (f32[:10, :16].view(np.uint32) >> 16).astype(np.uint16),
        "half": rng.standard_normal((33, 7)).astype(np.float16),
        "ids": np.arange(-50, 50, dtype=np.int64),
        "flags": rng.random(17) > 0.5,
        "empty": np.zeros((0, 3), dtype=np.float32),
        "scalar": np.array(2.5, dtype=np.float64),
        "i8": np.arange(-5, 5, dtype=np.int8),
        "u16": np.arange(9, dtype=np.uint16),
        # One-byte types numpy lacks, as bit patterns that are no type's NaN.
        "e4m3": np.arange(1, 101, dtype=np.uint8).reshape(10, 10),
        "e4m3.fnuz": np.arange(1, 101, dtype=np.uint8).reshape(4, 25),
        "e5m2.fnuz": np.arange(2, 102, dtype=np.uint8),
        "e8m0": np.arange(100, 140, dtype=np.uint8).reshape(8, 5),
        "complex": (rng.standard_normal((6, 5)) + 1j * rng.standard_normal((6, 5))).astype(
            np.complex64
        ),
    }
    dtypes = {
        "big.f32": "F32",
        "small.bf16": "BF16",
        "half": "F16",
        "ids": "I64",
        "flags": "BOOL",
        "empty": "F32",
        "scalar": "F64",
        "i8": "I8",
        "u16": "U16",
        "e4m3": "F8_E4M3",
        "e4m3.fnuz": "F8_E4M3FNUZ",
        "e5m2.fnuz": "F8_E5M2FNUZ",
        "e8m0": "F8_E8M0",
        "complex": "C64",
    }
    _write_safetensors(root / "model.safetensors", tensors, dtypes)
    (root / "config.json").write_text('{"layers": 1}')
    return root


def _seal(model: Path, out: Path, **kw: Any) -> Path:
    kw.setdefault("sign_keys", [load_signing_key(str(KEYS / "signing-ed25519.key"))])
    kw.setdefault("recipients", [(None, load_recipient(str(KEYS / "recipient-x25519.key.pub")))])
    seal(str(model), str(out), **kw)
    return out


@pytest.fixture(scope="module")
def package(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _seal(model, tmp_path_factory.mktemp("pkg") / "m.spk")


def _open(path: Path, **kw: Any) -> secpack.Package:
    kw.setdefault("identity", str(KEYS / "recipient-x25519.key"))
    kw.setdefault("trust", [str(KEYS / "signing-ed25519.key.pub")])
    return secpack.open_package(path, **kw)


# The dtypes numpy has, and those that ml_dtypes gives (bit patterns without it).
_NUMPY_NAMES = {
    "F32": "float32",
    "F16": "float16",
    "I64": "int64",
    "BOOL": "bool",
    "F64": "float64",
    "I8": "int8",
    "U16": "uint16",
    "C64": "complex64",
}
_ML_NAMES = {
    "BF16": ("bfloat16", "uint16"),
    "F8_E4M3": ("float8_e4m3fn", "uint8"),
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", "uint8"),
    "F8_E5M2FNUZ": ("float8_e5m2fnuz", "uint8"),
    "F8_E8M0": ("float8_e8m0fnu", "uint8"),
}


@pytest.fixture(params=["ml_dtypes", "ml_dtypes-0.4", "no-ml_dtypes"])
def with_ml_dtypes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Runs a test with ml_dtypes (a test dependency); with one from before
    float8_e8m0fnu (0.5), which some frameworks pin; and as if it were not
    installed (a None in sys.modules makes its import fail). Gives the dtypes
    that come back as ml_dtypes' types."""
    import ml_dtypes

    if request.param == "no-ml_dtypes":
        monkeypatch.setitem(sys.modules, "ml_dtypes", None)
        return set()
    if request.param == "ml_dtypes-0.4":
        old = types.ModuleType("ml_dtypes")
        old.__dict__.update(
            {k: v for k, v in vars(ml_dtypes).items() if k not in ("float8_e8m0fnu", "__name__")}
        )
        monkeypatch.setitem(sys.modules, "ml_dtypes", old)
        return set(_ML_NAMES) - {"F8_E8M0"}
    return set(_ML_NAMES)


@contextlib.contextmanager
def _dtype_warnings(expected: bool) -> Iterator[None]:
    """A DtypeWarning must come exactly when ml_dtypes is missing."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield
    got = [w for w in seen if issubclass(w.category, secpack.api.loader.DtypeWarning)]
    assert bool(got) == expected, [str(w.message) for w in got]


def test_arrays_equal_the_source_bytes_and_types(
    model: Path, package: Path, with_ml_dtypes: set[str]
) -> None:
    source = _source_tensors(model / "model.safetensors")
    assert {d for d, _, _ in source.values()} == set(_NUMPY_NAMES) | set(_ML_NAMES)
    expected_dtype = dict(_NUMPY_NAMES)
    expected_dtype.update({k: v[k not in with_ml_dtypes] for k, v in _ML_NAMES.items()})
    with _open(package) as pkg, _dtype_warnings(with_ml_dtypes != set(_ML_NAMES)):
        sd = pkg.state_dict("weights")
        assert set(sd) == set(source)
        for name, (dtype, shape, raw) in source.items():
            arr = sd[name]
            assert arr.tobytes() == raw and list(arr.shape) == shape
            assert arr.dtype.name == expected_dtype[dtype]
            assert arr.size == 0 or arr.ctypes.data % 64 == 0
            one = pkg.tensor(name)
            assert one.dtype == arr.dtype and one.tobytes() == raw
        assert pkg.read_file("config", "config.json") == (model / "config.json").read_bytes()
        assert (
            pkg.read_file("weights", "model.safetensors")
            == (model / "model.safetensors").read_bytes()
        )
        # A missing name is a SecpackError with a stable code, and still a KeyError
        # whose args[0] is what was looked up, as KeyError(name) has it.
        for lookup, code, key in [
            (lambda: pkg.tensor("missing"), "tensor.unknown", "missing"),
            (lambda: pkg.tensor("missing", "weights"), "tensor.unknown", "missing"),
            (lambda: pkg.tensor_info("missing"), "tensor.unknown", "missing"),
            (lambda: pkg.tensor("missing", prefer=["exact"]), "tensor.unknown", "missing"),
            (lambda: pkg.tensor("missing", "weights", ["exact"]), "tensor.unknown", "missing"),
            (lambda: pkg.export_safetensors(["missing"]), "tensor.unknown", ["missing"]),
            (lambda: pkg.read_file("config", "missing.json"), "file.unknown", "missing.json"),
        ]:
            with pytest.raises(KeyError) as missing:
                lookup()
            assert isinstance(missing.value, SecpackError) and missing.value.code == code
            assert missing.value.args == (key,) and missing.value.key == key
            assert str(missing.value).startswith(f"{code}: ")
        with pytest.raises(SecpackError) as err:
            pkg.state_dict("nope")
        assert err.value.code == "component.unknown"


def test_export_safetensors_round_trips(package: Path, model: Path, tmp_path: Path) -> None:
    source = _source_tensors(model / "model.safetensors")
    with _open(package) as pkg:
        pkg.export_safetensors(["big.f32", "ids"], path=str(tmp_path / "sub.safetensors"))
        full = pkg.export_safetensors()
    part = _source_tensors(tmp_path / "sub.safetensors")
    assert set(part) == {"big.f32", "ids"} and part["ids"] == source["ids"]
    assert full is not None
    (tmp_path / "full.safetensors").write_bytes(full)
    assert _source_tensors(tmp_path / "full.safetensors") == source


def test_torch_framework(package: Path) -> None:
    torch = pytest.importorskip("torch")
    with _open(package) as pkg:
        sd = pkg.state_dict("weights", framework="torch")
        assert sd["small.bf16"].dtype == torch.bfloat16
        assert torch.equal(sd["ids"], torch.arange(-50, 50, dtype=torch.int64))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (None, "needs torch to be installed"),
        ("import secpack_test_missing_dependency\n", "importing torch failed"),
        ("raise ImportError('libtorch_cpu.so: cannot open shared object file')\n", "libtorch_cpu"),
    ],
)
def test_torch_that_cannot_be_imported_is_told_apart(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str | None, message: str
) -> None:
    """Torch that is not installed, and torch that is but fails to import (a missing
    dependency or shared library), are different problems: each says which."""
    if body is None:
        monkeypatch.setitem(sys.modules, "torch", None)  # import torch: not found
    else:
        (tmp_path / "torch").mkdir()
        (tmp_path / "torch" / "__init__.py").write_text(body)
        monkeypatch.delitem(sys.modules, "torch", raising=False)
        monkeypatch.syspath_prepend(str(tmp_path))
    with _open(package) as pkg, pytest.raises(ValueError, match=message):
        pkg.state_dict("weights", framework="torch")


def test_one_tensor_reads_only_header_signatures_its_file_header_and_its_segments(
    package: Path,
) -> None:
    with _open(package) as pkg:
        header_bytes = pkg.bytes_read
        sigs_and_header = pkg._header.layout.manifest_len + pkg._header.layout.index_len
        assert header_bytes < sigs_and_header + 32 + 8 + len(pkg._header.signature_section) + 1
        weights = next(c for c in pkg.manifest.components if c.name == "weights")
        record = pkg.tensor_info("ids")
        own = sum(s.stored for s in weights.segments[record.first : record.first + record.count])
        expected = own
        # The safetensors header of the tensor's file is read too, once, to check it
        # against the tensor table (OpenComponent.check_file).
        entry = pkg.files("weights")[record.file]
        seg, plain = entry.first, 0
        while plain < entry.header:
            expected += weights.segments[seg].stored
            plain += weights.segments[seg].plain
            seg += 1
        pkg.tensor("ids")
        assert pkg.bytes_read - header_bytes == expected
        pkg.tensor("ids")  # the file's header is checked once, not per read
        assert pkg.bytes_read - header_bytes == expected + own
        assert pkg.bytes_read < 0.02 * package.stat().st_size


def test_eight_threads_share_one_package(package: Path, model: Path) -> None:
    source = _source_tensors(model / "model.safetensors")
    names = sorted(source) * 6
    with _open(package) as pkg, concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: (n, pkg.tensor(n).tobytes()), names))
    for name, raw in results:
        assert raw == source[name][2]


def _in_a_child(body: Callable[[], bytes], meanwhile: Callable[[], None] = lambda: None) -> bytes:
    """Fork; run ``body`` in the child (under a 60 s alarm) and return what it
    returned, once the child has exited 0. ``meanwhile`` runs in the parent
    right after the fork. A child that hangs is killed, and fails the test."""
    import os
    import signal
    import time

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            signal.alarm(60)
            os.write(write_end, body())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    meanwhile()
    deadline = time.monotonic() + 90
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        said = pipe.read()
    assert done[0] == pid and os.WIFEXITED(done[1]) and os.WEXITSTATUS(done[1]) == 0
    return said


def test_a_forked_child_decodes_with_workers_of_its_own(package: Path, model: Path) -> None:
    """A package opened (and used) before a fork, as a pre-forking server or a
    DataLoader worker does: the child has none of the parent's worker threads,
    and a lock held by another thread at the fork would stay held in it. The
    child's first decode used to wait for ever."""
    import threading

    source = _source_tensors(model / "model.safetensors")
    want = {n: raw for n, (_, _, raw) in source.items()}
    first = sorted(source)[0]
    with _open(package, threads=2) as pkg:
        assert {n: a.tobytes() for n, a in pkg.state_dict().items()} == want
        holding, release = threading.Event(), threading.Event()

        def hold_the_lock() -> None:
            with pkg._lock:
                holding.set()
                release.wait()

        holder = threading.Thread(target=hold_the_lock)
        holder.start()
        holding.wait()

        def child() -> bytes:
            got = {n: a.tobytes() for n, a in pkg.state_dict().items()}
            same = got == want and pkg.tensor(first).tobytes() == want[first]
            return b"same" if same else b"different"

        def parent() -> None:
            release.set()
            holder.join()

        assert _in_a_child(child, parent) == b"same"
        # The parent's own workers are untouched.
        assert pkg.tensor(first).tobytes() == want[first]


def test_a_closed_package_says_so(package: Path, model: Path) -> None:
    """Use after close is the caller's mistake, a ValueError as for a closed file,
    never a read through a descriptor number the process may have reused."""
    name = sorted(_source_tensors(model / "model.safetensors"))[0]
    pkg = _open(package)
    pkg.close()
    pkg.close()  # twice is harmless
    for use in (
        lambda: pkg.tensor(name),
        lambda: pkg.state_dict(),
        lambda: list(pkg.iter_tensors()),
        lambda: pkg.read_file("weights", "model.safetensors"),
    ):
        with pytest.raises(ValueError, match="the package is closed"):
            use()


def test_close_waits_for_a_read_under_way(
    package: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small tensor is read on the caller's thread, outside the pool that close()
    shuts down. close() from another thread must not close the descriptor under
    that read: by then its number could name another file, and the read would
    end in a false integrity alarm."""
    import threading

    from secpack.transport import spkfile

    source = _source_tensors(model / "model.safetensors")
    pkg = _open(package)
    pkg.files("weights")  # the file's header is checked now, not under the block
    reading, go_on = threading.Event(), threading.Event()
    real = spkfile.os.preadv

    def slow_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        reading.set()
        assert go_on.wait(30)
        return real(fd, buffers, offset)

    got: dict[str, Any] = {}

    def load() -> None:
        try:
            got["ids"] = pkg.tensor("ids").tobytes()
        except Exception as exc:  # reported below
            got["error"] = exc

    monkeypatch.setattr(spkfile.os, "preadv", slow_preadv)
    reader = threading.Thread(target=load)
    reader.start()
    assert reading.wait(30)
    closer = threading.Thread(target=pkg.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive()  # waiting for the read under way
    go_on.set()
    reader.join(30)
    closer.join(30)
    monkeypatch.undo()
    assert not closer.is_alive() and got == {"ids": source["ids"][2]}
    with pytest.raises(ValueError, match="the package is closed"):
        pkg.tensor("ids")


# More 1 MiB tensors (one job each) than one worker's read-ahead window holds, so
# that an iteration one tensor in still has jobs to submit.
_LAYERS = 12


def _many_layers(tmp_path: Path) -> Path:
    root = tmp_path / "m"
    root.mkdir()
    rng = np.random.default_rng(5)
    layers = {f"layer.{i}": rng.standard_normal(1 << 18).astype(np.float32) for i in range(_LAYERS)}
    _write_safetensors(root / "model.safetensors", layers, dict.fromkeys(layers, "F32"))
    return _seal(root, tmp_path / "m.spk")


def test_an_iteration_begun_before_a_fork_is_refused_in_the_child(tmp_path: Path) -> None:
    """The child has none of the threads that the parent's half-done iteration
    waits for: it must say so, not wait for ever."""
    with _open(_many_layers(tmp_path), threads=1) as pkg:
        tensors = pkg.iter_tensors()
        next(tensors)

        def child() -> bytes:
            try:
                list(tensors)
            except ValueError as exc:
                # A fresh iteration in the child works.
                fresh = sum(1 for _ in pkg.iter_tensors()) == _LAYERS
                return b"refused" if "before a fork" in str(exc) and fresh else b"wrong"
            return b"finished"

        assert _in_a_child(child) == b"refused"
        assert sum(1 for _ in tensors) == _LAYERS - 1  # the parent's goes on


@pytest.mark.parametrize("threads", [1, 2])
def test_closing_during_a_load_stops_it_with_a_value_error(tmp_path: Path, threads: int) -> None:
    # threads=1 decodes in the caller's thread, so its next read finds the file closed.
    said = "the package is closed" if threads == 1 else "the package was closed during a load"
    with _open(_many_layers(tmp_path), threads=threads) as pkg:
        tensors = pkg.iter_tensors()
        next(tensors)
        pkg.close()  # waits for the jobs in flight; the load cannot go on
        with pytest.raises(ValueError, match=said):
            list(tensors)


def test_a_package_dropped_without_close_gives_its_descriptor_back(package: Path) -> None:
    import gc
    import os

    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        pkg = _open(package)
        pkg.tensor(pkg.tensor_names()[0])
        del pkg
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before


def test_an_encrypted_identity_file_opens_with_passphrase(model: Path, tmp_path: Path) -> None:
    from secpack.api.keyfiles import keygen

    identity = tmp_path / "server.key"
    keygen("recipient", str(identity), passphrase=b"correct horse")
    sealed = _seal(
        model,
        tmp_path / "m.spk",
        recipients=[(None, load_recipient(f"{identity}.pub"))],
    )
    source = _source_tensors(model / "model.safetensors")
    for given in ("correct horse", b"correct horse"):
        with _open(sealed, identity=identity, passphrase=given) as pkg:
            assert pkg.tensor("ids").tobytes() == source["ids"][2]
    for given, says in ((None, "passphrase= in Python"), ("wrong", "wrong passphrase")):
        with pytest.raises(SecpackError) as err:
            _open(sealed, identity=identity, passphrase=given)
        assert err.value.code == "key.passphrase" and says in err.value.detail
    with pytest.raises(TypeError):
        _open(sealed, identity=identity, passphrase=1234)


def test_a_package_is_not_pickled_or_copied(package: Path) -> None:
    import copy
    import pickle

    with _open(package) as pkg:
        for attempt in (lambda: pickle.dumps(pkg), lambda: copy.copy(pkg)):
            with pytest.raises(TypeError, match="call open_package in each process"):
                attempt()


def test_rollback_protection(model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    v1 = _seal(model, tmp_path / "v1.spk", version=1)
    v2 = _seal(model, tmp_path / "v2.spk", version=2)
    _open(v1).close()
    _open(v2).close()
    with pytest.raises(SecpackError) as err:
        _open(v1)
    assert err.value.code == "fresh.rollback"
    with caplog.at_level(logging.WARNING, logger="secpack"):
        _open(v1, allow_downgrade=True).close()
    assert "downgrade" in caplog.text
    # The same version again is fine.
    _open(v2).close()


def test_rollback_is_per_signer(model: Path, tmp_path: Path) -> None:
    other = load_signing_key(str(KEYS / "signing-p256.key"))
    v5 = _seal(model, tmp_path / "v5.spk", version=5, sign_keys=[other])
    v1 = _seal(model, tmp_path / "v1.spk", version=1)
    _open(v5, trust=[str(KEYS / "signing-p256.key.pub")]).close()
    _open(v1).close()  # a different signer's track


def test_expired_package_is_refused(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = _seal(model, tmp_path / "e.spk", expires="1h")
    from secpack.api import trust

    real_now = trust.now
    monkeypatch.setattr(trust, "now", lambda: real_now() + 7200)
    with pytest.raises(SecpackError) as err:
        _open(pkg)
    assert err.value.code == "fresh.expired"


class _Tripwire:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from secpack.api import loader
        from secpack.codec import plain, segment, zstd
        from secpack.recipes import aead

        self.calls: list[str] = []
        for module, name in (
            (aead, "open_"),
            (plain, "decode_plain"),
            (segment, "decode"),
            (zstd, "decompress"),
            (loader, "make_array"),
        ):
            monkeypatch.setattr(module, name, self._trap(name, getattr(module, name)))

    def _trap(self, name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return fn(*args, **kwargs)

        return wrapper


def _malformed_header(src: Path, dst: Path) -> Path:
    data = bytearray(src.read_bytes())
    data[40] ^= 0xFF  # inside the manifest
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("unsigned", "sig.missing"),
        ("untrusted", "sig.untrusted"),
        ("threshold", "sig.threshold"),
        ("expired", "fresh.expired"),
        ("downgrade", "fresh.rollback"),
        ("malformed", None),
    ],
)
def test_refuse_before_decode(
    case: str,
    code: str | None,
    model: Path,
    package: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kwargs: dict[str, Any] = {}
    if case == "unsigned":
        target = _seal(model, tmp_path / "u.spk", sign_keys=[])
    elif case == "untrusted":
        target = _seal(
            model,
            tmp_path / "t.spk",
            sign_keys=[load_signing_key(str(KEYS / "untrusted-ed25519.key"))],
        )
    elif case == "threshold":
        target = package
        both = policy_from_keys(
            [
                (n, (KEYS / n).read_bytes())
                for n in ("signing-ed25519.key.pub", "signing-p256.key.pub")
            ],
            threshold=2,
        )
        kwargs = {"policy": both, "trust": None}
    elif case == "expired":
        target = _seal(model, tmp_path / "e.spk", expires="1h")
        from secpack.api import trust

        real_now = trust.now
        monkeypatch.setattr(trust, "now", lambda: real_now() + 7200)
    elif case == "downgrade":
        _open(_seal(model, tmp_path / "v9.spk", version=9)).close()
        target = _seal(model, tmp_path / "v3.spk", version=3)
    else:
        target = _malformed_header(package, tmp_path / "bad.spk")
    trip = _Tripwire(monkeypatch)
    with pytest.raises(SecpackError) as err, _open(target, **kwargs) as pkg:
        pkg.state_dict("weights")
    if code:
        assert err.value.code == code
    else:
        assert err.value.code.split(".")[0] in ("cbor", "schema", "container", "integrity", "sig")
    assert trip.calls == []


def _bump(state_dir: str, version: int) -> None:
    from secpack.transport.state import VersionState

    for i in range(20):
        VersionState(state_dir).check(
            "pkg", [b"k" * 32], version * 100 + i, record=True, allow_downgrade=True
        )


def test_state_file_survives_concurrent_writers(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(8) as pool:
        pool.starmap(_bump, [(str(tmp_path), v) for v in range(8)])
    from secpack.transport.state import VersionState

    with pytest.raises(SecpackError) as err:
        VersionState(str(tmp_path)).check(
            "pkg", [b"k" * 32], 718, record=False, allow_downgrade=False
        )
    assert err.value.code == "fresh.rollback"
    doc = json.loads((tmp_path / "versions.json").read_text())
    assert doc["packages"]["pkg"][(b"k" * 32).hex()] == 719


def test_corrupt_state_fails_closed(model: Path, package: Path, tmp_path: Path) -> None:
    (tmp_path / "versions.json").write_text("{not json")
    policy = Policy(
        keys=policy_from_keys([("k", (KEYS / "signing-ed25519.key.pub").read_bytes())]).keys,
        state_dir=str(tmp_path),
    )
    with pytest.raises(SecpackError) as err:
        _open(package, policy=policy, trust=None)
    assert err.value.code == "state.corrupt"


def test_load_one_call(package: Path, model: Path) -> None:
    source = _source_tensors(model / "model.safetensors")
    tensors = secpack.load(
        package,
        identity=str(KEYS / "recipient-x25519.key"),
        trust=[str(KEYS / "signing-ed25519.key.pub")],
    )
    assert tensors["ids"].tobytes() == source["ids"][2]


def test_iter_tensors_yields_every_tensor_in_order(
    model: Path, package: Path, with_ml_dtypes: set[str]
) -> None:
    source = _source_tensors(model / "model.safetensors")
    with _open(package, threads=2) as pkg, _dtype_warnings(with_ml_dtypes != set(_ML_NAMES)):
        names = []
        for name, arr in pkg.iter_tensors("weights"):
            _dtype, shape, raw = source[name]
            assert arr.tobytes() == raw and list(arr.shape) == shape
            assert arr.size == 0 or arr.ctypes.data % 64 == 0
            names.append(name)
        assert names == pkg.tensor_names("weights")
        assert "empty" in names and len(names) == len(source)
        # A consumer may stop early: the workers are drained, the package stays usable.
        first = next(iter(pkg.iter_tensors("weights")))
        assert first[0] == names[0]
        assert np.array_equal(pkg.tensor("ids"), pkg.state_dict("weights")["ids"])


def test_iter_tensors_stops_at_a_damaged_segment(package: Path, tmp_path: Path) -> None:
    with _open(package) as pkg:
        weights = next(i for i, c in enumerate(pkg.manifest.components) if c.name == "weights")
        record = pkg.tensor_info("big.f32")
        offset = pkg._header.segment_offset(weights, record.first + record.count - 1)
    damaged = tmp_path / "damaged.spk"
    data = bytearray(package.read_bytes())
    data[offset + 5] ^= 0x01
    damaged.write_bytes(bytes(data))
    seen = []
    with _open(damaged) as pkg, pytest.raises(SecpackError) as err:
        for name, _ in pkg.iter_tensors("weights"):
            seen.append(name)
    assert err.value.code == "integrity"
    assert "big.f32" not in seen and "scalar" not in seen


def test_trust_given_as_one_path_is_a_type_error(package: Path) -> None:
    # A bare string would be walked one character at a time, each taken as a key file.
    with pytest.raises(TypeError, match="list of public key paths"):
        _open(package, trust=str(KEYS / "signing-ed25519.key.pub"))


def test_a_policy_that_lowers_the_header_limit_still_reads_packages(package: Path) -> None:
    """max_safetensors_header bounds seal's inputs; a reader's policy that lowers it
    must not make a package already written unreadable (the check of the stored
    header against the table uses the larger of the policy's and the default)."""
    import dataclasses

    from secpack.format.limits import Limits

    policy = policy_from_keys([("k", (KEYS / "signing-ed25519.key.pub").read_bytes())])
    tight = dataclasses.replace(policy, limits=Limits(max_safetensors_header=16))
    with secpack.open_package(
        package, identity=str(KEYS / "recipient-x25519.key"), policy=tight
    ) as pkg:
        assert pkg.tensor_names() and len(pkg.state_dict()) == len(pkg.tensor_names())


def test_just_too_little_memory_is_a_secpack_error(tmp_path: Path) -> None:
    """README: every failure of the loader is a SecpackError. Out of memory it was
    a bare MemoryError (or RuntimeError for a worker thread). Halving the address-
    space limit between enough and not, the load just short of enough fails in
    secpack's own work and must say limit.exceeded."""
    import subprocess
    import sys

    from helpers import build_model, clean_env, just_short

    model = build_model(tmp_path / "m")
    pkg = tmp_path / "p.spk"
    env = clean_env({"SECPACK_AUDIT": "off", "SECPACK_STATE_DIR": str(tmp_path / "state")})
    keys = Path(__file__).resolve().parents[2] / "keys-example"
    code = (
        "import secpack\n"
        "from secpack.api.keyfiles import load_signing_key\n"
        f"key = load_signing_key({str(keys / 'signing-ed25519.key')!r})\n"
        f"secpack.seal({str(model)!r}, {str(pkg)!r}, encrypt=False, sign_keys=[key])\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    probe = (
        "import resource, sys\n"
        "import numpy, secpack\n"
        "from secpack.api.loader import open_package\n"
        "limit = int(sys.argv[1]) << 20\n"
        "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
        "try:\n"
        f"    with open_package({str(pkg)!r}, trust=[{str(keys / 'signing-ed25519.key.pub')!r}]) as p:\n"
        "        p.state_dict()\n"
        "        p.tensor(next(iter(p.state_dict())))\n"
        "except secpack.SecpackError as exc:\n"
        "    print(exc.code)\n"
        "except BaseException as exc:\n"
        "    print('untyped', type(exc).__name__, exc)\n"
        "else:\n"
        "    print('ok')\n"
    )

    def run(mib: int) -> str | None:
        out = subprocess.run(
            [sys.executable, "-c", probe, str(mib)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        said = out.stdout.strip() or f"rc {out.returncode}: {out.stderr[-300:]}"
        return None if said == "ok" else said

    assert just_short(run, 4096, 64) == "limit.exceeded"


_READS = ["state_dict", "tensor", "iter_tensors", "read_file", "export_safetensors", "tensor_names"]


@pytest.mark.parametrize("read", _READS)
def test_every_read_out_of_memory_is_a_secpack_error(tmp_path: Path, read: str) -> None:
    """The halving test above looks only just short of enough. Below that, the
    trust key's read (a MiB set aside for a few hundred bytes), a header check's
    scratch buffer (state_dict), the copy handed back (read_file) and the file
    built in memory (export_safetensors) each ran out as a bare MemoryError. Here
    each read opens the package and reads under every address-space limit from
    96 MiB above what the process holds down to nothing: it either works or says
    limit.exceeded. threads=1 starts no worker thread, so no thread start can
    hang at the edge of memory (CPython gh-140746)."""
    import subprocess
    import sys

    from helpers import Tensor, clean_env, write_safetensors

    rng = np.random.default_rng(11)
    model = tmp_path / "m"
    model.mkdir()
    tensors = {
        f"small.{i}": Tensor("F32", (64,), rng.standard_normal(64).astype("<f4").tobytes())
        for i in range(20)
    }
    for name, shape in (("big.a", (1024, 1024)), ("big.b", (1536, 1024))):
        tensors[name] = Tensor("F32", shape, rng.standard_normal(shape).astype("<f4").tobytes())
    write_safetensors(model / "model.safetensors", tensors)
    (model / "config.json").write_text("{}")
    pkg = _seal(model, tmp_path / "p.spk")
    # A fixed mmap threshold: glibc otherwise raises it to the size of a block
    # once freed, and keeps later blocks of that size (read_file's bytes) in its
    # heap, within the address space already held; the next read then needs no
    # more, and no limit below what the process holds makes it run out.
    env = clean_env(
        {
            "SECPACK_AUDIT": "off",
            "SECPACK_STATE_DIR": str(tmp_path / "state"),
            "MALLOC_MMAP_THRESHOLD_": str(128 << 10),
        }
    )
    probe = f"""
import resource, sys
import numpy, secpack
from secpack.api.loader import open_package

READS = {{
    "state_dict": lambda p: p.state_dict(),
    "tensor": lambda p: p.tensor("big.b"),
    "iter_tensors": lambda p: sum(1 for _ in p.iter_tensors()),
    "read_file": lambda p: p.read_file("weights", "model.safetensors"),
    "export_safetensors": lambda p: p.export_safetensors(),
    "tensor_names": lambda p: p.tensor_names(),
}}
read = READS[sys.argv[1]]
soft, hard = resource.getrlimit(resource.RLIMIT_AS)


def held():
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) << 10 for x in f if x.startswith("VmSize:"))


def attempt():
    with open_package(
        {str(pkg)!r},
        identity={str(KEYS / "recipient-x25519.key")!r},
        trust=[{str(KEYS / "signing-ed25519.key.pub")!r}],
        threads=1,
    ) as p:
        read(p)


attempt()  # everything imported that will be
seen = set()
for extra in range(96, -1, -1):
    resource.setrlimit(resource.RLIMIT_AS, (held() + (extra << 20), hard))
    try:
        attempt()
        seen.add("ok")
    except secpack.SecpackError as exc:
        seen.add(exc.code)
    except BaseException as exc:
        seen.add("untyped-" + type(exc).__name__)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
print(",".join(sorted(seen)))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe, read],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    seen = out.stdout.split()[-1].split(",")
    # Every failure typed; and the scan reached both ends, the read done in full and
    # the read refused (tensor_names needs no buffer that its table has not got).
    assert set(seen) <= {"limit.exceeded", "ok"}, seen
    assert "ok" in seen and ("limit.exceeded" in seen or read == "tensor_names"), seen
