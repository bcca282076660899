"""Container assembly: the header (preamble, manifest, index) and the signature tail.

A writer does not know the manifest until every segment is sealed, yet the
manifest comes before the blobs. It therefore reserves room sized from a
placeholder manifest whose every size field is at its maximum, streams the
blobs after that room, and finally fills the room exactly, using the index's
zero ``pad`` for the slack. If the room cannot be filled exactly (the pad's
CBOR head grows in steps), the caller moves the blob area instead.
"""

from __future__ import annotations

from secpack.format import cbor, container
from secpack.format.manifest import Manifest
from secpack.format.sections import SignatureEntry, build_index, build_signature_section

__all__ = ["fit_header", "header_room", "signature_tail"]


def header_room(placeholder: Manifest) -> int:
    """Bytes to reserve for the header of a manifest no larger than ``placeholder``."""
    manifest_len = len(cbor.encode(placeholder.to_cbor()))
    return container.PREAMBLE_LEN + manifest_len + len(build_index(placeholder))


def fit_header(manifest_bytes: bytes, manifest: Manifest, room: int | None) -> bytes | None:
    """The header for ``manifest``: exactly ``room`` bytes long, or None if it cannot be.
    With ``room=None``, the shortest header (no padding)."""
    base = container.PREAMBLE_LEN + len(manifest_bytes)
    index = build_index(manifest)
    if room is not None:
        want = room - base
        pad = want - len(index)
        # Each step only grows the pad's head by a byte or two: a few rounds converge.
        for _ in range(4):
            if pad < 0:
                return None
            index = build_index(manifest, pad)
            if len(index) == want:
                break
            pad -= len(index) - want
        else:
            return None
        if len(index) != want:
            return None
    preamble = container.pack_preamble(len(manifest_bytes), len(index), manifest.stored_size)
    return preamble + manifest_bytes + index


def signature_tail(entries: list[SignatureEntry]) -> bytes:
    section = build_signature_section(entries)
    return container.pack_sig_header(len(section)) + section
