"""A package forge for the hostile corpus: build ``.spk`` files byte by byte.

The forge starts from a package that secpack itself sealed (``--no-encrypt``,
fixed model, fixed time), decodes it into plain Python objects (manifest
fields, each component's contents table, each segment's codec payload and the
unit its AEAD data binds it to), lets a case change anything, and serialises
the result again exactly as docs/FORMAT.md says: canonical CBOR, per-component
encryption with secpack's own envelope helpers (seal_contents, seal_segment,
commitment), the blob index, the preamble and a COSE signature by the test key.
So a forged package is valid up to the one defect a case puts in, and the
checks behind the signature and the AEAD are really reached.

Everything is deterministic: data keys, salts and HPKE ephemeral keys come
from SHA-256 of fixed labels (HPKE base-mode encapsulation is done here, by
RFC 9180, with a fixed ephemeral key; secpack's reader unwraps it like any
other), signatures are Ed25519 or RFC 6979 ECDSA, and the creation time is fixed.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import importlib.util
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cbor2
import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KEYS = ROOT / "keys-example"

NAME = "hostile"
# 2020-09-13T12:26:40Z: in the past for any machine that runs this, so that only
# the cases that mean to be expired or from the future are.
CREATED = 1_600_000_000
MAGIC = b"\x89SPK\r\n\x1a\n"
PREAMBLE = struct.Struct(">8sHHIIQI")
CONTENT_TYPE = "application/vnd.secpack.manifest+cbor"
TAG_SIGN1 = b"\xd2"


def enc(obj: Any) -> bytes:
    """Canonical CBOR, as secpack writes it."""
    return bytes(cbor2.dumps(obj, canonical=True))


def rand(label: str, n: int) -> bytes:
    """Deterministic stand-in for the CSPRNG: SHA-256 of a fixed label."""
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"secpack hostile corpus/{label}/{counter}".encode()).digest()
        counter += 1
    return out[:n]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# --- keys -------------------------------------------------------------------------------------


@cache
def keys() -> SimpleNamespace:
    from secpack.api.keyfiles import load_identity, load_recipient, load_signing_key
    from secpack.recipes.keys import key_id

    ns = SimpleNamespace(
        ed=load_signing_key(str(KEYS / "signing-ed25519.key")),
        p256=load_signing_key(str(KEYS / "signing-p256.key")),
        untrusted=load_signing_key(str(KEYS / "untrusted-ed25519.key")),
        recipient=load_recipient(str(KEYS / "recipient-x25519.key.pub")),
        other=load_recipient(str(KEYS / "other-recipient-x25519.key.pub")),
        identity=load_identity(str(KEYS / "recipient-x25519.key")),
    )
    ns.ed_kid = key_id(ns.ed.public_key())
    return ns


# --- HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM (RFC 9180) ---------

_KEM_SUITE = b"KEM" + (0x0020).to_bytes(2, "big")
_HPKE_SUITE = (
    b"HPKE" + (0x0020).to_bytes(2, "big") + (1).to_bytes(2, "big") + (2).to_bytes(2, "big")
)


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    # HKDF-Extract with an empty salt is HMAC keyed with HashLen zero bytes; HMAC pads
    # its key with zeros, so b"" and bytes(32) are the same key.
    return hmac.new(salt, b"HPKE-v1" + suite + label + ikm, hashlib.sha256).digest()


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled = length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info
    return HKDFExpand(hashes.SHA256(), length, labeled).derive(prk)


def hpke_wrap(
    secret: bytes, recipient: x25519.X25519PublicKey, info: bytes, seed: str
) -> tuple[bytes, bytes]:
    """HPKE SealBase with a deterministic ephemeral key: (enc, ciphertext)."""
    eph = x25519.X25519PrivateKey.from_private_bytes(rand(f"hpke/{seed}", 32))
    pk_e = eph.public_key().public_bytes_raw()
    pk_r = recipient.public_bytes_raw()
    dh = eph.exchange(recipient)
    eae_prk = _labeled_extract(_KEM_SUITE, b"", b"eae_prk", dh)
    shared = _labeled_expand(_KEM_SUITE, eae_prk, b"shared_secret", pk_e + pk_r, 32)
    psk_id_hash = _labeled_extract(_HPKE_SUITE, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(_HPKE_SUITE, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret_ = _labeled_extract(_HPKE_SUITE, shared, b"secret", b"")
    key = _labeled_expand(_HPKE_SUITE, secret_, b"key", context, 32)
    nonce = _labeled_expand(_HPKE_SUITE, secret_, b"base_nonce", context, 12)
    return pk_e, AESGCM(key).encrypt(nonce, secret, b"")


def recipient_stanza(
    dek: bytes, recipient: x25519.X25519PublicKey, component: str, seed: str
) -> dict[str, Any]:
    from secpack.recipes.keys import key_id

    enc_key, wrapped = hpke_wrap(dek, recipient, enc(["secpack/1 dek", component]), seed)
    return {"type": "hpke-x25519", "kid": key_id(recipient), "enc": enc_key, "wrapped": wrapped}


def segment_aad(component: str, unit: tuple[str, str, int, bool], plain: int, codec: Any) -> bytes:
    """docs/FORMAT.md §6.3; equal to secpack.envelope.dek.segment_aad for every valid codec
    (checked on the base package), but also defined for the forged codec records."""
    kind, name, part, last = unit
    return enc(["secpack/1 segment", component, kind, name, part, last, plain, codec])


def dek_of(component: str) -> bytes:
    return rand(f"dek/{component}", 32)


# --- COSE_Sign1 -------------------------------------------------------------------------------


def cose(
    key: Any,
    manifest: bytes,
    *,
    protected: dict[int, Any] | None = None,
    protected_raw: bytes | None = None,
    unprotected: Any = None,
    payload: Any = None,
    tagged: bool = True,
) -> bytes:
    """A COSE_Sign1 over ``manifest`` by ``key``, with any header the case wants."""
    from secpack.recipes import signing
    from secpack.recipes.keys import key_id

    if protected_raw is None:
        if protected is None:
            protected = {
                1: signing.cose_alg_of(key),
                3: CONTENT_TYPE,
                4: key_id(key.public_key()),
            }
        protected_raw = enc(protected)
    signature = signing.sign(key, enc(["Signature1", protected_raw, b"", manifest]))
    body = enc([protected_raw, {} if unprotected is None else unprotected, payload, signature])
    return (TAG_SIGN1 if tagged else b"") + body


# --- the package model ------------------------------------------------------------------------


@dataclass
class Seg:
    plain: int
    codec: Any
    payload: bytes  # codec payload, before encryption
    unit: tuple[str, str, int, bool]  # (kind, name, part, last): what the AEAD binds
    aad_comp: str | None = None  # component bound into the AAD (default: the owner)
    post: Callable[[bytes], bytes] | None = None  # applied to the stored bytes
    salt: bytes | None = None


@dataclass
class Comp:
    name: str
    kind: str
    media_type: str
    contents: Any
    segs: list[Seg]
    encrypt: bool = True
    recipients: list[x25519.X25519PublicKey] | None = None  # None: the test recipient
    contents_raw: bytes | None = None  # plaintext contents bytes instead of enc(contents)
    contents_aad: str | None = None  # component name bound into the contents AAD
    contents_post: Callable[[bytes], bytes] | None = None  # applied to the stored contents
    # The "contents_codec" record, for contents_raw that is compressed (FORMAT §4).
    contents_codec: dict[str, Any] | None = None
    enc_hook: Callable[[dict[str, Any]], None] | None = None
    size: int | None = None  # None: the sum of the segments' plaintext lengths

    def file(self, path: str) -> dict[str, Any]:
        for f in self.contents["files"]:
            if f["path"] == path:
                return f  # type: ignore[no-any-return]
        raise KeyError(path)

    def tensor(self, name: str) -> dict[str, Any]:
        for t in self.contents["tensors"]:
            if t["name"] == name:
                return t  # type: ignore[no-any-return]
        raise KeyError(name)


@dataclass
class Pkg:
    comps: list[Comp]
    name: str = NAME
    version: int = 1
    created: int = CREATED
    expires: int | None = None
    metadata: dict[str, str] = field(default_factory=lambda: {"generator": "hostile corpus"})
    signers: list[Any] | None = None  # None: the trusted Ed25519 test key
    manifest_hook: Callable[[dict[str, Any]], None] | None = None
    manifest_bytes_hook: Callable[[bytes], bytes] | None = None
    sigs_hook: Callable[[bytes, list[tuple[str, bytes]]], list[tuple[str, bytes]]] | None = None
    sig_section_hook: Callable[[bytes], bytes] | None = None
    index_hook: Callable[[dict[str, Any]], Any] | None = None
    blob_area_hook: Callable[[bytes], bytes] | None = None

    def comp(self, name: str) -> Comp:
        for c in self.comps:
            if c.name == name:
                return c
        raise KeyError(name)

    def encrypted(self, flag: bool) -> Pkg:
        for c in self.comps:
            c.encrypt = flag
        return self


@dataclass(frozen=True)
class Forged:
    data: bytes
    manifest: bytes
    m_off: int
    m_len: int
    i_off: int
    i_len: int
    b_off: int
    b_len: int
    s_off: int  # offset of "SIGS"


def preamble(m_len: int, i_len: int, b_len: int) -> bytes:
    return PREAMBLE.pack(MAGIC, 1, 0, m_len, i_len, b_len, 0)


def build(p: Pkg) -> Forged:
    """Serialise ``p`` into a complete, signed container."""
    from secpack.envelope import dek as envelope

    k = keys()
    comps: list[dict[str, Any]] = []
    blobs: list[dict[str, Any]] = []
    area = bytearray()
    for c in p.comps:
        dek = dek_of(c.name) if c.encrypt else None
        contents = c.contents_raw if c.contents_raw is not None else enc(c.contents)
        record = None
        if dek is not None:
            csalt = rand(f"contents-salt/{c.name}", 16)
            contents = envelope.seal_contents(dek, csalt, c.contents_aad or c.name, contents)
            record = {
                "alg": "A256GCM",
                "commitment": envelope.commitment(dek),
                "contents_salt": csalt,
                "recipients": [
                    recipient_stanza(dek, r, c.name, f"{c.name}/{j}")
                    for j, r in enumerate(c.recipients or [k.recipient])
                ],
            }
            if c.enc_hook:
                c.enc_hook(record)
        if c.contents_post:
            contents = c.contents_post(contents)
        seg_records = []
        blob = bytearray()
        for i, s in enumerate(c.segs):
            stored = s.payload
            rec: dict[str, Any] = {"blob": len(blobs), "plain": s.plain, "codec": s.codec}
            if dek is not None:
                salt = s.salt or rand(f"salt/{c.name}/{i}", 16)
                aad = segment_aad(s.aad_comp or c.name, s.unit, s.plain, s.codec)
                stored = envelope.seal_segment(dek, salt, aad, stored)
                rec["salt"] = salt
            if s.post:
                stored = s.post(stored)
            rec["stored"] = len(stored)
            rec["digest"] = sha256(stored)
            seg_records.append(rec)
            blob += stored
        if seg_records:
            blobs.append({"digest": sha256(bytes(blob)), "size": len(blob)})
            area += blob
        comps.append(
            {
                "name": c.name,
                "kind": c.kind,
                "media_type": c.media_type,
                "size": c.size if c.size is not None else sum(s.plain for s in c.segs),
                "contents": contents,
                "segments": seg_records,
                "encryption": record,
            }
        )
        if c.contents_codec is not None:
            comps[-1]["contents_codec"] = c.contents_codec
    manifest: dict[str, Any] = {
        "secpack": 1,
        "name": p.name,
        "version": p.version,
        "created": p.created,
        "metadata": dict(p.metadata),
        "components": comps,
        "blobs": blobs,
    }
    if p.expires is not None:
        manifest["expires"] = p.expires
    if p.manifest_hook:
        p.manifest_hook(manifest)
    mbytes = enc(manifest)
    if p.manifest_bytes_hook:
        mbytes = p.manifest_bytes_hook(mbytes)
    signers = [k.ed] if p.signers is None else p.signers
    entries = [("cose-sign1", cose(key, mbytes)) for key in signers]
    if p.sigs_hook:
        entries = p.sigs_hook(mbytes, entries)
    sig_section = enc({"signatures": [{"type": t, "data": d} for t, d in entries]})
    if p.sig_section_hook:
        sig_section = p.sig_section_hook(sig_section)
    offsets, pos = [], 0
    for b in blobs:
        offsets.append(pos)
        pos += b["size"]
    index_obj: Any = {"offsets": offsets, "pad": b""}
    if p.index_hook:
        index_obj = p.index_hook(index_obj)
    index = index_obj if isinstance(index_obj, bytes) else enc(index_obj)
    blob_area = bytes(area)
    if p.blob_area_hook:
        blob_area = p.blob_area_hook(blob_area)
    head = preamble(len(mbytes), len(index), len(blob_area))
    tail = b"SIGS" + len(sig_section).to_bytes(4, "big") + sig_section
    data = head + mbytes + index + blob_area + tail
    m_off = len(head)
    i_off = m_off + len(mbytes)
    b_off = i_off + len(index)
    return Forged(
        data=data,
        manifest=mbytes,
        m_off=m_off,
        m_len=len(mbytes),
        i_off=i_off,
        i_len=len(index),
        b_off=b_off,
        b_len=len(blob_area),
        s_off=b_off + len(blob_area),
    )


def set_preamble(data: bytes, **fields: int | bytes) -> bytes:
    """``data`` with some preamble fields replaced (magic, version, r1, m, i, b, r2)."""
    magic, version, r1, m, i, b, r2 = PREAMBLE.unpack(data[: PREAMBLE.size])
    cur = {"magic": magic, "version": version, "r1": r1, "m": m, "i": i, "b": b, "r2": r2}
    cur.update(fields)
    packed = PREAMBLE.pack(
        cur["magic"], cur["version"], cur["r1"], cur["m"], cur["i"], cur["b"], cur["r2"]
    )
    return packed + data[PREAMBLE.size :]


def replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    count = data.count(old)
    if count != 1:
        raise AssertionError(f"{old!r} occurs {count} times")
    return data.replace(old, new)


# --- the base package -------------------------------------------------------------------------


def _vectors_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "hostile_vectors_generate", ROOT / "tests" / "vectors" / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Base:
    """The golden test model (tests/vectors/generate.py), sealed by secpack with
    --no-encrypt and decoded into a :class:`Pkg` that cases copy and change."""

    def __init__(self, work: Path) -> None:
        from secpack.api.seal import seal

        self.model = work / "model"
        _vectors_module().build_model(self.model)
        sealed = work / "base.spk"
        saved = os.environ.get("SOURCE_DATE_EPOCH")
        os.environ["SOURCE_DATE_EPOCH"] = str(CREATED)
        try:
            # Without file runs: the cases change the files' own segments (the
            # golden vectors hold a run, and test_golden checks it).
            seal(str(self.model), str(sealed), encrypt=False, name=NAME, threads=1, file_runs=False)
        finally:
            if saved is None:
                del os.environ["SOURCE_DATE_EPOCH"]
            else:
                os.environ["SOURCE_DATE_EPOCH"] = saved
        self._template = self._decode(sealed)
        sealed.unlink()

    @staticmethod
    def _decode(path: Path) -> Pkg:
        from secpack.envelope.dek import segment_aad as secpack_aad
        from secpack.format.contents import parse_contents
        from secpack.format.limits import DEFAULT_LIMITS
        from secpack.package.reader import read_header, read_segment
        from secpack.transport.spkfile import FileSource

        comps = []
        with FileSource(str(path)) as src:
            header = read_header(src, DEFAULT_LIMITS)
            for ci, comp in enumerate(header.manifest.components):
                raw = comp.contents
                if comp.contents_size is not None:  # secpack compresses the table
                    raw = zstandard.ZstdDecompressor().decompress(raw)
                obj = cbor2.loads(raw)
                units = parse_contents(
                    obj, [s.plain for s in comp.segments], DEFAULT_LIMITS
                ).units()
                segs = []
                for si, s in enumerate(comp.segments):
                    u = units[si]
                    unit = (u.label[0], u.label[1], u.part, u.last)
                    # The forge's AAD must be secpack's, byte for byte.
                    if segment_aad(comp.name, unit, s.plain, s.codec.to_cbor()) != secpack_aad(
                        comp.name, u, s.plain, s.codec
                    ):
                        raise AssertionError("forge AAD differs from secpack's")
                    payload = read_segment(src, header, ci, si)
                    segs.append(Seg(s.plain, s.codec.to_cbor(), payload, unit))
                comps.append(Comp(comp.name, comp.kind, comp.media_type, obj, segs))
        return Pkg(comps)

    def pkg(self, encrypt: bool = True) -> Pkg:
        return copy.deepcopy(self._template).encrypted(encrypt)

    def file_bytes(self, path: str) -> bytes:
        return (self.model / path).read_bytes()
