"""The manifest: the signed description of a package (docs/FORMAT.md, "Manifest").

``parse_manifest`` turns decoded CBOR into validated dataclasses, or raises; a
malformed manifest never exists as an object. ``Manifest.to_cbor`` is the exact
inverse for every valid manifest. The manifest holds no container offsets, so
the same signed bytes describe a ``.spk`` file, an OCI artifact or a delta.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from secpack.errors import SchemaError
from secpack.format.limits import Limits
from secpack.format.schema import as_bytes, as_list, as_map, as_text, as_uint, fail

__all__ = [
    "ANS32_MIN_SIZE",
    "ANS_MIN_SIZE",
    "BGX_FLOATS",
    "BGX_MAX_SPAN",
    "BGX_PLANE_IDS",
    "COMPONENT_KINDS",
    "COMPONENT_NAME_RE",
    "FORMAT_VERSION",
    "PACKAGE_NAME_RE",
    "Blob",
    "Codec",
    "Component",
    "Encryption",
    "Manifest",
    "Plane",
    "Recipient",
    "Segment",
    "bgx_p5_planes",
    "bgx_plane_sizes",
    "p5_size",
    "parse_manifest",
]

FORMAT_VERSION = 1
PACKAGE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# "weights", "config", "adapter:lora-en", ... : lower-case word, optional ":qualifier".
COMPONENT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}(:[A-Za-z0-9][A-Za-z0-9._-]{0,63})?")
COMPONENT_KINDS = ("config", "weights", "tokenizer", "adapter", "files")
AEAD_ALG = "A256GCM"
RECIPIENT_HPKE_X25519 = "hpke-x25519"
DIGEST_LEN = 32  # SHA-256
SALT_LEN = 16  # per-encryption salt for HKDF; see docs/FORMAT.md "Segment encryption"
TAG_LEN = 16  # AES-GCM tag
HPKE_ENC_LEN = 32  # X25519 encapsulated key
DEK_LEN = 32
WRAPPED_LEN = DEK_LEN + TAG_LEN
CODEC_IDS = ("raw", "zstd", "bg", "bgx", "const", "ans", "ans32")
# bgx float layouts: (element width in bytes, exponent bits).
BGX_FLOATS = {"fp32": (4, 8), "bf16": (2, 8), "fp16": (2, 5)}
# The widest bgx exponent window: H codes 8 * span common values and 255 escapes.
BGX_MAX_SPAN = 31
PLANE_IDS = ("raw", "zstd")
# bgx planes may also be "p5": 5-bit values packed, ceil(5n / 8) bytes; only the
# planes whose values are below 32 by construction (fp32 B0, bf16 L).
# H (plane 0) may also be "ans", static rANS (FORMAT.md 6.1.1), which needs at
# least ANS_MIN_SIZE bytes: a 32-byte bitmap, one frequency and four states; or
# "ans32" (6.1.2), the same with 32 states, so at least ANS32_MIN_SIZE. A whole
# segment may be one such plane too (codec "ans" or "ans32"), under the same minimum.
BGX_PLANE_IDS = ("raw", "zstd", "p5", "ans", "ans32")
ANS_MIN_SIZE = 32 + 1 + 16
ANS32_MIN_SIZE = 32 + 1 + 128
# The smallest plane each rANS codec id allows.
ANS_MINIMUM = {"ans": ANS_MIN_SIZE, "ans32": ANS32_MIN_SIZE}
WIDTHS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Plane:
    id: str
    size: int

    def to_cbor(self) -> dict[str, Any]:
        return {"id": self.id, "size": self.size}


@dataclass(frozen=True)
class Codec:
    """How a segment's payload decodes to its plaintext (docs/FORMAT.md, "Codecs")."""

    id: str
    size: int = 0  # zstd: frame length; ans, ans32: plane length
    width: int = 0  # bg / const: element width in bytes
    rot: int = 0  # bg: 1 when each element was rotated left by one bit before grouping
    planes: tuple[Plane, ...] = ()
    float: str = ""  # bgx: the float layout, a key of BGX_FLOATS
    lo: int = 0  # bgx: first exponent value of the window
    span: int = 0  # bgx: exponent values in the window (1..BGX_MAX_SPAN)
    escapes: int = 0  # bgx: elements whose exponent is outside the window
    period: int = 0  # bgx: row length of the column offsets, 0 for none

    def payload_len(self, plain: int) -> int:
        """Length of the codec payload (before encryption) for ``plain`` bytes of output."""
        if self.id == "raw":
            return plain
        if self.id in ("zstd", "ans", "ans32"):
            return self.size
        if self.id == "const":
            return self.width
        return sum(p.size for p in self.planes)

    def to_cbor(self) -> dict[str, Any]:
        if self.id == "raw":
            return {"id": "raw"}
        if self.id in ("zstd", "ans", "ans32"):
            return {"id": self.id, "size": self.size}
        if self.id == "const":
            return {"id": "const", "width": self.width}
        if self.id == "bgx":
            return {
                "id": "bgx",
                "float": self.float,
                "lo": self.lo,
                "span": self.span,
                "escapes": self.escapes,
                "period": self.period,
                "planes": [p.to_cbor() for p in self.planes],
            }
        return {
            "id": "bg",
            "width": self.width,
            "rot": self.rot,
            "planes": [p.to_cbor() for p in self.planes],
        }


