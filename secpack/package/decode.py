"""Steps 8-11 for one component of a package whose header is already trusted:
unwrap the data key, decrypt and validate the contents, then read, check,
decrypt and decode segments on demand into exactly sized buffers.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric import x25519

from secpack.buffers import own_scratch, scratch
from secpack.envelope import dek as envelope
from secpack.errors import CborError, InputError, SchemaError, TensorError
from secpack.format import cbor
from secpack.format.contents import Contents, FileEntry, TensorRecord, Unit, parse_contents
from secpack.format.limits import DEFAULT_LIMITS, Limits
from secpack.format.manifest import TAG_LEN
from secpack.package.reader import ByteSource, Header, read_segment_into
from secpack.tensors import safetensors

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
        if comp.contents_size is not None:
            # Signed and, when encrypted, authenticated: now it may be decompressed,
            # as one frame of exactly the signed size under the window cap.
            from secpack.codec import zstd

            raw = zstd.decompress(raw, comp.contents_size, limits.max_zstd_window)
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
        # By path and by name, for reads of one file or tensor: a scan of the
        # table made reading each of 100 000 files quadratic. (Both are unique:
        # parse_contents refuses paths that collide and names that repeat.)
        self.file_at: dict[str, int] = {f.path: i for i, f in enumerate(self.contents.files)}
        self.tensor_named: dict[str, TensorRecord] = {t.name: t for t in self.contents.tensors}
        # Files whose stored safetensors header has been checked against the table.
        self._checked: set[int] = set()
        # Re-entrant: a read nested on the same thread (a signal handler's) may need
        # the file that the read it interrupted is checking (see buffers.own_scratch).
        self._check_lock = threading.RLock()
        self._largest = max((s.stored for s in comp.segments), default=0)
        # The run segments' largest: what the "decode.run" scratch grows to.
        self._largest_run = max(
            (comp.segments[t.first].plain for t in self.contents.tensors if t.run), default=0
        )

    def after_fork(self) -> None:
        """Fresh lock in a forked child (another thread may have held it at the fork)."""
        self._check_lock = threading.RLock()

    def decode_into(self, seg: int, out: memoryview) -> None:
        """Read, digest-check, decrypt and decode segment ``seg`` into ``out``."""
        with own_scratch():
            self._decode_into(seg, out)

    def _decode_into(self, seg: int, out: memoryview) -> None:
        segment = self.component.segments[seg]
        if len(out) != segment.plain:
            raise ValueError("output buffer has the wrong size")
        # Imported here: zstandard is only needed once something decodes, and numpy
        # only for float layouts, which keeps `secpack verify` light to start (its
        # checks of plain contents decode zstd tables only).
        from secpack.codec.plain import decode_plain

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
        if not decode_plain(segment.codec, payload, out, self.limits.max_zstd_window):
            from secpack.codec import segment as codec

            codec.decode(segment.codec, payload, out, self.limits.max_zstd_window)

    def decode_pieces(self, seg: int, pieces: Sequence[tuple[int, memoryview]]) -> None:
        """Decode segment ``seg`` and copy its plaintext from byte ``skip`` on into
        each ``(skip, out)`` piece: the tensors of a run (FORMAT §5) that share it.
        A piece that is the whole segment is decoded straight into."""
        plain = self.component.segments[seg].plain
        if len(pieces) == 1 and pieces[0][0] == 0 and len(pieces[0][1]) == plain:
            self.decode_into(seg, pieces[0][1])
            return
        for skip, out in pieces:
            if skip + len(out) > plain:
                raise ValueError("a piece reaches past its segment")
        with own_scratch():
            # Its own name: the decode uses the other scratch buffers meanwhile.
            whole = scratch("decode.run", plain, self._largest_run)
            self._decode_into(seg, whole)
            for skip, out in pieces:
                out[:] = whole[skip : skip + len(out)]

    def check_headers(self) -> None:
        """:meth:`check_file` for every file of the component."""
        for index in range(len(self.contents.files)):
            self.check_file(index)

    def check_file(self, index: int) -> None:
        """Refuse (``tensor.invalid``) file ``index`` when it is a safetensors file
        whose stored header does not describe exactly its records in the tensor
        table: the same names, dtypes, shapes, offsets and lengths (docs/FORMAT.md
        §5). The loader and ``inspect`` serve the table, ``open`` writes the header:
        were they allowed to differ, the model one reviewed would not be the model
        one deployed. Each file is checked once (its header unit is decoded: a
        segment or two)."""
        entry = self.contents.files[index]
        if entry.format != "safetensors" or index in self._checked:
            return
        with self._check_lock:
            if index in self._checked:
                return
            self._check_file(index)
            self._checked.add(index)

    def _check_file(self, index: int) -> None:
        entry = self.contents.files[index]
        segments = self.component.segments
        prefix = safetensors.PREFIX_LEN
        # What a header may hold: the writer's own cap (a policy can raise it, not
        # lower it: the limit is one on seal's inputs, and tightening it must not
        # make packages already written unreadable). Checked before anything is
        # allocated: a signed table could declare a header of terabytes, made of
        # a few const segments.
        cap = max(self.limits.max_safetensors_header, DEFAULT_LIMITS.max_safetensors_header)
        if not prefix + 2 <= entry.header <= prefix + cap:
            raise TensorError(
                "tensor.invalid",
                f"{entry.path}: a safetensors header of {entry.header} bytes "
                f"(at most {prefix + cap})",
            )
        # The header unit: the file's first segments, which parse_contents has
        # checked add up to exactly entry.header bytes. The first one holds the
        # 8-byte length, which must agree before the rest is decoded.
        raw = bytearray(entry.header)
        pos, seg = 0, entry.first
        while pos < entry.header:
            size = segments[seg].plain
            self.decode_into(seg, memoryview(raw)[pos : pos + size])
            if pos < prefix <= pos + size:  # the segment that completes the length
                self._check_prefix(entry, bytes(raw[:prefix]), cap)
            pos, seg = pos + size, seg + 1
        try:
            # Lone surrogates in __metadata__, refused in seal's inputs since, are
            # let through here: packages sealed before that rule stay readable,
            # and names that hold one cannot match the table's anyway.
            layout = safetensors.parse_header(
                bytes(raw[prefix:]), entry.size, self.limits.max_tensor_ndim, strict_text=False
            )
        except InputError as exc:
            raise TensorError(
                "tensor.invalid", f"{entry.path}: stored header: {exc.detail}"
            ) from None
        stored = sorted(
            (e.name, e.dtype, e.shape, layout.header_len + e.begin, e.end - e.begin)
            for e in layout.tensors
        )
        listed = sorted(
            (t.name, t.dtype, t.shape, t.offset, t.length)
            for t in self.contents.tensors
            if t.file == index
        )
        if stored != listed:
            raise TensorError(
                "tensor.invalid",
                f"{entry.path}: its stored header and the tensor table describe different tensors",
            )

    @staticmethod
    def _check_prefix(entry: FileEntry, head: bytes, cap: int) -> None:
        prefix = safetensors.PREFIX_LEN
        try:
            n = safetensors.parse_prefix(head, entry.size, cap)
        except InputError as exc:
            raise TensorError(
                "tensor.invalid", f"{entry.path}: stored header: {exc.detail}"
            ) from None
        if prefix + n != entry.header:
            raise TensorError(
                "tensor.invalid",
                f"{entry.path}: its stored header declares {n} bytes of JSON, "
                f"the contents table {entry.header - prefix}",
            )

    def decode(self, seg: int) -> bytearray:
        out = bytearray(self.component.segments[seg].plain)
        self.decode_into(seg, memoryview(out))
        return out
