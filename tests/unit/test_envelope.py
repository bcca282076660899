"""Envelope encryption: AAD binding, key commitment, and no (key, nonce) reuse,
across package versions that share a data key included."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from secpack.envelope import dek as envelope
from secpack.errors import IntegrityError, KeyUseError
from secpack.format.contents import Unit
from secpack.format.manifest import Codec, Encryption
from secpack.recipes import aead


def test_segment_round_trip_and_aad_binding() -> None:
    dek, salt = envelope.new_dek(), envelope.new_salt()
    unit = Unit(("tensor", "w"), 0, False)
    aad = envelope.segment_aad("weights", unit, 4, Codec("raw"))
    stored = envelope.seal_segment(dek, salt, aad, b"abcd")
    assert envelope.open_segment(dek, salt, aad, stored) == b"abcd"
    variants = [
        envelope.segment_aad("adapter:x", unit, 4, Codec("raw")),  # moved to another component
        envelope.segment_aad("weights", Unit(("tensor", "v"), 0, False), 4, Codec("raw")),
        envelope.segment_aad(
            "weights", Unit(("tensor", "w"), 1, False), 4, Codec("raw")
        ),  # reordered
        envelope.segment_aad(
            "weights", Unit(("tensor", "w"), 0, True), 4, Codec("raw")
        ),  # truncation
        envelope.segment_aad("weights", unit, 4, Codec("zstd", size=4)),  # codec swapped
    ]
    for other in variants:
        with pytest.raises(IntegrityError) as err:
            envelope.open_segment(dek, salt, other, stored)
        assert err.value.code == "integrity"
    with pytest.raises(IntegrityError):
        envelope.open_segment(dek, envelope.new_salt(), aad, stored)


def _identity() -> x25519.X25519PrivateKey:
    return x25519.X25519PrivateKey.generate()


def test_wrap_unwrap_and_commitment() -> None:
    me, other = _identity(), _identity()
    dek = envelope.new_dek()
    record = envelope.encryption_record(dek, envelope.new_salt(), [me.public_key()], "config")
    assert envelope.unwrap_dek(record, [other, me], "config") == dek
    with pytest.raises(KeyUseError) as err:
        envelope.unwrap_dek(record, [other], "config")
    assert err.value.code == "key.no-recipient"
    # The wrap is bound to its component.
    with pytest.raises(IntegrityError):
        envelope.unwrap_dek(record, [me], "weights")
    # A wrap of a different key under the same commitment is refused (key commitment).
    forged = envelope.encryption_record(
        envelope.new_dek(), record.contents_salt, [me.public_key()], "config"
    )
    mixed = Encryption(record.alg, record.commitment, record.contents_salt, forged.recipients)
    with pytest.raises(IntegrityError):
        envelope.unwrap_dek(mixed, [me], "config")


def test_low_order_encapsulated_key_is_refused_before_decryption() -> None:
    me = _identity()
    dek = envelope.new_dek()
    record = envelope.encryption_record(dek, envelope.new_salt(), [me.public_key()], "c")
    stanza = record.recipients[0]
    for point in (bytes(32), bytes([1]) + bytes(31)):  # 0 and 1 are low-order points
        bad = Encryption(
            record.alg,
            record.commitment,
            record.contents_salt,
            (type(stanza)(stanza.type, stanza.kid, point, stanza.wrapped),),
        )
        with pytest.raises(IntegrityError):
            envelope.unwrap_dek(bad, [me], "c")


def _segments(path: Path, dek: bytes) -> list[tuple[bytes, bytes]]:
    """(derived AES key, nonce) of every AEAD message in a package, with its stored digest."""
    data = path.read_bytes()
    (m_len,) = struct.unpack(">I", data[12:16])
    manifest = cbor2.loads(data[32 : 32 + m_len])
    out = []
    for comp in manifest["components"]:
        enc = comp["encryption"]
        out.append(
            (
                aead.derive(dek, enc["contents_salt"], b"secpack/1 contents key"),
                hashlib.sha256(comp["contents"]).digest(),
            )
        )
        for seg in comp["segments"]:
            out.append((aead.derive(dek, seg["salt"], b"secpack/1 segment key"), seg["digest"]))
    return out


def test_no_key_nonce_reuse_across_versions_sharing_a_dek(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seal v1, change one tensor, seal v2 under the same DEK (as a delta update would),
    and seal v2 again: every AES-GCM key (the nonce is fixed) encrypts one message only."""
    from secpack.api.seal import seal

    fixed_dek = b"\x42" * 32
    monkeypatch.setattr(envelope, "new_dek", lambda: fixed_dek)
    me = _identity()
    model = tmp_path / "m"
    model.mkdir()
    (model / "a.bin").write_bytes(b"first version" * 1000)
    (model / "b.bin").write_bytes(b"unchanged" * 1000)
    seal(str(model), str(tmp_path / "v1.spk"), recipients=[(None, me.public_key())], version=1)
    (model / "a.bin").write_bytes(b"second version" * 1000)
    seal(str(model), str(tmp_path / "v2.spk"), recipients=[(None, me.public_key())], version=2)
    seal(str(model), str(tmp_path / "v2b.spk"), recipients=[(None, me.public_key())], version=2)
    seen: dict[bytes, bytes] = {}
    total = 0
    for name in ("v1.spk", "v2.spk", "v2b.spk"):
        for key, digest in _segments(tmp_path / name, fixed_dek):
            total += 1
            assert seen.setdefault(key, digest) == digest, "a key encrypted two different messages"
    # Stronger: no derived key is used twice at all, even for the same plaintext.
    assert len(seen) == total


def test_seal_segment_into_writes_what_seal_segment_returns() -> None:
    dek, salt = envelope.new_dek(), envelope.new_salt()
    aad = b"aad"
    out = bytearray(4 + 16)
    envelope.seal_segment_into(dek, salt, aad, b"abcd", memoryview(out))
    assert bytes(out) == envelope.seal_segment(dek, salt, aad, b"abcd")
    assert envelope.open_segment(dek, salt, aad, bytes(out)) == b"abcd"
    with pytest.raises(ValueError):
        envelope.seal_segment_into(dek, salt, aad, b"abcd", memoryview(bytearray(19)))