@dataclass(frozen=True)
class Segment:
    blob: int
    stored: int
    plain: int
    codec: Codec
    digest: bytes
    salt: bytes | None = None

    def to_cbor(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "blob": self.blob,
            "stored": self.stored,
            "plain": self.plain,
            "codec": self.codec.to_cbor(),
            "digest": self.digest,
        }
        if self.salt is not None:
            out["salt"] = self.salt
        return out


@dataclass(frozen=True)
class Recipient:
    type: str
    kid: bytes
    enc: bytes
    wrapped: bytes

    def to_cbor(self) -> dict[str, Any]:
        return {"type": self.type, "kid": self.kid, "enc": self.enc, "wrapped": self.wrapped}


@dataclass(frozen=True)
class Encryption:
    alg: str
    commitment: bytes
    contents_salt: bytes
    recipients: tuple[Recipient, ...]

    def to_cbor(self) -> dict[str, Any]:
        return {
            "alg": self.alg,
            "commitment": self.commitment,
            "contents_salt": self.contents_salt,
            "recipients": [r.to_cbor() for r in self.recipients],
        }


@dataclass(frozen=True)
class Component:
    name: str
    kind: str
    media_type: str
    size: int
    contents: bytes
    segments: tuple[Segment, ...]
    encryption: Encryption | None
    # When the contents are stored as one zstd frame ("contents_codec", FORMAT §4):
    # their length once decompressed. None: stored as they are.
    contents_size: int | None = None

    def to_cbor(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "kind": self.kind,
            "media_type": self.media_type,
            "size": self.size,
            "contents": self.contents,
            "segments": [s.to_cbor() for s in self.segments],
            "encryption": None if self.encryption is None else self.encryption.to_cbor(),
        }
        if self.contents_size is not None:
            out["contents_codec"] = {"id": "zstd", "size": self.contents_size}
        return out

    @property
    def stored_size(self) -> int:
        return sum(s.stored for s in self.segments)


