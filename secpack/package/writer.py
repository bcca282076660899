"""Executing a seal plan: read, code, encrypt and hash every segment on a thread
pool, and hand the stored bytes to a sink in blob order.

Memory stays bounded by the in-flight window (a few segments per worker),
never by the model size: results are consumed strictly in order, and no more
than ``window`` segments are ever read ahead.
"""

from __future__ import annotations

import functools
import hashlib
import mmap
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import x25519

from secpack.buffers import huge_block, scratch
from secpack.codec import segment as codec
from secpack.codec import zstd
from secpack.envelope import dek as envelope
from secpack.errors import InputError
from secpack.format import cbor
from secpack.format.manifest import (
    DIGEST_LEN,
    SALT_LEN,
    TAG_LEN,
    Blob,
    Codec,
    Component,
    Encryption,
    Manifest,
    Plane,
    Recipient,
    Segment,
)
from secpack.package.parallel import BATCH_BYTES, ordered_batched
from secpack.package.plan import InputTree, Plan, PlannedComponent, PlannedSegment
from secpack.workers import worker_threads

__all__ = ["SealSettings", "placeholder_manifest", "write_blobs"]


@dataclass(frozen=True)
class SealSettings:
    name: str
    version: int
    created: int
    expires: int | None
    metadata: Mapping[str, str]
    # component name -> recipients; an empty mapping means sign-and-compress only.
    recipients: Mapping[str, Sequence[x25519.X25519PublicKey]] = field(default_factory=dict)
    level: int = codec.LEVELS["balanced"]
    threads: int = 0  # 0: see secpack.workers.worker_threads

    @property
    def encrypt(self) -> bool:
        return bool(self.recipients)


@dataclass
class _Result:
    stored: bytes | memoryview
    segment: Segment
    buffer: bytearray | mmap.mmap | None = None  # the pool buffer under ``stored``


