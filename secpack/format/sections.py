"""The two unsigned CBOR sections of a container: the blob index and the
signature section (docs/FORMAT.md, "Blob index" and "Signature section").

Neither is trusted: the index must equal the layout derived from the signed
manifest, and each signature is verified on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from secpack.errors import ContainerError
from secpack.format import cbor
from secpack.format.limits import Limits
from secpack.format.manifest import Manifest
from secpack.format.schema import as_bytes, as_list, as_map, as_text, as_uint

__all__ = [
    "SIG_TYPE_COSE_SIGN1",
    "SignatureEntry",
    "blob_offsets",
    "build_index",
    "build_signature_section",
    "check_index",
    "parse_signature_section",
]

SIG_TYPE_COSE_SIGN1 = "cose-sign1"
SIG_TYPES = (SIG_TYPE_COSE_SIGN1,)
_MAX_SIG_ITEM = 1 << 20  # one signature item (a sigstore bundle is ~10 KiB)


@dataclass(frozen=True)
class SignatureEntry:
    type: str
    data: bytes


def blob_offsets(manifest: Manifest) -> list[int]:
    """Offsets of each blob within the blob area: the blobs sit back to back."""
    offsets, pos = [], 0
    for blob in manifest.blobs:
        offsets.append(pos)
        pos += blob.size
    return offsets


def build_index(manifest: Manifest, pad: int = 0) -> bytes:
    """The index for ``manifest``; ``pad`` zero bytes let a writer fill reserved room."""
    return cbor.encode({"offsets": blob_offsets(manifest), "pad": bytes(pad)})


def check_index(data: bytes, manifest: Manifest, blobs_len: int, limits: Limits) -> None:
    """The index must be well-formed and say exactly what the manifest implies."""
    obj = cbor.decode(
        data,
        max_bytes=limits.max_index_bytes,
        max_depth=limits.max_cbor_depth,
        max_items=limits.max_blobs + 8,
    )
    idx = as_map(obj, "index", ("offsets", "pad"))
    offsets = [
        as_uint(o, "index.offsets[]")
        for o in as_list(idx["offsets"], "index.offsets", limits.max_blobs)
    ]
    pad = as_bytes(idx["pad"], "index.pad", max_size=limits.max_index_bytes)
    if any(pad):
        raise ContainerError("container.framing", "index padding is not zero")
    if offsets != blob_offsets(manifest):
        raise ContainerError("container.framing", "blob index disagrees with the manifest")
    if blobs_len != manifest.stored_size:
        raise ContainerError("container.framing", "blob area length disagrees with the manifest")


def build_signature_section(entries: list[SignatureEntry]) -> bytes:
    return cbor.encode({"signatures": [{"type": e.type, "data": e.data} for e in entries]})


def parse_signature_section(data: bytes, limits: Limits) -> list[SignatureEntry]:
    obj = cbor.decode(
        data,
        max_bytes=limits.max_signature_bytes,
        max_depth=limits.max_cbor_depth,
        # 2 items for the section map and its array, then 5 per entry (map, 2 keys,
        # 2 values): a full section of max_signatures entries must fit.
        max_items=5 * limits.max_signatures + 3,
    )
    sec = as_map(obj, "signatures", ("signatures",))
    out = []
    for i, item in enumerate(as_list(sec["signatures"], "signatures", limits.max_signatures)):
        entry = as_map(item, f"signatures[{i}]", ("type", "data"))
        stype = as_text(entry["type"], f"signatures[{i}].type", 64)
        data_i = as_bytes(entry["data"], f"signatures[{i}].data", max_size=_MAX_SIG_ITEM)
        # Unknown signature types are kept and reported as unverifiable, not fatal:
        # a newer signer may add a kind this reader cannot check, next to one it can.
        out.append(SignatureEntry(stype, data_i))
    return out