@dataclass(frozen=True)
class Blob:
    digest: bytes
    size: int

    def to_cbor(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    created: int
    expires: int | None
    metadata: Mapping[str, str]
    components: tuple[Component, ...]
    blobs: tuple[Blob, ...]
    # Segment i of component c lives at blobs[seg.blob] + segment_offsets[c][i]; derived.
    segment_offsets: tuple[tuple[int, ...], ...] = field(default=(), compare=False, repr=False)

    def to_cbor(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "secpack": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "metadata": dict(self.metadata),
            "components": [c.to_cbor() for c in self.components],
            "blobs": [b.to_cbor() for b in self.blobs],
        }
        if self.expires is not None:
            out["expires"] = self.expires
        return out

    @property
    def plain_size(self) -> int:
        return sum(c.size for c in self.components)

    @property
    def stored_size(self) -> int:
        return sum(b.size for b in self.blobs)


def parse_manifest(obj: Any, limits: Limits) -> Manifest:
    """Validate a decoded manifest against the v1 schema and its cross-field rules."""
    m = as_map(
        obj,
        "manifest",
        ("secpack", "name", "version", "created", "metadata", "components", "blobs"),
        ("expires", "ext", "crit"),
    )
    fmt = m["secpack"]
    if type(fmt) is not int or fmt != FORMAT_VERSION:
        raise SchemaError("schema.unsupported", f"manifest format {fmt!r} (this reader knows 1)")
    if "crit" in m:
        crit = as_list(m["crit"], "manifest.crit", 64, 1)
        # v1 implements no extension; any extension a writer marks critical is refused.
        names = [as_text(c, "manifest.crit[]") for c in crit]
        raise SchemaError("schema.unsupported", f"critical extension(s) {names}")
    if "ext" in m and not isinstance(m["ext"], dict):
        raise fail("manifest.ext", "expected a map")
    name = as_text(m["name"], "manifest.name", 128, PACKAGE_NAME_RE)
    version = as_uint(m["version"], "manifest.version", 1, 2**63 - 1)
    created = as_uint(m["created"], "manifest.created", 0, 2**63 - 1)
    expires = None
    if "expires" in m:
        expires = as_uint(m["expires"], "manifest.expires", 0, 2**63 - 1)
        if expires <= created:
            raise fail("manifest.expires", "not after created")
    metadata_raw = m["metadata"]
    if not isinstance(metadata_raw, dict) or len(metadata_raw) > 256:
        raise fail("manifest.metadata", "expected a map of at most 256 entries")
    metadata = {
        as_text(k, "manifest.metadata key", 128): as_text(v, f"manifest.metadata[{k}]", 4096)
        for k, v in metadata_raw.items()
    }
    blobs = tuple(
        _parse_blob(b, f"blobs[{i}]")
        for i, b in enumerate(as_list(m["blobs"], "manifest.blobs", limits.max_blobs))
    )
    comps_raw = as_list(m["components"], "manifest.components", limits.max_components, 1)
    components = tuple(
        _parse_component(c, f"components[{i}]", limits) for i, c in enumerate(comps_raw)
    )
    seen: set[str] = set()
    for comp in components:
        if comp.name in seen:
            raise fail("manifest.components", f"duplicate component {comp.name!r}")
        seen.add(comp.name)
    if sum(len(c.segments) for c in components) > limits.max_segments:
        raise fail("manifest", f"more than {limits.max_segments} segments")
    if sum(c.size for c in components) > limits.max_total_plain:
        raise fail("manifest", f"more than {limits.max_total_plain} plaintext bytes")
    # Every component's table, decompressed, within the manifest cap in all, as when
    # they were all stored in the manifest as they are: a few kilobytes of zstd
    # each must not add up to gigabytes over a thousand components.
    tables = sum(
        len(c.contents) if c.contents_size is None else c.contents_size for c in components
    )
    if tables > limits.max_manifest_bytes:
        raise fail(
            "manifest", f"contents of {tables} bytes in all, more than {limits.max_manifest_bytes}"
        )
    offsets = _check_blob_layout(components, blobs)
    return Manifest(name, version, created, expires, metadata, components, blobs, offsets)


def _check_blob_layout(
    components: tuple[Component, ...], blobs: tuple[Blob, ...]
) -> tuple[tuple[int, ...], ...]:
    """Blobs are runs of consecutive segments of one component, exactly filled, in order."""
    next_blob = 0  # the blob a new run must open
    fill = 0  # bytes placed in the current blob so far
    current = -1
    all_offsets: list[tuple[int, ...]] = []
    for comp in components:
        offsets: list[int] = []
        first_in_comp = True
        for i, seg in enumerate(comp.segments):
            if seg.blob == current and not first_in_comp:
                offsets.append(fill)
                fill += seg.stored
            elif seg.blob == next_blob:
                if current >= 0 and fill != blobs[current].size:
                    raise fail(f"blobs[{current}]", "segments do not fill the blob exactly")
                current, next_blob, fill = seg.blob, seg.blob + 1, seg.stored
                offsets.append(0)
            else:
                raise fail(f"{comp.name}.segments[{i}]", "blob index out of order")
            if current >= len(blobs) or fill > blobs[current].size:
                raise fail(f"{comp.name}.segments[{i}]", "segment overruns its blob")
            first_in_comp = False
        all_offsets.append(tuple(offsets))
    if current >= 0 and fill != blobs[current].size:
        raise fail(f"blobs[{current}]", "segments do not fill the blob exactly")
    if next_blob != len(blobs):
        raise fail("manifest.blobs", "blob holds no segment")
    return tuple(all_offsets)


def _parse_blob(obj: Any, where: str) -> Blob:
    b = as_map(obj, where, ("digest", "size"))
    return Blob(
        as_bytes(b["digest"], f"{where}.digest", DIGEST_LEN), as_uint(b["size"], f"{where}.size", 1)
    )


def _parse_component(obj: Any, where: str, limits: Limits) -> Component:
    c = as_map(
        obj,
        where,
        ("name", "kind", "media_type", "size", "contents", "segments", "encryption"),
        ("contents_codec",),
    )
    name = as_text(c["name"], f"{where}.name", 128, COMPONENT_NAME_RE)
    kind = as_text(c["kind"], f"{where}.kind", 32)
    if kind not in COMPONENT_KINDS:
        raise fail(f"{where}.kind", f"unknown kind {kind!r}")
    media_type = as_text(c["media_type"], f"{where}.media_type", 255)
    size = as_uint(
        c["size"], f"{where}.size", 0, min(limits.max_total_plain, limits.max_component_plain)
    )
    contents = as_bytes(c["contents"], f"{where}.contents", max_size=limits.max_manifest_bytes)
    encryption = (
        None if c["encryption"] is None else _parse_encryption(c["encryption"], where, limits)
    )
    segs_raw = as_list(c["segments"], f"{where}.segments", limits.max_segments)
    segments = tuple(
        _parse_segment(s, f"{where}.segments[{i}]", encryption is not None, limits)
        for i, s in enumerate(segs_raw)
    )
    if sum(s.plain for s in segments) != size:
        raise fail(f"{where}.size", "does not equal the sum of its segments")
    contents_size = None
    if "contents_codec" in c:
        codec = c["contents_codec"]
        if not isinstance(codec, dict) or "id" not in codec:
            raise fail(f"{where}.contents_codec", "expected a codec map with an id")
        # The id first, as for segment codecs: a later codec with other parameters
        # is one this reader does not know, not a malformed one.
        codec_id = as_text(codec["id"], f"{where}.contents_codec.id", 16)
        if codec_id != "zstd":
            raise SchemaError("schema.unsupported", f"{where}: contents codec {codec_id!r}")
        codec = as_map(codec, f"{where}.contents_codec", ("id", "size"))
        # The decompressed contents are held to the same cap as stored ones.
        contents_size = as_uint(
            codec["size"], f"{where}.contents_codec.size", 1, limits.max_manifest_bytes
        )
    return Component(name, kind, media_type, size, contents, segments, encryption, contents_size)


def _parse_encryption(obj: Any, where: str, limits: Limits) -> Encryption:
    e = as_map(obj, f"{where}.encryption", ("alg", "commitment", "contents_salt", "recipients"))
    alg = as_text(e["alg"], f"{where}.encryption.alg", 32)
    if alg != AEAD_ALG:
        raise SchemaError("schema.unsupported", f"{where}: encryption algorithm {alg!r}")
    recipients = tuple(
        _parse_recipient(r, f"{where}.recipients[{i}]")
        for i, r in enumerate(
            as_list(e["recipients"], f"{where}.recipients", limits.max_recipients, 1)
        )
    )
    return Encryption(
        alg,
        as_bytes(e["commitment"], f"{where}.commitment", DIGEST_LEN),
        as_bytes(e["contents_salt"], f"{where}.contents_salt", SALT_LEN),
        recipients,
    )


def _parse_recipient(obj: Any, where: str) -> Recipient:
    r = as_map(obj, where, ("type", "kid", "enc", "wrapped"))
    rtype = as_text(r["type"], f"{where}.type", 64)
    if rtype != RECIPIENT_HPKE_X25519:
        raise SchemaError("schema.unsupported", f"{where}: recipient type {rtype!r}")
    return Recipient(
        rtype,
        as_bytes(r["kid"], f"{where}.kid", DIGEST_LEN),
        # Wrong encapsulated-key or wrapped-key lengths are refused here, before any crypto.
        as_bytes(r["enc"], f"{where}.enc", HPKE_ENC_LEN),
        as_bytes(r["wrapped"], f"{where}.wrapped", WRAPPED_LEN),
    )


# Codec records are frozen values: every raw segment can share one.
_RAW = Codec("raw")


def _parse_codec(obj: Any, where: str, plain: int, limits: Limits) -> Codec:
    if not isinstance(obj, dict) or "id" not in obj:
        raise fail(where, "expected a codec map with an id")
    cid = as_text(obj["id"], f"{where}.id", 16)
    if cid not in CODEC_IDS:
        raise SchemaError("schema.unsupported", f"{where}: codec {cid!r}")
    if cid == "raw":
        as_map(obj, where, ("id",))
        return _RAW
    if cid == "zstd":
        z = as_map(obj, where, ("id", "size"))
        return Codec("zstd", size=as_uint(z["size"], f"{where}.size", 1, limits.max_segment_bytes))
    if cid in ANS_MINIMUM:
        a = as_map(obj, where, ("id", "size"))
        least = ANS_MINIMUM[cid]
        if plain < least:
            raise fail(f"{where}.size", f"segment too short for an {cid} plane")
        return Codec(cid, size=as_uint(a["size"], f"{where}.size", least, plain))
    if cid == "const":
        k = as_map(obj, where, ("id", "width"))
        width = as_uint(k["width"], f"{where}.width", 1, 8)
        if width not in WIDTHS or plain % width:
            raise fail(f"{where}.width", "not a width that divides the segment")
        return Codec("const", width=width)
    if cid == "bgx":
        return _parse_bgx(obj, where, plain)
    g = as_map(obj, where, ("id", "width", "rot", "planes"))
    # Byte grouping needs two bytes per element at least: width 1 has no planes to split.
    width = as_uint(g["width"], f"{where}.width", 2, 8)
    if width not in WIDTHS or plain % width:
        raise fail(f"{where}.width", "not a width that divides the segment")
    rot = as_uint(g["rot"], f"{where}.rot", 0, 1)
    planes_raw = as_list(g["planes"], f"{where}.planes", width, width)
    planes = []
    for i, p_raw in enumerate(planes_raw):
        p = as_map(p_raw, f"{where}.planes[{i}]", ("id", "size"))
        pid = as_text(p["id"], f"{where}.planes[{i}].id", 16)
        if pid not in PLANE_IDS:
            raise SchemaError("schema.unsupported", f"{where}.planes[{i}]: plane codec {pid!r}")
        psize = as_uint(p["size"], f"{where}.planes[{i}].size", 1, plain // width)
        if pid == "raw" and psize != plain // width:
            raise fail(f"{where}.planes[{i}].size", "raw plane must hold one byte per element")
        planes.append(Plane(pid, psize))
    return Codec("bg", width=width, rot=rot, planes=tuple(planes))


def bgx_p5_planes(kind: str) -> tuple[int, ...]:
    """Indices of the bgx planes that may be stored "p5": B0 of fp32, L of bf16."""
    return {"fp32": (3,), "bf16": (1,)}.get(kind, ())


def p5_size(count: int) -> int:
    """Bytes of a p5 plane of ``count`` 5-bit values."""
    return (5 * count + 7) // 8


def bgx_plane_sizes(codec: Codec, plain: int) -> list[int]:
    """Decoded size of each plane of a bgx record, in plane order: H, L, then B1 and
    B0 for fp32, X (2 bytes per escape) when there are escapes, O when there is a
    period."""
    width, _ = BGX_FLOATS[codec.float]
    n = plain // width
    sizes = [n, n] + ([n, n] if width == 4 else [])
    if codec.escapes:
        sizes.append(2 * codec.escapes)
    if codec.period:
        sizes.append(codec.period)
    return sizes


def _parse_bgx(obj: Any, where: str, plain: int) -> Codec:
    g = as_map(obj, where, ("id", "float", "lo", "span", "escapes", "period", "planes"))
    kind = as_text(g["float"], f"{where}.float", 8)
    if kind not in BGX_FLOATS:
        raise SchemaError("schema.unsupported", f"{where}: bgx float layout {kind!r}")
    width, exp_bits = BGX_FLOATS[kind]
    if plain % width:
        raise fail(f"{where}.float", "element width does not divide the segment")
    n = plain // width
    lo = as_uint(g["lo"], f"{where}.lo", 0, (1 << exp_bits) - 1)
    span = as_uint(g["span"], f"{where}.span", 1, BGX_MAX_SPAN)
    if lo + span > 1 << exp_bits:
        raise fail(f"{where}.span", "window runs past the largest exponent")
    escapes = as_uint(g["escapes"], f"{where}.escapes", 0, n)
    period = as_uint(g["period"], f"{where}.period", 0, n)
    if period == 1:
        raise fail(f"{where}.period", "a period of 1 is a constant offset")
    sizes = bgx_plane_sizes(
        Codec("bgx", float=kind, lo=lo, span=span, escapes=escapes, period=period), plain
    )
    planes_raw = as_list(g["planes"], f"{where}.planes", len(sizes), len(sizes))
    planes = []
    for i, (p_raw, size) in enumerate(zip(planes_raw, sizes, strict=True)):
        pw = f"{where}.planes[{i}]"
        p = as_map(p_raw, pw, ("id", "size"))
        pid = as_text(p["id"], pw + ".id", 16)
        if pid not in BGX_PLANE_IDS:
            raise SchemaError("schema.unsupported", f"{pw}: plane codec {pid!r}")
        psize = as_uint(p["size"], pw + ".size", 1, size)
        if pid == "p5" and (i not in bgx_p5_planes(kind) or psize != p5_size(size)):
            raise fail(pw, "p5 is only for B0 of fp32 and L of bf16, ceil(5n/8) bytes")
        if pid in ANS_MINIMUM and (i != 0 or psize < ANS_MINIMUM[pid]):
            raise fail(pw, f"{pid} is only for H, and at least {ANS_MINIMUM[pid]} bytes")
        # The offsets O are always raw: their size is the period itself.
        if (pid == "raw" or (i == len(sizes) - 1 and period)) and (pid, psize) != ("raw", size):
            raise fail(pw + ".size", "raw plane must have its decoded size")
        planes.append(Plane(pid, psize))
    return Codec(
        "bgx",
        float=kind,
        lo=lo,
        span=span,
        escapes=escapes,
        period=period,
        planes=tuple(planes),
    )


_SEGMENT_KEYS = ("blob", "stored", "plain", "codec", "digest")
_SEGMENT_KEYS_SALTED = (*_SEGMENT_KEYS, "salt")


def _parse_segment(obj: Any, where: str, encrypted: bool, limits: Limits) -> Segment:
    s = as_map(obj, where, _SEGMENT_KEYS_SALTED if encrypted else _SEGMENT_KEYS)
    plain = as_uint(s["plain"], f"{where}.plain", 1, limits.max_segment_bytes)
    codec = _parse_codec(s["codec"], f"{where}.codec", plain, limits)
    stored = as_uint(s["stored"], f"{where}.stored", 1, limits.max_segment_bytes + TAG_LEN)
    # Writers fall back to raw when coding does not shrink a segment, so a stored
    # segment is never longer than its plaintext plus the AEAD tag.
    expected = codec.payload_len(plain) + (TAG_LEN if encrypted else 0)
    if stored != expected:
        raise fail(f"{where}.stored", f"{stored} does not match the codec payload ({expected})")
    if stored > plain + (TAG_LEN if encrypted else 0):
        raise fail(f"{where}.stored", "stored form larger than raw")
    if plain > stored * limits.max_expansion:
        raise SchemaError("schema.invalid", f"{where}: expands more than {limits.max_expansion}x")
    return Segment(
        blob=as_uint(s["blob"], f"{where}.blob", 0, limits.max_blobs),
        stored=stored,
        plain=plain,
        codec=codec,
        digest=as_bytes(s["digest"], f"{where}.digest", DIGEST_LEN),
        salt=as_bytes(s["salt"], f"{where}.salt", SALT_LEN) if encrypted else None,
    )