class _BufferPool:
    """Buffers for encrypted segments of BATCH_BYTES or more, reused once written
    and hashed (smaller ones are batched, and get buffers of their own size).

    A fresh buffer per segment costs a page fault per 4 KiB on first write (about
    0.65 ms per MiB here, in the kernel, under the address-space lock that every
    worker's faults queue on). At most the in-flight window of segments and the
    hasher's queue hold buffers, so the pool never grows past those two windows.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[bytearray | mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> bytearray | mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        return huge_block(self.size) or bytearray(self.size)

    def give(self, buf: bytearray | mmap.mmap | None) -> None:
        if buf is not None:
            with self._lock:
                self._free.append(buf)


def _seal_one(
    tree: InputTree,
    comp: str,
    seg: PlannedSegment,
    dek: bytes | None,
    level: int,
    pool: _BufferPool,
) -> _Result:
    # One read buffer per worker thread, sized once for the largest segment.
    plain = scratch("writer.plain", seg.length, pool.size)
    if seg.members:  # a file run: its files back to back
        pos = 0
        for path, size in seg.members:
            if tree.read_into(path, 0, plain[pos : pos + size]) != size:
                raise InputError("input.changed", f"{path} changed while it was being sealed")
            pos += size
    elif tree.read_into(seg.path, seg.offset, plain) != seg.length:
        raise InputError("input.changed", f"{seg.path} changed while it was being sealed")
    enc = codec.encode(
        plain,
        seg.width,
        seg.grouped,
        level,
        seg.dtype,
        seg.period,
        guessed=seg.guessed,
        wide=bool(seg.members),
    )
    salt, buf = None, None
    if dek is None:
        stored: bytes | memoryview = enc.payload
    else:
        salt = envelope.new_salt()
        aad = envelope.segment_aad(comp, seg.unit, seg.length, enc.codec)
        if seg.length < BATCH_BYTES:
            # Batched with others (ordered_batched): a pool buffer each, sized for
            # the largest segment, would multiply the window's memory.
            stored = envelope.seal_segment(dek, salt, aad, enc.payload)
        else:
            buf = pool.take()
            stored = memoryview(buf)[: len(enc.payload) + TAG_LEN]
            envelope.seal_segment_into(dek, salt, aad, enc.payload, stored)
    digest = hashlib.sha256(stored).digest()
    segment = Segment(seg.blob, len(stored), seg.length, enc.codec, digest, salt)
    return _Result(stored, segment, buf)


def packed_contents(comp: PlannedComponent) -> tuple[bytes, int | None]:
    """The component's contents as stored, and their decompressed length when
    that is a zstd frame (FORMAT §4). A tensor table repeats its keys and name
    prefixes: zstd makes it a fifth to a seventh of its size, kilobytes on a
    small model, where that is a percent of the package."""
    contents = cbor.encode(comp.contents.to_cbor())
    # Level 19 where it matters and is cheap: a table of up to 64 KiB (some 600
    # tensors) in about 20 ms. Above, level 9: 14 ms for the 1 MB table of an
    # 8,000-tensor model (19 would take 370 ms, for 11 % less).
    packed = zstd.compress(contents, 19 if len(contents) <= 64 << 10 else 9)
    # The "contents_codec" record costs about 30 bytes of manifest.
    if len(packed) + 32 < len(contents):
        return packed, len(contents)
    return contents, None


def _encryption(
    comp: PlannedComponent, settings: SealSettings
) -> tuple[bytes | None, Encryption | None, bytes, int | None]:
    """Return (DEK, encryption record, stored contents, their decompressed length
    when compressed) for one component."""
    contents, size = packed_contents(comp)
    if not settings.encrypt:
        return None, None, contents, size
    recipients = settings.recipients.get(comp.name, ())
    if not recipients:
        raise InputError("input.invalid", f"component {comp.name!r} has no recipient")
    dek = envelope.new_dek()
    salt = envelope.new_salt()
    record = envelope.encryption_record(dek, salt, recipients, comp.name)
    return dek, record, envelope.seal_contents(dek, salt, comp.name, contents), size


def write_blobs(
    tree: InputTree,
    plan: Plan,
    settings: SealSettings,
    sink: Callable[[bytes | memoryview], None],
    progress: Callable[[int], None] | None = None,
) -> Manifest:
    """Seal every segment of ``plan`` into ``sink`` (in blob order); return the manifest."""
    largest = max((s.length for c in plan.components for s in c.segments), default=0)
    # Each worker keeps a zstd context of the profile's level: at max, 81 MiB.
    threads = worker_threads(settings.threads, largest, zstd.context_bytes(settings.level))
    window = 2 * threads + 2
    # A stored segment is at most its plaintext (every codec falls back to raw)
    # plus the GCM tag.
    buffers = _BufferPool(largest + TAG_LEN)
    components: list[Component] = []
    # Blob digests are computed on a thread of their own, in blob order, so that the
    # main thread only collects results and writes them: hashing every stored byte
    # a second time on the main thread made it the pipeline's bottleneck.
    blob_digests: list[Future[bytes]] = []
    blob_sizes: list[int] = []
    hashing: deque[tuple[Future[None], bytearray | mmap.mmap | None]] = deque()
    blob_hash = hashlib.sha256()
    blob_size = 0

    def close_blob() -> None:
        nonlocal blob_hash, blob_size
        if blob_size:
            blob_digests.append(hasher.submit(blob_hash.digest))
            blob_sizes.append(blob_size)
        blob_hash, blob_size = hashlib.sha256(), 0

    with (
        ThreadPoolExecutor(max_workers=threads, thread_name_prefix="secpack-seal") as pool,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="secpack-blobhash") as hasher,
    ):
        for comp in plan.components:
            dek, encryption, contents, contents_size = _encryption(comp, settings)
            done: list[Segment] = []
            current = -1
            jobs = (
                (
                    seg.length,
                    functools.partial(
                        _seal_one, tree, comp.name, seg, dek, settings.level, buffers
                    ),
                )
                for seg in comp.segments
            )
            for result in ordered_batched(pool, jobs, window):
                if result.segment.blob != current:
                    close_blob()
                    current = result.segment.blob
                    if current != len(blob_sizes):
                        raise AssertionError("plan produced blobs out of order")
                # Bounded: at most `window` segments wait for the hasher; a hashed
                # segment is written too, so its buffer can be used again, and goes
                # back at once: a buffer held until the queue filled up made a
                # small model take a fresh one for nearly every segment.
                while hashing and (len(hashing) >= window or hashing[0][0].done()):
                    hashed, buf = hashing.popleft()
                    hashed.result()
                    buffers.give(buf)
                hashing.append((hasher.submit(blob_hash.update, result.stored), result.buffer))
                blob_size += len(result.stored)
                sink(result.stored)
                done.append(result.segment)
                if progress:
                    progress(result.segment.plain)
            close_blob()
            components.append(
                Component(
                    comp.name,
                    comp.kind,
                    comp.media_type,
                    comp.size,
                    contents,
                    tuple(done),
                    encryption,
                    contents_size,
                )
            )
        blobs = [Blob(d.result(), size) for d, size in zip(blob_digests, blob_sizes, strict=True)]
    return Manifest(
        settings.name,
        settings.version,
        settings.created,
        settings.expires,
        dict(settings.metadata),
        tuple(components),
        tuple(blobs),
    )


def _largest_codec(s: PlannedSegment) -> Codec:
    """A codec record at least as long, once encoded, as any the writer may choose
    for segment ``s``: every count and size at its largest."""
    return _largest_codec_for(s.grouped, s.width, s.length, s.dtype)


# Keyed by what the record depends on: most segments of a model share a length
# (the segment size, or one tensor shape repeated per layer), and encoding two
# candidate records per segment was most of the placeholder's time (0.1 ms each:
# 0.2 s for 2,000 small tensors).
@functools.lru_cache(maxsize=4096)
def _largest_codec_for(grouped: bool, width: int, length: int, dtype: str) -> Codec:
    if not (grouped and width > 1):
        # (A segment of 1-3 equal bytes, as a probed file's lead or tail can be, is
        # coded const, 2 bytes longer than this. The whole manifest's estimate has
        # the slack of every other record; were it ever short, the seal moves the
        # blobs instead, which costs time only. Changing it would move the header
        # room of every package, the golden vector's included.)
        return Codec("zstd", size=length)
    n = length // width
    bg = Codec("bg", width=width, rot=1, planes=(Plane("zstd", n),) * width)
    kind = codec.BGX_DTYPES.get(dtype)
    if kind is None:
        return bg
    # H, L (+ B1, B0 for 4-byte floats), X and O, each as large as a segment.
    count = 2 + (2 if width == 4 else 0) + 2
    bgx = Codec(
        "bgx",
        float=kind,
        lo=255,
        span=31,
        escapes=n,
        period=n,
        planes=(Plane("zstd", length),) * count,
    )
    return max(bg, bgx, key=lambda c: len(cbor.encode(c.to_cbor())))


def placeholder_manifest(plan: Plan, settings: SealSettings) -> Manifest:
    """A manifest at least as large, once encoded, as the one the seal will produce:
    every size field takes its largest possible value. Writers use it to reserve
    room for the header before the blobs are known."""
    components = []
    blob_sizes = [0] * plan.blob_count
    for comp in plan.components:
        contents_len = len(cbor.encode(comp.contents.to_cbor())) + (
            TAG_LEN if settings.encrypt else 0
        )
        encryption = None
        if settings.encrypt:
            count = len(settings.recipients.get(comp.name, ()))
            encryption = Encryption(
                "A256GCM",
                bytes(DIGEST_LEN),
                bytes(SALT_LEN),
                tuple(
                    Recipient("hpke-x25519", bytes(32), bytes(32), bytes(48)) for _ in range(count)
                ),
            )
        segs = []
        for s in comp.segments:
            codec_max = _largest_codec(s)
            stored = s.length + (TAG_LEN if settings.encrypt else 0)
            blob_sizes[s.blob] += stored
            segs.append(
                Segment(
                    s.blob,
                    stored,
                    s.length,
                    codec_max,
                    bytes(DIGEST_LEN),
                    bytes(SALT_LEN) if settings.encrypt else None,
                )
            )
        components.append(
            Component(
                comp.name,
                comp.kind,
                comp.media_type,
                comp.size,
                bytes(contents_len),
                tuple(segs),
                encryption,
                # Room for a "contents_codec" record of the largest size; compressed
                # contents are only used when smaller, with the record, than these.
                (1 << 64) - 1,
            )
        )
    return Manifest(
        settings.name,
        settings.version,
        settings.created,
        settings.expires,
        dict(settings.metadata),
        tuple(components),
        tuple(Blob(bytes(DIGEST_LEN), size) for size in blob_sizes),
    )
