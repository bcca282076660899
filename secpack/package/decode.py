"""Steps 8-11 for one component of a package whose header is already trusted:
unwrap the data key, decrypt and validate the contents, then read, check,
decrypt and decode segments on demand into exactly sized buffers.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric import x25519

from secpack.buffers import scratch
from secpack.envelope import dek as envelope
from secpack.errors import CborError, SchemaError
from secpack.format import cbor
from secpack.format.contents import Contents, Unit, parse_contents
from secpack.format.limits import Limits
from secpack.format.manifest import TAG_LEN
from secpack.package.reader import ByteSource, Header, read_segment_into

__all__ = ["OpenComponent"]


class OpenComponent:
    """One component, ready to decode segments. Safe to share between threads."""

    def __init__(
        self,
        src: ByteSource,
        header: Header,
        index: int,
        identities: Sequence[x25519.X25519PrivateKey],
        limits: Limits,
    ) -> None:
        self.src = src
        self.header = header
        self.index = index
        self.limits = limits
        self.component = header.manifest.components[index]
        comp = self.component
        self.dek: bytes | None = None
        raw = comp.contents
        if comp.encryption is not None:
            self.dek = envelope.unwrap_dek(comp.encryption, identities, comp.name)
            raw = envelope.open_contents(self.dek, comp.encryption.contents_salt, comp.name, raw)
        try:
            obj = cbor.decode(
                raw,
                max_bytes=limits.max_manifest_bytes,
                max_depth=limits.max_cbor_depth,
                max_items=limits.max_cbor_items,
            )
        except CborError as exc:
            # Signed (and, if encrypted, authenticated) yet malformed: a broken writer.
            raise SchemaError("schema.invalid", f"{comp.name} contents: {exc.detail}") from None
        self.contents: Contents = parse_contents(obj, [s.plain for s in comp.segments], limits)
        self.units: list[Unit] = self.contents.units()
        self._largest = max((s.stored for s in comp.segments), default=0)

    def decode_into(self, seg: int, out: memoryview) -> None:
        """Read, digest-check, decrypt and decode segment ``seg`` into ``out``."""
        segment = self.component.segments[seg]
        if len(out) != segment.plain:
            raise ValueError("output buffer has the wrong size")
        # Imported here: numpy and zstandard are only needed once something decodes,
        # which keeps `secpack verify` (contents checks included) light to start.
        from secpack.codec import segment as codec

        # Per-thread buffers, each grown once to the component's largest segment.
        stored = scratch("decode.stored", segment.stored, self._largest)
        read_segment_into(self.src, self.header, self.index, seg, stored)
        payload: memoryview = stored
        if self.dek is not None and segment.salt is not None:
            aad = envelope.segment_aad(
                self.component.name, self.units[seg], segment.plain, segment.codec
            )
            size = segment.stored - TAG_LEN
            if segment.codec.id == "raw" and size == len(out):
                # Stored as is: decrypt straight into the caller's buffer.
                envelope.open_segment_into(self.dek, segment.salt, aad, stored, out)
                return
            payload = scratch("decode.payload", size, self._largest)
            envelope.open_segment_into(self.dek, segment.salt, aad, stored, payload)
        codec.decode(segment.codec, payload, out, self.limits.max_zstd_window)

    def decode(self, seg: int) -> bytearray:
        out = bytearray(self.component.segments[seg].plain)
        self.decode_into(seg, memoryview(out))
        return out
