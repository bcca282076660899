"""The runtime loader: selective, lazy tensors behind refuse-before-decode.

::

    import secpack
    with secpack.open_package("m.spk", identity="r.key", policy="prod.toml") as pkg:
        w = pkg.tensor("encoder.layer.0.attention.self.query.weight")
        sd = pkg.state_dict("weights")

Signatures, freshness and rollback are checked once, in :func:`open_package`.
After that a tensor's segments are read, digest-checked, decrypted and decoded
only when that tensor is asked for, straight into a 64-byte-aligned buffer of
the tensor's exact size; a small tensor that shares its segment with others (a
run, docs/FORMAT.md §5) is copied out of that segment, decoded once for all of
them in a state dict. A :class:`Package` is safe to share between threads.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import struct
import threading
import warnings
import weakref
from collections.abc import Callable, Collection, Generator, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

# cbor2, the audit log, the atomic writer, key files and the codecs: what every
# open and every first decode needs, imported with the loader rather than inside
# the first load (the modules that use them import them lazily, for the CLI's
# start-up). A server imports the loader once, at start; its first model load
# then pays no import (about 30 ms here).
import cbor2  # noqa: F401
import numpy as np
from cryptography.hazmat.primitives.asymmetric import x25519

import secpack.api.keyfiles
import secpack.audit.log
import secpack.codec.segment
import secpack.transport.atomic  # noqa: F401
from secpack.api import hostmem
from secpack.api.auditing import audited, package_facts, record_late_error
from secpack.api.trust import establish_trust, remember_version
from secpack.buffers import in_use as decoding_here
from secpack.errors import NotFoundError, SecpackError, TensorError, resource_limit
from secpack.format.contents import FileEntry, TensorRecord
from secpack.format.manifest import Manifest
from secpack.package.decode import OpenComponent
from secpack.package.parallel import InlineExecutor, ordered_batched, worker_pool
from secpack.package.reader import largest_segment
from secpack.sign.policy import Policy, Signer
from secpack.tensors.variants import (
    VARIANTS,
    VARIANTS_ASKED,
    VARIANTS_ONLY,
    int8_scale_table,
    int8_table_problem,
    present_entries,
)
from secpack.transport.spkfile import FileSource
from secpack.workers import worker_threads

__all__ = ["ComponentInfo", "DtypeWarning", "Package", "load", "open_package"]

_NUMPY_DTYPES = {
    "BOOL": "|b1",
    "U8": "|u1",
    "I8": "|i1",
    "I16": "<i2",
    "U16": "<u2",
    "F16": "<f2",
    "I32": "<i4",
    "U32": "<u4",
    "F32": "<f4",
    "I64": "<i8",
    "U64": "<u8",
    "F64": "<f8",
    "C64": "<c8",
}
# Types numpy lacks: served by ml_dtypes when installed, else as raw unsigned
# integers. These are the names ml_dtypes and torch both give them.
_ML_DTYPES = {
    "BF16": ("bfloat16", "<u2"),
    "F8_E4M3": ("float8_e4m3fn", "|u1"),
    "F8_E5M2": ("float8_e5m2", "|u1"),
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", "|u1"),
    "F8_E5M2FNUZ": ("float8_e5m2fnuz", "|u1"),
    "F8_E8M0": ("float8_e8m0fnu", "|u1"),
}


class DtypeWarning(UserWarning):
    """A tensor came back as raw unsigned integers because ml_dtypes is not installed."""


def numpy_dtype(dtype: str) -> np.dtype[Any]:
    if dtype in _NUMPY_DTYPES:
        return np.dtype(_NUMPY_DTYPES[dtype])
    name, raw = _ML_DTYPES[dtype]
    try:
        import ml_dtypes

        # One from before the type (float8_e8m0fnu came in 0.5, and some
        # frameworks pin older ones) serves the bit patterns too.
        found, how = getattr(ml_dtypes, name, None), "upgrade ml_dtypes"
    except ImportError:
        found, how = None, "install ml_dtypes"
    if found is None:
        warnings.warn(
            f"{dtype} tensors are returned as {np.dtype(raw).name} bit patterns: "
            f"{how} to get the real dtype",
            DtypeWarning,
            stacklevel=3,
        )
        return np.dtype(raw)
    real: np.dtype[Any] = np.dtype(found)
    return real


def make_array(buffer: np.ndarray, record: TensorRecord) -> np.ndarray:
    """Step 12: the array, from a fully decoded and checked buffer."""
    dtype = numpy_dtype(record.dtype)
    if buffer.nbytes != record.length or record.length % dtype.itemsize:
        raise TensorError("tensor.invalid", f"{record.name}: buffer size disagrees with its type")
    try:
        return buffer.view(dtype).reshape(record.shape)
    except ValueError:
        # The contents schema bounds shapes already; numpy has the last word.
        raise TensorError(
            "tensor.invalid", f"{record.name}: shape numpy cannot represent"
        ) from None


@dataclass(frozen=True)
class ComponentInfo:
    name: str
    kind: str
    size: int
    stored_size: int
    encrypted: bool


def _as_identities(identity: Any, passphrase: bytes | str | None) -> list[x25519.X25519PrivateKey]:
    from secpack.api.keyfiles import load_identity

    if identity is None:
        return []
    if isinstance(passphrase, str):
        passphrase = passphrase.encode()
    elif passphrase is not None and not isinstance(passphrase, bytes):
        raise TypeError("passphrase must be bytes or str")
    items = identity if isinstance(identity, (list, tuple)) else [identity]
    out = []
    for item in items:
        if isinstance(item, x25519.X25519PrivateKey):
            out.append(item)
        elif isinstance(item, (str, os.PathLike)):
            out.append(load_identity(os.fspath(item), passphrase))
        else:
            raise TypeError("identity must be a path or an X25519PrivateKey (or a list of them)")
    return out


def _as_policy(
    policy: Policy | str | os.PathLike[str] | None, trust: Sequence[Any] | None
) -> Policy:
    from secpack.api.keyfiles import resolve_policy

    if isinstance(trust, (str, bytes, os.PathLike)):
        # A bare path would be walked one character at a time, each a "key file".
        raise TypeError("trust must be a list of public key paths, not a single path")
    if isinstance(policy, Policy):
        if trust:
            raise ValueError("give either trust or policy, not both")
        return policy
    return resolve_policy(
        [os.fspath(t) for t in trust or []], os.fspath(policy) if policy else None
    )


# What a load out of memory or threads is told to try.
_LESS = "threads=1 and smaller loads (iter_tensors, tensor) need less"


@contextlib.contextmanager
def _out_of_resources() -> Iterator[None]:
    """Running out of memory or threads is ``limit.exceeded``, a SecpackError like
    every other failure of the loader, not a bare MemoryError or RuntimeError."""
    try:
        yield
    except Exception as exc:
        limit = resource_limit(exc, _LESS)
        if limit is not None:
            raise limit from exc
        raise


_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")


# Errors a read raises for a fault of the package itself, which get an audit record
# of their own (Package._load_errors): bytes that fail their digest or tag, a
# codec, table or structure the signer never wrote, a path inside the package
# that is unsafe to write, and a component this identity cannot decrypt. What the
# caller asked for (a name the package lacks, an output path that exists, a full
# disk, memory) is not the package's fault, and is not recorded.
_PACKAGE_FAULTS = frozenset({"integrity", "codec.invalid", "tensor.invalid", "output.unsafe"})
_PACKAGE_FAULT_CLASSES = ("container.", "cbor.", "schema.", "key.no-recipient")


def _package_fault(code: str) -> bool:
    return code in _PACKAGE_FAULTS or code.startswith(_PACKAGE_FAULT_CLASSES)


def _loading(
    method: Callable[Concatenate[Package, _P], _R],
) -> Callable[Concatenate[Package, _P], _R]:
    """A Package method that reads the package: whatever it runs into besides the
    package's own faults is said as what it is (Package._load_errors), wherever in
    the method it comes: a decryption of the tensor table, an output buffer, the
    copy handed back, as much as the decoding itself."""

    @functools.wraps(method)
    def wrapper(self: Package, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._load_errors(), _in_load():
            return method(self, *args, **kwargs)

    return wrapper


# How many loads this thread is inside: more than one when a load starts while
# another is under way on the same thread (a signal handler that reads).
_thread = threading.local()


class _in_load:  # lower case: used as a function, ``with _in_load():``
    """Marks this thread as inside a load for the block. A class, for the reason
    given in secpack.buffers.own_scratch: an interrupt as the block ends leaves
    the mark on (later loads of the thread then work without the pool), never
    takes it off in the middle of another load."""

    __slots__ = ("_depth",)

    def __enter__(self) -> None:
        self._depth = getattr(_thread, "depth", 0)
        _thread.depth = self._depth + 1

    def __exit__(self, *exc: object) -> None:
        _thread.depth = self._depth


def _stepped(steps: Generator[_T, None, None]) -> Iterator[_T]:
    """``steps``, each of its steps inside _in_load, and none of the consumer's
    code between them: a load made between two tensors is not nested."""
    try:
        while True:
            with _in_load():
                try:
                    item = next(steps)
                except StopIteration:
                    return
            yield item
    finally:
        # A consumer that stops early closes this; ``steps`` then cancels the
        # decodes it has queued, at once rather than when it is collected.
        steps.close()


class Package:
    """An open, trusted package. Create it with :func:`open_package`."""

    def __init__(
        self,
        src: FileSource,
        policy: Policy,
        identities: list[x25519.X25519PrivateKey],
        threads: int,
        expected_name: str | None,
        allow_downgrade: bool,
    ) -> None:
        self._src = src
        self._policy = policy
        self._identities = identities
        # Re-entrant, as a read nested on the same thread (a signal handler's) may
        # come while the read it interrupted holds it (see buffers.own_scratch).
        self._lock = threading.RLock()
        self._components: dict[int, OpenComponent] = {}
        self._pool: Executor | None = None
        self._closed = False
        self._served: dict[str, str] = {}
        self._served_tensors: dict[str, str] = {}
        # Each int8 component's scale table and the names it uses as scales, once
        # read and checked: tensor(prefer=["int8"]) would otherwise decode every
        # variant header again for each tensor. (The package does not change.)
        self._scale_tables: dict[str, tuple[dict[str, list[str]], frozenset[str]]] = {}
        # The file run read_file decoded last: (component, segment, plaintext).
        # Reading a run's members one after another decodes the run once (a run
        # may hold a thousand small files in up to 16 MiB).
        self._last_run: tuple[str, int, bytes] | None = None
        self._header, signers = establish_trust(
            src, policy, expected_name=expected_name, allow_downgrade=allow_downgrade
        )
        self._threads = worker_threads(threads, largest_segment(self._header.manifest))
        remember_version(self._header, signers, policy)
        self.signers: tuple[Signer, ...] = tuple(signers)
        _live.add(self)

    def __reduce__(self) -> Any:
        # It holds an open file, worker threads and unwrapped data keys; a copy
        # would share the first two and pickle the third. Said plainly instead of
        # "cannot pickle '_thread.RLock' object".
        raise TypeError(
            "a Package cannot be pickled or copied: call open_package in each process "
            "(a process forked after opening one may go on using it)"
        )

    def _after_fork(self) -> None:
        """In a forked child: the parent's worker threads do not exist here, and a
        lock another thread held at the fork stays held for ever. Without this a
        child's first decode waited for workers that never run (a pre-forking
        server, a DataLoader worker, a multiprocessing pool with fork)."""
        self._lock = threading.RLock()
        self._pool = None  # the next decode starts workers of this process
        for comp in self._components.values():
            comp.after_fork()
        self._src.after_fork()

    # --- public metadata -----------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        return self._header.manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def manifest_digest(self) -> bytes:
        return self._header.digest

    @property
    def components(self) -> list[ComponentInfo]:
        return [
            ComponentInfo(c.name, c.kind, c.size, c.stored_size, c.encryption is not None)
            for c in self.manifest.components
        ]

    @property
    def bytes_read(self) -> int:
        """Bytes read from the package file so far (header included)."""
        return self._src.bytes_read

    # --- components ----------------------------------------------------------------

    def _component(self, name: str) -> OpenComponent:
        index = next((i for i, c in enumerate(self.manifest.components) if c.name == name), -1)
        if index < 0:
            raise SecpackError(
                "component.unknown",
                f"no component {name!r} (have {', '.join(c.name for c in self.manifest.components)})",
            )
        with self._lock:
            opened = self._components.get(index)
            if opened is None:
                opened = OpenComponent(
                    self._src, self._header, index, self._identities, self._policy.limits
                )
                self._components[index] = opened
            return opened

    def _variant_base(self, component: str) -> str | None:
        """The component whose precision variant ``component`` is, or None."""
        base, dot, variant = component.rpartition(".")
        if not dot or variant not in VARIANTS or variant not in self.variants(base):
            return None
        return base

    def _find(self, name: str, component: str | None) -> tuple[OpenComponent, TensorRecord]:
        """The component and record of tensor ``name``. Without ``component``, only
        exact weights are served: a precision variant's tensors are its stored
        form (int8 codes apart from their scales), which must be asked for by
        naming its component, or through ``prefer``."""
        if component is not None:
            if self._variant_base(component) is None:
                self._check_exact(component)
            comp = self._component(component)
            record = comp.tensor_named.get(name)
            if record is not None:
                return comp, record
            raise NotFoundError("tensor.unknown", f"no tensor {name!r} in {component!r}", name)
        base = self._base_of(name)
        if any(c.name == base for c in self.manifest.components):
            comp = self._component(base)
            record = comp.tensor_named.get(name)
            if record is not None:
                return comp, record
        # Only a variant has it (seal --variants-only): not the exact tensor.
        self._check_exact(base)
        raise NotFoundError("tensor.unknown", f"no tensor {name!r} in {base!r}", name)

    def _base_of(self, name: str) -> str:
        """The one component whose weights hold tensor ``name``, exact or in its
        precision variants. Components this identity cannot read are passed over
        (another form may be readable; if none is, that is the error). Two
        components with a tensor of that name (a pipeline's parts, two
        checkpoints) are ``component.unknown``: the caller must say which."""
        bases: list[str] = []
        unreadable: SecpackError | None = None
        for c in self.manifest.components:
            if c.kind not in ("weights", "adapter"):
                continue
            try:
                held = name in self._tensor_names(c.name)
            except SecpackError as exc:
                if exc.code != "key.no-recipient":
                    raise
                unreadable = unreadable or exc
                continue
            base = self._variant_base(c.name) or c.name
            if held and base not in bases:
                bases.append(base)
        if len(bases) > 1:
            raise SecpackError(
                "component.unknown",
                f"tensor {name!r} is in components {bases}: pass component= to say which",
            )
        if bases:
            return bases[0]
        if unreadable is not None:
            raise unreadable
        raise NotFoundError("tensor.unknown", f"no tensor {name!r} in the package", name)

    def _tensor_names(self, component: str) -> Collection[str]:
        return self._component(component).tensor_named.keys()

    # The table is served only once each safetensors file's stored header has been
    # found to agree with it (OpenComponent.check_file), as the tensors themselves.

    @_loading
    def tensor_names(self, component: str = "weights") -> list[str]:
        comp = self._component(component)
        comp.check_headers()
        return [t.name for t in comp.contents.tensors]

    @_loading
    def tensor_info(self, name: str, component: str | None = None) -> TensorRecord:
        comp, record = self._find(name, component)
        comp.check_file(record.file)
        return record

    @_loading
    def files(self, component: str) -> list[FileEntry]:
        comp = self._component(component)
        comp.check_headers()
        return list(comp.contents.files)

    # --- decoding ------------------------------------------------------------------

    def _executor(self) -> Executor:
        if getattr(_thread, "depth", 0) > 1 or decoding_here():
            # A load nested inside another on this thread (or inside a decode, on
            # a worker of the pool) works in the thread, without the pool: the
            # load it interrupted may hold the pool's own locks
            # (ThreadPoolExecutor.submit's, which are not re-entrant), or occupy
            # its workers.
            return InlineExecutor()
        with self._lock:
            if self._closed:
                raise ValueError(f"{self._src.path}: the package is closed")
            if self._pool is None:
                # With one worker, no thread at all: memory too tight for one can
                # hang its start for ever (see InlineExecutor).
                self._pool = worker_pool(self._threads, "secpack-load")
            return self._pool

    def _decode_many(self, work: list[Work]) -> None:
        work = _merged(work)
        if len(work) == 1:
            comp, seg, pieces = work[0]
            comp.decode_pieces(seg, pieces)
            return
        jobs = [
            (sum(len(o) for _, o in p), functools.partial(c.decode_pieces, s, p))
            for c, s, p in work
        ]
        for _ in ordered_batched(self._executor(), jobs, 2 * self._threads + 2):
            pass

    @contextlib.contextmanager
    def _load_errors(self) -> Iterator[None]:
        """What a load may run into besides the package's own faults, said as what
        it is. close() from another thread shuts the pool down under a running
        load: its next submit is a RuntimeError of concurrent.futures, the caller's
        use of a closed package (ValueError). Running out of memory or threads is
        ``limit.exceeded`` (_out_of_resources)."""
        try:
            with _out_of_resources():
                yield
        except SecpackError as exc:
            # A fault of the package that a read found is recorded, as the refusal
            # of a verb is: the load's record, written when the package opened,
            # says only that it opened (_PACKAGE_FAULTS).
            if _package_fault(exc.code):
                record_late_error("load", exc, self._audit_package())
            raise
        except RuntimeError:
            if self._closed:
                raise ValueError(
                    f"{self._src.path}: the package was closed during a load"
                ) from None
            raise

    def _audit_package(self) -> dict[str, Any]:
        """The package, as the audit record of its opening named it."""
        facts = package_facts(self.name, self.version, self.manifest_digest)
        return {"path": self._src.path, **facts}

    @staticmethod
    def _segments_into(
        comp: OpenComponent, first: int, count: int, buffer: np.ndarray
    ) -> list[Work]:
        view = buffer.data.cast("B")
        work: list[Work] = []
        pos = 0
        for seg in range(first, first + count):
            size = comp.component.segments[seg].plain
            work.append((comp, seg, [(0, view[pos : pos + size])]))
            pos += size
        return work

    @_loading
    def tensor(
        self, name: str, component: str | None = None, prefer: Sequence[str] | None = None
    ) -> np.ndarray:
        """Decode one tensor; reads only that tensor's segments, or the one it
        shares with its small neighbours (at most 1 MiB), and for int8 its
        scales. Raises ``tensor.unknown`` (a :class:`SecpackError` that is also
        a ``KeyError``) when no readable component has it, ``component.unknown``
        when ``component`` is not given and two components have a tensor of that
        name (a pipeline's parts, two checkpoints side by side), and
        :class:`SecpackError` on any check.

        Without ``prefer`` this is the exact tensor. A package sealed with
        ``--variants-only`` has none: that is ``component.unknown``, as for
        :meth:`state_dict`. With ``prefer`` (e.g. ``["int8", "exact"]``), the first
        of those forms this identity can read, int8 dequantized to float32, as
        :meth:`state_dict` serves them. Naming a variant's own component
        (``"weights.int8"``) returns its stored form instead: int8 codes."""
        if prefer is None:
            comp, record = self._find(name, component)
            return self._decode_tensor(comp, record)
        prefer = _prefer_list(prefer)
        base = component if component is not None else self._base_of(name)
        for choice, held in self._forms(base, prefer):
            comp = self._component(held)
            scales, used = self._scale_table(held) if choice == "int8" else ({}, frozenset())
            found = comp.tensor_named.get(name)
            if found is None or name in used:
                continue  # a file the variant does not cover, or int8's own scales
            array = self._decode_tensor(comp, found)
            pair = scales.get(name)
            if pair is not None:
                parts = {name: array}
                for scale in pair:
                    parts[scale] = self._decode_tensor(*self._find(scale, held))
                array = _dequantize(parts, {name: pair})[name]
            with self._lock:
                self._served_tensors[name] = choice
            return array
        if not any(self._holds(held, name) for _, held in self._forms(base, [*VARIANTS, "exact"])):
            raise NotFoundError("tensor.unknown", f"no tensor {name!r} in {base!r}", name)
        raise SecpackError(
            "component.unknown",
            f"none of {list(prefer)} holds {name!r} in {base!r} (have {self.variants(base)})",
        )

    def _holds(self, held: str, name: str) -> bool:
        """Whether component ``held`` serves tensor ``name`` (int8's scales are not
        tensors of the model)."""
        used = self._scale_table(held)[1] if held.endswith(".int8") else frozenset()
        return name in self._tensor_names(held) and name not in used

    def _tensor_into(
        self, comp: OpenComponent, record: TensorRecord, buffer: np.ndarray
    ) -> list[Work]:
        """The decode work for one tensor, once its file's stored header has been
        found to agree with the tensor table (OpenComponent.check_file). A tensor
        of a run is its slice of the run's segment."""
        comp.check_file(record.file)
        if record.run:
            return [(comp, record.first, [(record.skip, buffer.data.cast("B"))])]
        return self._segments_into(comp, record.first, record.count, buffer)

    def _decode_tensor(self, comp: OpenComponent, record: TensorRecord) -> np.ndarray:
        buffer = hostmem.host_buffer(record.length)
        self._decode_many(self._tensor_into(comp, record, buffer))
        return make_array(buffer, record)

    def iter_tensors(
        self, component: str = "weights", prefer: Sequence[str] | None = None
    ) -> Iterator[tuple[str, np.ndarray]]:
        """Every tensor of ``component`` as ``(name, array)``, in package order,
        decoded in parallel a few segments ahead of the consumer.

        For loaders that hand each tensor on (to a device, say) and drop it: host
        memory stays near one tensor plus the read-ahead window instead of the
        whole model. Small freed buffers are reused by the allocator; tensors of
        2 MiB and more get fresh huge-page mappings, whose first touch is cheap
        enough (about 0.12 ms per MiB here) that keeping freed ones for reuse
        measured no faster.
        ``prefer`` picks a precision variant as :meth:`state_dict` does, and serves
        the same arrays (int8 dequantized to float32, each once its scales are
        in); :meth:`served` says which.
        Every check of :meth:`state_dict` applies; an error stops the iteration.
        A ``prefer`` that names no form is refused here, before the first tensor.
        """
        # Not itself a generator: the argument is checked at the call.
        forms = None if prefer is None else _prefer_list(prefer)
        return _stepped(self._iter_tensors(component, forms))

    def _iter_tensors(
        self, component: str, prefer: list[str] | None
    ) -> Generator[tuple[str, np.ndarray], None, None]:
        with self._load_errors():  # as _loading does for the other reads
            if prefer is None:
                yield from self._iter_stored(component)
                return
            for choice, held in self._forms(component, prefer):
                with self._lock:
                    self._served[component] = choice
                if choice == "int8":
                    yield from self._iter_dequantized(held)
                else:
                    yield from self._iter_stored(held)
                return
            raise SecpackError(
                "component.unknown",
                f"none of {list(prefer)} is available for {component!r} "
                f"(have {self.variants(component)})",
            )

    def _iter_dequantized(self, component: str) -> Iterator[tuple[str, np.ndarray]]:
        """An int8 variant's tensors as :func:`_dequantize` serves them, the scales
        themselves not served. The scales are decoded first, all of them: one
        float32 per row and one per column, small beside the codes (seal makes
        int8 only of tensors its scales leave smaller). Each int8 tensor is then
        served as soon as it is decoded, whatever order the files list tensors
        in: none is held back, and no time goes to finding what became ready."""
        scales, used = self._scale_table(component)
        comp = self._component(component)
        arrays: dict[str, np.ndarray] = {}
        if used:
            records = [t for t in comp.contents.tensors if t.name in used]
            buffers = [hostmem.host_buffer(r.length) for r in records]
            # In table order, so that the scales of one run share its one decode.
            self._decode_many(
                [
                    w
                    for r, b in zip(records, buffers, strict=True)
                    for w in self._tensor_into(comp, r, b)
                ]
            )
            arrays = {r.name: make_array(b, r) for r, b in zip(records, buffers, strict=True)}
        for name, array in self._iter_stored(component):
            if name in used:
                continue
            pair = scales.get(name)
            if pair is None:
                yield name, array
                continue
            parts = {name: array, **{p: arrays[p] for p in pair}}
            yield name, _dequantize(parts, {name: pair})[name]

    def _iter_stored(self, component: str) -> Iterator[tuple[str, np.ndarray]]:
        self._check_exact(component)
        comp = self._component(component)
        records = comp.contents.tensors
        buffers: dict[int, np.ndarray] = {}

        def jobs() -> Iterator[tuple[int, Callable[[], int]]]:
            # Each job returns the index of the last tensor it completes, or -1:
            # results come back in order, so every tensor up to that one is whole.
            # The tensors of a run wait for its last one, then share one job.
            run: list[Work] = []
            for i, record in enumerate(records):
                buffer = buffers[i] = hostmem.host_buffer(record.length)
                work = self._tensor_into(comp, record, buffer)
                if run and not (record.run and record.skip and record.first == run[0][1]):
                    yield _job(run, i - 1)
                    run = []
                if record.run:
                    run.extend(work)
                elif not work:  # an empty tensor has no segment to wait for
                    yield 0, functools.partial(_completes, i)
                else:
                    for k, item in enumerate(work):
                        yield _job([item], i if k == len(work) - 1 else -1)
            if run:
                yield _job(run, len(records) - 1)

        served = 0
        for done in ordered_batched(self._executor(), jobs(), 2 * self._threads + 2):
            for i in range(served, done + 1):
                yield records[i].name, make_array(buffers.pop(i), records[i])
            served = max(served, done + 1)

    @_loading
    def state_dict(
        self,
        component: str = "weights",
        framework: str = "numpy",
        prefer: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Every tensor of ``component``, decoded in parallel, as ``name -> array``.

        ``prefer`` (e.g. ``["int8", "fp16", "exact"]``) picks the first precision
        variant the package has (``seal --variant``) and this identity can read;
        int8 comes back dequantized to float32. :meth:`served` tells which one was used.

        The numpy arrays of one call share one block of memory (huge-page advised),
        which is freed when the last of them is.
        """
        if prefer is None:
            self._check_exact(component)
            arrays = self._arrays(component)
            self._served[component] = "exact"
        else:
            arrays = self._preferred(component, _prefer_list(prefer))
        if framework == "numpy":
            return arrays
        if framework == "torch":
            dtypes = self._dtypes(
                component
                if self._served[component] == "exact"
                else f"{component}.{self._served[component]}"
            )
            return {name: _to_torch(arr, dtypes.get(name, "")) for name, arr in arrays.items()}
        raise ValueError(f"framework must be 'numpy' or 'torch', not {framework!r}")

    def served(self, component: str = "weights") -> str | None:
        """Which variant (``"exact"``, ``"int8"``, ...) the last state_dict of
        ``component`` returned, or None before any (``served_tensor`` is the same
        for ``tensor(name, prefer=...)``)."""
        return self._served.get(component)

    def served_tensor(self, name: str) -> str | None:
        """Which variant the last ``tensor(name, prefer=...)`` returned, or None
        before any: int8 dequantized to float32 looks like exact weights."""
        return self._served_tensors.get(name)

    def variants(self, component: str = "weights") -> list[str]:
        """The precision variants of ``component`` in this package, "exact" included.
        A variant seal was asked for and did not store, because it would have
        changed no tensor (fp16 of fp16 weights), is listed too: the exact weights
        serve it."""
        names = {c.name for c in self.manifest.components}
        served = self._exact_serves(component)
        others = [v for v in VARIANTS if f"{component}.{v}" in names or v in served]
        # With --variants-only the exact component keeps only what has no variant
        # (an adapter's config, say): its tensors are in the variants alone. Unless
        # it serves a variant itself: then seal kept all of it.
        exact_left_out = (
            bool(others) and not served and self.manifest.metadata.get(VARIANTS_ONLY) == "true"
        )
        found = ["exact"] if component in names and not exact_left_out else []
        return found + others

    def _exact_serves(self, component: str) -> list[str]:
        """The variants of ``component`` its exact weights serve: asked for at seal
        time, and not stored for it because they would have changed no tensor."""
        comp = next((c for c in self.manifest.components if c.name == component), None)
        if comp is None or comp.kind not in ("weights", "adapter"):
            return []
        names = {c.name for c in self.manifest.components}
        asked = self.manifest.metadata.get(VARIANTS_ASKED, "").split(",")
        return [v for v in VARIANTS if v in asked and f"{component}.{v}" not in names]

    def _check_exact(self, component: str) -> None:
        """Refuse to serve as exact weights a component whose tensors are only in its
        precision variants (``seal --variants-only``): it would come back empty."""
        others = self.variants(component)
        if others and "exact" not in others:
            raise SecpackError(
                "component.unknown",
                f"{component!r} is only in precision variants {others}: "
                f"pass prefer=[{', '.join(repr(v) for v in others)}]",
            )

    def _forms(self, component: str, prefer: Sequence[str]) -> Iterator[tuple[str, str]]:
        """(form, the component that holds it) for each of ``prefer`` (already
        checked by _prefer_list) that the package has and this identity can read,
        in that order."""
        available = self.variants(component)
        for choice in prefer:
            if choice not in available:
                continue
            # A variant not stored because it would change nothing: the exact
            # weights are that variant, and are served (and reported) as exact.
            form = "exact" if choice in self._exact_serves(component) else choice
            held = component if form == "exact" else f"{component}.{form}"
            try:
                self._component(held)
            except SecpackError as exc:
                if exc.code != "key.no-recipient":
                    raise
                continue  # this identity may read another variant
            yield form, held

    def _preferred(self, component: str, prefer: Sequence[str]) -> dict[str, Any]:
        for choice, name in self._forms(component, prefer):
            arrays = self._arrays(name)
            if choice == "int8":
                arrays = _dequantize(arrays, self._scale_table(name)[0])
            self._served[component] = choice
            return arrays
        raise SecpackError(
            "component.unknown",
            f"none of {list(prefer)} is available for {component!r} "
            f"(have {self.variants(component)})",
        )

    def _scale_table(self, component: str) -> tuple[dict[str, list[str]], frozenset[str]]:
        """_scales, and the names it uses as scales; read once per component."""
        with self._lock:
            known = self._scale_tables.get(component)
        if known is None:
            scales = self._scales(component)
            known = (scales, frozenset(s for pair in scales.values() for s in pair))
            with self._lock:
                self._scale_tables[component] = known
        return known

    def _scales(self, component: str) -> dict[str, list[str]]:
        """int8 scale-tensor names, from the variant files' safetensors metadata."""
        comp = self._component(component)
        scales: dict[str, list[str]] = {}
        for index, entry in enumerate(comp.contents.files):
            if entry.format != "safetensors":
                continue
            # Header and table agree, and the header's size is bounded before the
            # buffer below is allocated for it.
            comp.check_file(index)
            first_tensor = min(
                (t.first for t in comp.contents.tensors if t.file == index),
                default=entry.first + entry.count,
            )
            buffer = hostmem.host_buffer(entry.header)
            self._decode_many(
                self._segments_into(comp, entry.first, first_tensor - entry.first, buffer)
            )
            table = _scale_table(buffer.tobytes()[8:])
            if table is None:
                raise TensorError("tensor.invalid", f"{entry.path}: no valid int8 scale table")
            scales.update(table)
        # The table's own consistency, checked here so that tensor() and state_dict()
        # refuse the same tables with the same code (_dequantize checks the arrays);
        # seal refuses the same (plan.make_plan).
        tensors = {t.name: (t.dtype, t.shape) for t in comp.contents.tensors}
        problem = int8_table_problem(scales, tensors)
        if problem is not None:
            raise TensorError("tensor.invalid", problem)
        return present_entries(scales, tensors)

    def _dtypes(self, component: str) -> dict[str, str]:
        return {t.name: t.dtype for t in self._component(component).contents.tensors}

    def _arrays(self, component: str) -> dict[str, np.ndarray]:
        comp = self._component(component)
        records = comp.contents.tensors
        # One block for the whole state dict: see secpack.api.hostmem.
        buffers = list(zip(records, hostmem.arena([r.length for r in records]), strict=True))
        work = []
        for record, buffer in buffers:
            work.extend(self._tensor_into(comp, record, buffer))
        if work:
            self._decode_many(work)
        return {record.name: make_array(buffer, record) for record, buffer in buffers}

    @_loading
    def read_file(self, component: str, path: str) -> bytes:
        """The exact bytes of one original file of ``component`` (``file.unknown``,
        also a ``KeyError``, when it has none at ``path``). The file is decoded
        straight into the bytes returned (held twice only where secpack was built
        without its C helpers); ``open`` writes a large file a few segments at a
        time, for files larger than the memory to spare."""
        comp = self._component(component)
        index = comp.file_at.get(path)
        if index is None:
            raise NotFoundError("file.unknown", f"no file {path!r} in {component!r}", path)
        entry = comp.contents.files[index]
        comp.check_file(index)  # a safetensors file's header is what it claims
        if entry.run:  # its slice of the file run's one segment
            run = self._run_plain(component, comp, entry.first)
            return run[entry.skip : entry.skip + entry.size]
        fill = functools.partial(self._decode_segments, comp, entry.first, entry.count)
        return hostmem.filled_bytes(entry.size, fill)

    def _decode_segments(
        self, comp: OpenComponent, first: int, count: int, buffer: np.ndarray
    ) -> None:
        if count:
            self._decode_many(self._segments_into(comp, first, count, buffer))

    def _run_plain(self, component: str, comp: OpenComponent, seg: int) -> bytes:
        with self._lock:
            last = self._last_run
        if last is not None and last[:2] == (component, seg):
            return last[2]
        plain = bytes(comp.decode(seg))
        with self._lock:
            self._last_run = (component, seg, plain)
        return plain

    @_loading
    def export_safetensors(
        self,
        names: Sequence[str] | None = None,
        component: str = "weights",
        path: str | None = None,
    ) -> bytes | None:
        """A safetensors file of the chosen tensors (all of ``component`` by default).
        Returns the bytes, or writes them atomically to ``path`` and returns None.
        A name the component does not hold is ``tensor.unknown``."""
        comp = self._component(component)
        wanted = set(names) if names is not None else None
        records = [r for r in comp.contents.tensors if wanted is None or r.name in wanted]
        if wanted is not None and len(records) != len(wanted):
            missing = sorted(wanted - {r.name for r in records})
            raise NotFoundError(
                "tensor.unknown", f"no tensor(s) {missing} in {component!r}", missing
            )
        header: dict[str, Any] = {}
        offset = 0
        for r in records:
            header[r.name] = {
                "dtype": r.dtype,
                "shape": list(r.shape),
                "data_offsets": [offset, offset + r.length],
            }
            offset += r.length
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        head = struct.pack("<Q", len(raw)) + raw

        def fill(body: np.ndarray) -> None:
            """The tensors' bytes decoded into ``body``, one after another."""
            work, pos = [], 0
            for r in records:
                work.extend(self._tensor_into(comp, r, body[pos : pos + r.length]))
                pos += r.length
            if work:
                self._decode_many(work)

        # The tensors are decoded straight into what is returned or written, so
        # that the model is held once (it was three times: decoded, copied into
        # bytes, and copied again behind the header).
        if path is None:

            def whole(buffer: np.ndarray) -> None:
                buffer[: len(head)] = np.frombuffer(head, dtype=np.uint8)
                fill(buffer[len(head) :])

            return hostmem.filled_bytes(len(head) + offset, whole)
        from secpack.transport.atomic import AtomicFile

        body = hostmem.host_buffer(offset)
        fill(body)
        with AtomicFile(path, force_option=False) as out:
            out.pwrite(0, head)
            out.pwrite(len(head), body.data)
            out.commit()
        return None

    # --- lifetime ------------------------------------------------------------------

    def close(self) -> None:
        """Stop the workers and close the file. Using the package afterwards is a
        ``ValueError``, as for a closed file; closing twice is harmless."""
        with self._lock:
            self._closed = True
            self._last_run = None
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        self._src.close()

    def __enter__(self) -> Package:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# Every open Package, so that a forked child can give each fresh locks and workers;
# weak, so that this never keeps one alive.
_live: weakref.WeakSet[Package] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for package in list(_live):
        package._after_fork()


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


# One segment to decode: the component, the segment's index, and where its bytes
# go, as (bytes of the segment to skip, output) pieces: one piece that is the
# whole segment, or the slices of a run's tensors (OpenComponent.decode_pieces).
Work = tuple[OpenComponent, int, list[tuple[int, memoryview]]]


def _merged(work: list[Work]) -> list[Work]:
    """``work`` with neighbouring items of the same segment (the tensors of one
    run) made one, so that the segment is decoded once."""
    out: list[Work] = []
    for comp, seg, pieces in work:
        if out and out[-1][0] is comp and out[-1][1] == seg:
            out[-1][2].extend(pieces)
        else:
            out.append((comp, seg, list(pieces)))
    return out


def _job(work: list[Work], completes: int) -> tuple[int, Callable[[], int]]:
    """An ordered_batched job that decodes ``work`` (one segment, after merging)
    and returns ``completes``."""
    ((comp, seg, pieces),) = _merged(work)
    return sum(len(o) for _, o in pieces), functools.partial(
        _decode_job, comp, seg, pieces, completes
    )


def _decode_job(
    comp: OpenComponent, seg: int, pieces: list[tuple[int, memoryview]], completes: int
) -> int:
    comp.decode_pieces(seg, pieces)
    return completes


def _completes(index: int) -> int:
    return index


def _scale_table(header: bytes) -> dict[str, list[str]] | None:
    """The int8 scale table of one variant file's safetensors header, or None
    (int8_scale_table). The header was signed, but a signer's mistake must still
    end in a typed error, not in a crash."""
    try:
        meta = json.loads(header)["__metadata__"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    return int8_scale_table(meta)


def _prefer_list(prefer: Sequence[str]) -> list[str]:
    """``prefer`` as a list, every entry checked up front: a misspelt fallback is
    refused now, not on the day the forms before it are missing. A string is
    refused whole ("int8" would iterate as "i", "n", ...), and an iterator is
    read once, so that an error can still name what was asked."""
    if isinstance(prefer, str | bytes):
        raise ValueError(f"prefer must be a list of forms, e.g. [{prefer!r}]")
    forms = list(prefer)
    known = (*VARIANTS, "exact")
    unknown = [c for c in forms if c not in known]
    if unknown:
        raise ValueError(
            f"unknown variant{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))} (the forms are {', '.join(known)})"
        )
    return forms


def _dequantize(
    arrays: dict[str, np.ndarray], scales: dict[str, list[str]]
) -> dict[str, np.ndarray]:
    """int8 values times their per-row and per-column scales, as float32."""
    out = {}
    used = {name for pair in scales.values() for name in pair}
    if used & scales.keys():
        raise TensorError("tensor.invalid", "an int8 tensor is named as another's scale")
    for name, arr in arrays.items():
        if name in used:
            continue
        pair = scales.get(name)
        if pair is None:
            out[name] = arr
            continue
        if not all(p in arrays for p in pair):
            raise TensorError("tensor.invalid", f"{name}: its int8 scale tensors are missing")
        rows, cols = arrays[pair[0]], arrays[pair[1]]
        if (
            arr.dtype != np.int8
            or arr.ndim < 1
            or rows.dtype != np.float32
            or cols.dtype != np.float32
            or rows.shape != (arr.shape[0],)
            or cols.shape != (arr.size // arr.shape[0] if arr.shape[0] else 0,)
            or cols.size * rows.size != arr.size
        ):
            raise TensorError("tensor.invalid", f"{name}: int8 scales do not fit the tensor")
        # A variant never turns a finite value into an infinity or a NaN (FORMAT
        # §15): a signer's non-finite scales, or products past float32's range,
        # must not be served as weights.
        if not (np.isfinite(rows).all() and np.isfinite(cols).all()):
            raise TensorError("tensor.invalid", f"{name}: int8 scales that are not all finite")
        # The column count from the checked scales: -1 cannot be inferred when empty.
        flat = arr.reshape(arr.shape[0], cols.size).astype(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            flat *= rows[:, None]
            flat *= cols[None, :]
        if not np.isfinite(flat).all():
            raise TensorError(
                "tensor.invalid", f"{name}: int8 values times their scales pass float32's range"
            )
        out[name] = flat.reshape(arr.shape)
    return out


def _to_torch(array: np.ndarray, dtype: str) -> Any:
    try:
        import torch
    except ModuleNotFoundError as exc:
        if exc.name != "torch":  # torch is there, but something it needs is not
            raise ValueError(f"framework='torch': importing torch failed: {exc}") from exc
        raise ValueError("framework='torch' needs torch to be installed") from None
    except ImportError as exc:  # a broken install (a missing shared library, say)
        raise ValueError(f"framework='torch': importing torch failed: {exc}") from exc
    if dtype in _ML_DTYPES:
        name, raw_dtype = _ML_DTYPES[dtype]
        raw = array.view(raw_dtype)
        target = getattr(torch, name, None)
        if target is None:
            raise ValueError(f"this torch has no dtype for {dtype}")
        # A view, not a copy: a bf16 model must not be held twice.
        return torch.from_numpy(raw).view(target)
    return torch.from_numpy(array)


def open_package(
    path: str | os.PathLike[str],
    *,
    identity: Any = None,
    policy: Policy | str | os.PathLike[str] | None = None,
    trust: Sequence[str | os.PathLike[str]] | None = None,
    expected_name: str | None = None,
    allow_downgrade: bool = False,
    threads: int = 0,
    passphrase: bytes | str | None = None,
) -> Package:
    """Open and trust a package for loading.

    ``identity``: X25519 private key(s), as paths or key objects, for encrypted
    components; ``passphrase`` unlocks identity files that are encrypted (the
    same one for each path given). Trust comes from ``policy`` (a :class:`Policy` or a TOML path),
    ``trust`` (public key paths), or ``$SECPACK_POLICY``; there is no default.

    Raises :class:`SecpackError` for anything unsigned, untrusted, expired, a
    downgrade, or malformed, before any tensor is decoded.
    """
    with _out_of_resources():
        pol = _as_policy(policy, trust)
        identities = _as_identities(identity, passphrase)
    with audited("load") as audit:
        audit["package"] = {"path": os.fspath(path)}
        src = FileSource(os.fspath(path))
        try:
            with _out_of_resources():
                pkg = Package(src, pol, identities, threads, expected_name, allow_downgrade)
        except BaseException:
            src.close()
            raise
        audit["package"].update(package_facts(pkg.name, pkg.version, pkg.manifest_digest))
        return pkg


def load(
    path: str | os.PathLike[str],
    *,
    component: str = "weights",
    framework: str = "numpy",
    prefer: Sequence[str] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Open, trust and return every tensor of ``component`` in one call."""
    with open_package(path, **kwargs) as pkg:
        return pkg.state_dict(component, framework, prefer)
