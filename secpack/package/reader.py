"""Reading a package in the order docs/FORMAT.md ("Reading order") fixes:
framing, bounded header, strict CBOR, schema, signatures against the policy,
freshness, and only then the digests of the segments being read.

Nothing here decrypts or decodes; see :mod:`secpack.package.decode`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from secpack.buffers import own_scratch, scratch
from secpack.errors import FreshnessError, IntegrityError, PolicyError, SecpackError
from secpack.format import cbor, container
from secpack.format.limits import Limits
from secpack.format.manifest import Manifest, parse_manifest
from secpack.format.sections import (
    SignatureEntry,
    check_index,
    parse_signature_section,
)
from secpack.package.parallel import ordered_batched, worker_pool
from secpack.sign.policy import Policy, Signer, evaluate_signatures
from secpack.workers import worker_threads

__all__ = [
    "ByteSource",
    "Header",
    "check_trust",
    "decode_manifest",
    "largest_segment",
    "read_header",
    "read_segment",
    "read_segment_into",
    "select_components",
    "verify_segments",
]


class ByteSource(Protocol):
    @property
    def size(self) -> int: ...

    def read_at(self, offset: int, length: int) -> bytes: ...


@dataclass(frozen=True)
class Header:
    """Everything before the blobs, parsed and validated but not yet trusted."""

    layout: container.Layout
    manifest_bytes: bytes
    manifest: Manifest
    signatures: tuple[SignatureEntry, ...]
    signature_section: bytes

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.manifest_bytes).digest()

    def segment_offset(self, comp: int, seg: int) -> int:
        """Absolute file offset of one segment (derived, never read from the file)."""
        segment = self.manifest.components[comp].segments[seg]
        return (
            self.layout.blobs_off
            + self._blob_offsets[segment.blob]
            + self.manifest.segment_offsets[comp][seg]
        )

    @property
    def _blob_offsets(self) -> list[int]:
        cached: list[int] | None = self.__dict__.get("_blob_offsets_cache")
        if cached is None:
            cached, pos = [], 0
            for blob in self.manifest.blobs:
                cached.append(pos)
                pos += blob.size
            object.__setattr__(self, "_blob_offsets_cache", cached)
        return cached


def decode_manifest(manifest_bytes: bytes, limits: Limits) -> Manifest:
    """Steps 3-4: strict CBOR within ``limits``, then the schema."""
    obj = cbor.decode(
        manifest_bytes,
        max_bytes=limits.max_manifest_bytes,
        max_depth=limits.max_cbor_depth,
        max_items=limits.max_cbor_items,
    )
    return parse_manifest(obj, limits)


def read_header(src: ByteSource, limits: Limits) -> Header:
    """Steps 1-4: framing, bounded header, strict CBOR, schema."""
    head = src.read_at(0, min(container.PREAMBLE_LEN, src.size))
    layout = container.parse_preamble(head, src.size, limits)
    sig_head = src.read_at(layout.sigs_off, container.SIG_HEADER_LEN)
    s_len = container.parse_sig_header(sig_head, layout, limits)
    manifest_bytes = src.read_at(layout.manifest_off, layout.manifest_len)
    manifest = decode_manifest(manifest_bytes, limits)
    check_index(src.read_at(layout.index_off, layout.index_len), manifest, layout.blobs_len, limits)
    section = src.read_at(layout.sigs_off + container.SIG_HEADER_LEN, s_len)
    entries = parse_signature_section(section, limits)
    return Header(layout, manifest_bytes, manifest, tuple(entries), section)


def check_trust(
    header: Header, policy: Policy, now: int, expected_name: str | None = None
) -> list[Signer]:
    """Steps 5-6: signatures against the policy, then freshness and requirements."""
    signers = evaluate_signatures(
        header.manifest_bytes, header.signatures, policy, header.manifest.name
    )
    m = header.manifest
    if expected_name is not None and m.name != expected_name:
        raise PolicyError("policy.name", f"package is {m.name!r}, expected {expected_name!r}")
    if m.expires is not None and now >= m.expires:
        raise FreshnessError("fresh.expired", f"package expired at {m.expires} (now {now})")
    if m.created > now + policy.max_clock_skew:
        raise FreshnessError("fresh.future", f"created {m.created - now} s in the future")
    if policy.max_age is not None and now - m.created > policy.max_age:
        raise FreshnessError("fresh.max-age", f"created {now - m.created} s ago")
    if policy.require_expires and m.expires is None:
        raise PolicyError("policy.unmet", "the policy requires packages to carry an expiry")
    names = {c.name for c in m.components}
    missing = [c for c in policy.required_components if c not in names]
    if missing:
        raise PolicyError("policy.unmet", f"required component(s) missing: {missing}")
    return signers


def read_segment(src: ByteSource, header: Header, comp: int, seg: int) -> bytes:
    """Step 7 for one segment: its stored bytes, digest-checked."""
    segment = header.manifest.components[comp].segments[seg]
    offset = header.segment_offset(comp, seg)
    data = src.read_at(offset, segment.stored)
    if hashlib.sha256(data).digest() != segment.digest:
        raise _altered(header, comp, seg, offset)
    return data


def _altered(header: Header, comp: int, seg: int, offset: int) -> IntegrityError:
    # Where, so that a damaged copy can be compared with a good one: the component,
    # the segment and its bytes in the package (not a file's name, which an
    # encrypted component's contents would have to be decrypted for).
    segment = header.manifest.components[comp].segments[seg]
    return IntegrityError(
        f"segment digest does not match the manifest: segment {seg} of component "
        f"{header.manifest.components[comp].name!r}, bytes {offset}-"
        f"{offset + segment.stored - 1} of the package"
    )


def read_segment_into(
    src: ByteSource, header: Header, comp: int, seg: int, out: memoryview
) -> None:
    """``read_segment`` into ``out`` (exactly the stored length), for sources that
    can read into a buffer; others are read and copied."""
    segment = header.manifest.components[comp].segments[seg]
    if len(out) != segment.stored:
        raise ValueError("output buffer has the wrong size")
    offset = header.segment_offset(comp, seg)
    read_into = getattr(src, "read_into", None)
    if read_into is not None:
        read_into(offset, out)
    else:
        out[:] = src.read_at(offset, segment.stored)
    if hashlib.sha256(out).digest() != segment.digest:
        raise _altered(header, comp, seg, offset)


def largest_segment(manifest: Manifest) -> int:
    """The largest segment's plaintext size, which sizes the workers' buffers."""
    return max((s.plain for c in manifest.components for s in c.segments), default=0)


def verify_segments(
    src: ByteSource,
    header: Header,
    components: Sequence[int] | None = None,
    threads: int = 0,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Check the digest of every stored segment (of the given components)."""
    indices = range(len(header.manifest.components)) if components is None else components
    threads = worker_threads(threads, largest_segment(header.manifest))

    def check(c: int, s: int) -> int:
        size = header.manifest.components[c].segments[s].stored
        with own_scratch():  # a verify nested on this thread reads into its own
            read_segment_into(src, header, c, s, scratch("verify.stored", size))
        return size

    jobs = [
        (seg.stored, functools.partial(check, c, s))
        for c in indices
        for s, seg in enumerate(header.manifest.components[c].segments)
    ]
    with worker_pool(threads, "secpack-verify") as pool:
        for size in ordered_batched(pool, jobs, 2 * threads + 2):
            if progress:
                progress(size)


def select_components(manifest: Manifest, names: Sequence[str] | None) -> list[int]:
    """Indices of the named components (all when ``names`` is empty), in package order."""
    comps = manifest.components
    if not names:
        return list(range(len(comps)))
    index = {c.name: i for i, c in enumerate(comps)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise SecpackError(
            "component.unknown",
            f"no component {', '.join(map(repr, unknown))} (have {', '.join(index)})",
        )
    return sorted({index[n] for n in names})
