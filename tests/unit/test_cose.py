"""COSE_Sign1: what secpack writes verifies; everything else is refused by code."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from secpack.errors import IntegrityError, SignatureError
from secpack.format.sections import SIG_TYPE_COSE_SIGN1, SignatureEntry
from secpack.recipes.keys import generate_signing, key_id
from secpack.sign import cose
from secpack.sign.policy import Policy, evaluate_signatures

MANIFEST = b"\xa1dnamefgolden"


@pytest.mark.parametrize("alg", ["ed25519", "ecdsa-p256", "ecdsa-p384"])
def test_sign_and_verify(alg: str) -> None:
    key = generate_signing(alg)
    data = cose.sign_manifest(key, MANIFEST)
    sig = cose.parse_sign1(data)
    assert sig.kid == key_id(key.public_key())
    assert cose.verify_sign1(sig, key.public_key(), MANIFEST)
    assert not cose.verify_sign1(sig, key.public_key(), MANIFEST + b"x")
    # Deterministic for every algorithm: reproducible sign-only packages.
    assert cose.sign_manifest(key, MANIFEST) == data


def _parts(data: bytes) -> list[Any]:
    return list(cbor2.loads(data).value)


def _build(protected: Any, unprotected: Any, payload: Any, signature: Any) -> bytes:
    prot = protected if isinstance(protected, bytes) else cbor2.dumps(protected, canonical=True)
    return b"\xd2" + cbor2.dumps([prot, unprotected, payload, signature], canonical=True)


KEY = generate_signing("ed25519")
KID = key_id(KEY.public_key())
GOOD = cose.sign_manifest(KEY, MANIFEST)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(GOOD[1:], id="untagged"),
        pytest.param(b"\xd1" + GOOD[1:], id="wrong-tag"),
        pytest.param(_build({1: -8, 4: KID}, {1: -8}, None, b"s" * 64), id="alg-unprotected"),
        pytest.param(_build({4: KID}, {1: -8}, None, b"s" * 64), id="alg-only-unprotected"),
        pytest.param(_build({1: -8, 2: [99], 4: KID}, {}, None, b"s" * 64), id="crit"),
        pytest.param(_build({1: -8, 4: KID, 99: 1}, {}, None, b"s" * 64), id="unknown-label"),
        pytest.param(_build({1: -257, 4: KID}, {}, None, b"s" * 64), id="rs256"),
        pytest.param(_build({1: "EdDSA", 4: KID}, {}, None, b"s" * 64), id="alg-as-text"),
        pytest.param(_build({1: -8, 4: KID[:16]}, {}, None, b"s" * 64), id="short-kid"),
        pytest.param(_build({1: -8, 4: KID}, {}, MANIFEST, b"s" * 64), id="attached-payload"),
        pytest.param(_build({1: -8, 4: KID}, {4: KID}, None, b"s" * 64), id="unprotected-kid"),
        pytest.param(
            _build(b"\xa2\x04\x58\x20" + KID + b"\x01\x27", {}, None, b"s" * 64),
            id="protected-unsorted",
        ),
        pytest.param(b"\xd2" + cbor2.dumps([b"", {}, None]), id="three-elements"),
    ],
)
def test_malformed_signatures(data: bytes) -> None:
    with pytest.raises(SignatureError) as err:
        cose.parse_sign1(data)
    assert err.value.code == "sig.malformed"


def _policy(*keys: Any, threshold: int = 1) -> Policy:
    return Policy(keys={key_id(k.public_key()): k.public_key() for k in keys}, threshold=threshold)


def _entries(*datas: bytes) -> list[SignatureEntry]:
    return [SignatureEntry(SIG_TYPE_COSE_SIGN1, d) for d in datas]


def test_threshold_counts_distinct_keys() -> None:
    a, b, c = (generate_signing(x) for x in ("ed25519", "ecdsa-p256", "ecdsa-p384"))
    sa, sb = cose.sign_manifest(a, MANIFEST), cose.sign_manifest(b, MANIFEST)
    two_of_three = _policy(a, b, c, threshold=2)
    assert len(evaluate_signatures(MANIFEST, _entries(sa, sb), two_of_three)) == 2
    for entries in (_entries(sa), _entries(sa, sa)):
        with pytest.raises(SignatureError) as err:
            evaluate_signatures(MANIFEST, entries, two_of_three)
        assert err.value.code == "sig.threshold"


def test_untrusted_missing_and_bad_signatures() -> None:
    a, stranger = generate_signing("ed25519"), generate_signing("ed25519")
    with pytest.raises(SignatureError) as err:
        evaluate_signatures(MANIFEST, [], _policy(a))
    assert err.value.code == "sig.missing"
    with pytest.raises(SignatureError) as err:
        evaluate_signatures(MANIFEST, _entries(cose.sign_manifest(stranger, MANIFEST)), _policy(a))
    assert err.value.code == "sig.untrusted"
    # A trusted key's signature over other bytes: integrity, not "untrusted".
    with pytest.raises(IntegrityError):
        evaluate_signatures(MANIFEST, _entries(cose.sign_manifest(a, MANIFEST + b"!")), _policy(a))
    # Unknown entry types never count.
    with pytest.raises(SignatureError) as err:
        evaluate_signatures(MANIFEST, [SignatureEntry("x-future", b"")], _policy(a))
    assert err.value.code == "sig.untrusted"


def test_algorithm_must_match_the_trusted_key() -> None:
    ed = generate_signing("ed25519")
    kid = key_id(ed.public_key())
    forged = _build({1: -7, 4: kid}, {}, None, b"s" * 64)  # claims ES256 for an Ed25519 key
    with pytest.raises(SignatureError) as err:
        evaluate_signatures(MANIFEST, _entries(forged), _policy(ed))
    assert err.value.code == "sig.malformed"
