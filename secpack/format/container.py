"""Framing of the single-file container (``.spk``). Pure: bytes in, layout out.

::

    offset  size  field
    0       8     magic 89 53 50 4B 0D 0A 1A 0A
    8       2     container major version, big-endian (1)
    10      2     reserved, zero
    12      4     manifest length M, big-endian
    16      4     index length I, big-endian
    20      8     blob area length B, big-endian
    28      4     reserved, zero
    32      M     manifest (canonical CBOR, the signed bytes)
    32+M    I     blob index (canonical CBOR)
    32+M+I  B     blob area (blobs back to back, in manifest order)
    ...     4     "SIGS"
    ...     4     signature section length S, big-endian
    ...     S     signature section (canonical CBOR); the file ends here

Signatures come last so that adding or removing one rewrites only the tail:
the signed manifest and the blobs keep their bytes and offsets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from secpack.errors import ContainerError
from secpack.format.limits import Limits

__all__ = [
    "MAGIC",
    "PREAMBLE_LEN",
    "SIG_HEADER_LEN",
    "Layout",
    "pack_preamble",
    "pack_sig_header",
    "parse_preamble",
    "parse_sig_header",
]

# The PNG trick: a high-bit byte catches 7-bit transfers, CR LF and the ^Z/LF tail
# catch newline translation, so a mangled copy fails at the magic instead of later.
MAGIC = b"\x89SPK\r\n\x1a\n"
CONTAINER_VERSION = 1
_PREAMBLE = struct.Struct(">8sHHIIQI")
PREAMBLE_LEN = _PREAMBLE.size  # 32
_SIG_HEADER = struct.Struct(">4sI")
SIG_HEADER_LEN = _SIG_HEADER.size  # 8
SIG_TAG = b"SIGS"


@dataclass(frozen=True)
class Layout:
    """Absolute offsets and lengths of every section of one container file."""

    manifest_off: int
    manifest_len: int
    index_off: int
    index_len: int
    blobs_off: int
    blobs_len: int
    sigs_off: int  # offset of the "SIGS" header
    file_size: int


def pack_preamble(manifest_len: int, index_len: int, blobs_len: int) -> bytes:
    return _PREAMBLE.pack(MAGIC, CONTAINER_VERSION, 0, manifest_len, index_len, blobs_len, 0)


def pack_sig_header(section_len: int) -> bytes:
    return _SIG_HEADER.pack(SIG_TAG, section_len)


def parse_preamble(head: bytes, file_size: int, limits: Limits) -> Layout:
    """Check the fixed preamble against the file size and limits; return the layout."""
    if len(head) < len(MAGIC) or head[: len(MAGIC)] != MAGIC:
        raise ContainerError("container.magic", "file does not start with the secpack magic")
    if len(head) < PREAMBLE_LEN or file_size < PREAMBLE_LEN:
        raise ContainerError("container.framing", "file shorter than the preamble")
    _magic, version, reserved1, m_len, i_len, b_len, reserved2 = _PREAMBLE.unpack(
        head[:PREAMBLE_LEN]
    )
    if version != CONTAINER_VERSION:
        raise ContainerError("container.version", f"container version {version} (expected 1)")
    if reserved1 or reserved2:
        raise ContainerError("container.version", "reserved preamble fields are not zero")
    if m_len == 0 or m_len > limits.max_manifest_bytes:
        raise ContainerError("container.framing", f"manifest length {m_len} out of range")
    if i_len == 0 or i_len > limits.max_index_bytes:
        raise ContainerError("container.framing", f"index length {i_len} out of range")
    sigs_off = PREAMBLE_LEN + m_len + i_len + b_len
    # Python integers cannot overflow; compare against the real size before any read.
    if sigs_off + SIG_HEADER_LEN > file_size:
        raise ContainerError("container.framing", "sections run past the end of the file")
    return Layout(
        manifest_off=PREAMBLE_LEN,
        manifest_len=m_len,
        index_off=PREAMBLE_LEN + m_len,
        index_len=i_len,
        blobs_off=PREAMBLE_LEN + m_len + i_len,
        blobs_len=b_len,
        sigs_off=sigs_off,
        file_size=file_size,
    )


def parse_sig_header(head: bytes, layout: Layout, limits: Limits) -> int:
    """Check the signature-section header; return the section's CBOR length."""
    if len(head) != SIG_HEADER_LEN:
        raise ContainerError("container.framing", "short signature-section header")
    tag, s_len = _SIG_HEADER.unpack(head)
    if tag != SIG_TAG:
        raise ContainerError("container.framing", "signature section tag missing")
    if s_len > limits.max_signature_bytes:
        raise ContainerError("container.framing", f"signature section of {s_len} bytes")
    if layout.sigs_off + SIG_HEADER_LEN + s_len != layout.file_size:
        raise ContainerError("container.framing", "file length does not match its sections")
    return int(s_len)
