"""Fuzz targets for the reader entry points. Only SecpackError may escape them;
anything else (or a hang, or runaway memory) is a finding.

- ``header``: framing, bounded header, strict CBOR, schema and the blob index.
- ``manifest``: strict CBOR and the manifest schema on raw bytes, plus the
  contents schema of every unencrypted component.
- ``cbor``: the strict CBOR scan, differentially: the C scan and the Python one
  must give the same verdict, code and message (one byte picks the limits).
- ``bgx``: the bgx decoder on arbitrary planes and records (behind the schema's
  size rules), differentially: where the C helper decodes, the numpy decoder
  must give the same bytes, and where one refuses, so must the other.
- ``ans``: the ans plane decoder on arbitrary planes, differentially (C helper
  against the plain-Python decoder: same symbols or both refuse, output zeroed),
  and every plane that decodes must be exactly what the encoder writes for those
  symbols with that table.
- ``ans32``: the same for ans32 planes, with the C helper's AVX2 loop (where the
  CPU has AVX2) and its plain loop both against Python.
- ``open``: a whole package through the loader with the public test keys. The
  input's manifest is re-signed with the test signing key before loading, so
  mutations are not all stopped by the signature and the checks behind it
  (blob layout, digests, AEAD, contents, codecs, tensors) get fuzzed too.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ROOT / "keys-example"
sys.path.insert(0, str(ROOT))

import contextlib
import dataclasses

# Everything the targets reach is imported here, at the top: atheris instruments the
# modules imported while this file loads, and nothing imported later.
import secpack.api.loader
import secpack.codec.ans
import secpack.codec.bgx
import secpack.codec.planes
import secpack.codec.segment
import secpack.codec.zstd
import secpack.envelope.dek
import secpack.format.contents
import secpack.format.manifest
import secpack.format.sections
import secpack.package.decode
import secpack.package.reader
import secpack.sign.cose
import secpack.sign.policy
import secpack.tensors.safetensors
from secpack.errors import SecpackError
from secpack.format import cbor
from secpack.format.limits import DEFAULT_LIMITS

__all__ = ["TARGETS", "BytesSource"]


class BytesSource:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        self.bytes_read = 0

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise SecpackError("container.framing", "read beyond the end")
        self.bytes_read += length
        return self.data[offset : offset + length]


def target_header(data: bytes) -> None:
    from secpack.package.reader import read_header

    with contextlib.suppress(SecpackError):
        read_header(BytesSource(data), DEFAULT_LIMITS)


def target_manifest(data: bytes) -> None:
    from secpack.format.contents import parse_contents
    from secpack.package.reader import decode_manifest

    limits = DEFAULT_LIMITS
    try:
        manifest = decode_manifest(data, limits)
        for comp in manifest.components:
            if comp.encryption is None:
                contents = cbor.decode(
                    comp.contents,
                    max_bytes=limits.max_manifest_bytes,
                    max_depth=limits.max_cbor_depth,
                    max_items=limits.max_cbor_items,
                )
                parse_contents(contents, [s.plain for s in comp.segments], limits).units()
    except SecpackError:
        pass


# (max_depth, max_items, text_keys, max_map_entries) for the cbor target: the
# reader's own, and tight ones that put every limit within a fuzzer's reach.
_CBOR_LIMITS = [
    (
        DEFAULT_LIMITS.max_cbor_depth,
        DEFAULT_LIMITS.max_cbor_items,
        True,
        cbor.DEFAULT_MAX_MAP_ENTRIES,
    ),
    (3, 40, False, 4),
    (1, 5, True, 1),
    (0, 1, False, 0),
]


def target_cbor(data: bytes) -> None:
    if not data or not cbor.NATIVE:
        return
    depth, items, text_keys, entries = _CBOR_LIMITS[data[0] % len(_CBOR_LIMITS)]
    kw = {"max_depth": depth, "max_items": items, "text_keys": text_keys}
    verdicts = []
    for scan in (cbor._scan, cbor._scan_py):
        try:
            verdicts.append(("ok", str(scan(data[1:], **kw, max_map_entries=entries))))
        except SecpackError as exc:
            verdicts.append((exc.code, exc.detail))
    if verdicts[0] != verdicts[1]:
        raise AssertionError(f"the C and Python scans disagree: {verdicts}")


_STATE = {"key": None, "identity": None, "policy": None, "tmp": None}


def _setup() -> None:
    if _STATE["key"] is not None:
        return
    from secpack.api.keyfiles import load_identity, load_signing_key
    from secpack.sign.policy import Policy, policy_from_keys

    tmp = tempfile.mkdtemp(prefix="secpack-fuzz-")
    trusted = policy_from_keys([("k", (KEYS / "signing-ed25519.key.pub").read_bytes())])
    _STATE.update(
        key=load_signing_key(str(KEYS / "signing-ed25519.key")),
        identity=load_identity(str(KEYS / "recipient-x25519.key")),
        # No rollback state: every input is a fresh package.
        policy=Policy(keys=trusted.keys, rollback=False),
        tmp=tmp,
    )


def resign(data: bytes) -> bytes:
    """Replace the signature section by a fresh test-key signature over the manifest
    bytes the preamble points at (if the preamble can be read at all)."""
    from secpack.format.container import PREAMBLE_LEN
    from secpack.format.sections import SIG_TYPE_COSE_SIGN1, SignatureEntry
    from secpack.package.assemble import signature_tail
    from secpack.sign.cose import sign_manifest

    if len(data) < PREAMBLE_LEN:
        return data
    m_len, i_len, b_len = struct.unpack(">IIQ", data[12:28])
    sigs_off = PREAMBLE_LEN + m_len + i_len + b_len
    if sigs_off > len(data) or m_len > (1 << 24):
        return data
    manifest = data[PREAMBLE_LEN : PREAMBLE_LEN + m_len]
    entry = SignatureEntry(SIG_TYPE_COSE_SIGN1, sign_manifest(_STATE["key"], manifest))  # type: ignore[arg-type]
    return data[:sigs_off] + signature_tail([entry])


def target_open(data: bytes) -> None:
    _setup()
    from secpack.api.loader import Package

    path = os.path.join(str(_STATE["tmp"]), "input.spk")
    with open(path, "wb") as fh:
        fh.write(resign(data))
    from secpack.transport.spkfile import FileSource

    try:
        src = FileSource(path)
        try:
            pkg = Package(src, _STATE["policy"], [_STATE["identity"]], 1, None, False)  # type: ignore[arg-type, list-item]
            for comp in pkg.manifest.components:
                try:
                    for entry in pkg.files(comp.name):
                        pkg.read_file(comp.name, entry.path)
                    if comp.kind in ("weights", "adapter"):
                        pkg.state_dict(comp.name)
                except SecpackError:
                    continue
        finally:
            src.close()
    except SecpackError:
        pass


def bgx_case(data: bytes) -> tuple[secpack.format.manifest.Codec, bytes, int] | None:
    """A bgx record and raw payload from fuzz bytes: 6 header bytes (float layout,
    lo, span, flags, period, element count), then the planes' bytes. Unless flag
    bit 0 is set, the planes are first mapped onto values a writer could produce
    (mostly), so that decoding gets past the first check; flag bit 1 makes the
    record's escape count disagree with H; flag bit 2 stores the 5-bit plane as p5;
    flag bit 3 stores H as ans (coded by the C helper, then decoded by both)."""
    from secpack.format.manifest import (
        BGX_FLOATS,
        Codec,
        Plane,
        bgx_p5_planes,
        bgx_plane_sizes,
        p5_size,
    )

    if len(data) < 6:
        return None
    kind = list(BGX_FLOATS)[data[0] % 3]
    width, exp_bits = BGX_FLOATS[kind]
    n = 1 + data[5] % 64
    span = 1 + data[2] % 31
    lo = data[1] % ((1 << exp_bits) - span + 1)
    flags = data[3]
    period = data[4] % 9
    period = 0 if period == 1 else period
    body = bytearray(data[6:].ljust(2 * n + 2 * n + 2 * n + period, b"\0"))
    h = body[:n]
    if not flags & 1:
        h = bytearray(255 if v >= 240 else v % (8 * span) for v in h)
    escapes = h.count(255)
    if flags & 2:
        escapes = (escapes + 1) % (n + 1)
    codec = Codec("bgx", float=kind, lo=lo, span=span, escapes=escapes, period=period)
    sizes = bgx_plane_sizes(codec, n * width)
    rest = bytearray(body[n:].ljust(sum(sizes) - n, b"\0")[: sum(sizes) - n])
    if not flags & 1:
        x_at = sum(sizes[1 : -1 if period else None]) - 2 * escapes if escapes else None
        for i in range(len(rest)):
            if kind == "bf16" and i < n:
                rest[i] %= 32  # L
            if kind == "fp32" and 2 * n <= i < 3 * n:
                rest[i] %= 32  # B0
            if x_at is not None and x_at <= i < x_at + 2 * escapes and (i - x_at) % 2:
                rest[i] %= 1 << exp_bits >> 5 or 1  # X high byte: exponents in range
            if period and i >= len(rest) - period:
                rest[i] %= 1 << exp_bits  # O
    planes = [Plane("raw", size) for size in sizes]
    payload = bytes(h) + bytes(rest)
    if flags & 4 and bgx_p5_planes(kind):
        # Flag bit 2: the 5-bit plane stored packed ("p5"), from the same bytes.
        k = bgx_p5_planes(kind)[0]
        start = sum(sizes[:k])
        packed = payload[start : start + p5_size(sizes[k])]
        planes[k] = Plane("p5", len(packed))
        payload = payload[:start] + packed + payload[start + sizes[k] :]
    if flags & 8:
        # Flag bit 3: H stored "ans", coded from the same bytes with a table of its
        # own counts (the writer's minimum size does not apply here).
        from secpack.codec import ans
        from secpack.codec import planes as planes_mod

        if planes_mod.native_module() is not None:
            plane = ans.code(bytes(h))
            planes[0] = Plane("ans", len(plane))
            payload = plane + payload[n:]
    return dataclasses.replace(codec, planes=tuple(planes)), payload, n * width


def target_bgx(data: bytes) -> None:
    """Decode each case with the C helper's AVX2 loops (where the CPU has them),
    its baseline loops, and numpy: all must agree, bytes or refusal."""
    from secpack.codec import bgx, planes

    found = bgx_case(data)
    if found is None:
        return
    codec, payload, plain = found
    native = planes.native_module()
    if native is None:  # no C helper in this build: nothing to compare
        return
    saved, simd = planes._native, native.simd()
    results = []
    for module, avx2 in ((native, 1), (native, 0), (None, 0)):
        planes._native = module
        native.simd(avx2)
        out = bytearray(plain)
        try:
            bgx.decode(codec, memoryview(payload), memoryview(out), 1 << 20)
            results.append(bytes(out))
        except SecpackError as exc:
            if exc.code != "codec.invalid":
                raise
            if any(out):
                raise AssertionError("a refused segment left output behind") from None
            results.append(None)
        finally:
            planes._native = saved
            native.simd(int(simd))
    if len(set(results)) != 1:
        raise AssertionError("the C helper's loops and numpy disagree")


def target_ans(data: bytes) -> None:
    """Two bytes of symbol count (1..2048: the Python twin is slow), then a plane."""
    _ans_differential(data, wide=False)


def target_ans32(data: bytes) -> None:
    """As ``ans``, for ans32 planes; the C helper runs with and without AVX2."""
    _ans_differential(data, wide=True)


def _ans_differential(data: bytes, wide: bool) -> None:
    from secpack.codec import ans, planes

    native = planes.native_module()
    if len(data) < 2 or native is None:
        return
    n = 1 + int.from_bytes(data[:2], "little") % 2048
    plane = memoryview(data[2:])
    try:
        freqs, pos = ans.parse_table(plane, wide)
    except ValueError:
        return
    simd = native.simd()
    decoders = []
    for mode in [simd, False] if wide else [simd]:
        decoders.append((mode, native.ans32_decode if wide else native.ans_decode))
    results: list[bytes | None] = []
    try:
        for mode, decode in [*decoders, (simd, ans.decode_python)]:
            native.simd(mode)
            out = bytearray(b"\xaa" * n)
            try:
                if decode is ans.decode_python:
                    ans.decode_python(freqs, plane[pos:], memoryview(out), wide)
                else:
                    decode(freqs, plane[pos:], memoryview(out))
                results.append(bytes(out))
            except ValueError:
                if any(out):
                    raise AssertionError("a refused plane left output behind") from None
                results.append(None)
    finally:
        native.simd(simd)
    if len(set(results)) != 1:
        raise AssertionError("the C helper and Python disagree")
    if results[0] is not None:
        coded = bytearray(4 * n + 256)
        start = (native.ans32_encode if wide else native.ans_encode)(freqs, results[0], coded)
        if bytes(coded[start:]) != bytes(plane[pos:]):
            raise AssertionError("a plane the encoder would not write decodes")


TARGETS = {
    "header": target_header,
    "manifest": target_manifest,
    "cbor": target_cbor,
    "bgx": target_bgx,
    "ans": target_ans,
    "ans32": target_ans32,
    "open": target_open,
}
