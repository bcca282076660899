"""Property tests over whole packages: any schema-valid manifest whose signature no
longer matches is refused before a single segment is read, and any bit flip,
truncation or extension of a valid package is refused."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secpack.errors import SecpackError
from secpack.format.limits import DEFAULT_LIMITS
from secpack.format.manifest import parse_manifest
from secpack.package.reader import check_trust, read_header, verify_segments
from secpack.sign.policy import Policy, policy_from_keys

ROOT = Path(__file__).resolve().parents[2]
VECTOR = (ROOT / "tests" / "vectors" / "plain-signed.spk").read_bytes()
KEYS = ROOT / "keys-example"


class Source:
    """An in-memory package that records which byte ranges were read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        self.reads: list[tuple[int, int]] = []

    def read_at(self, offset: int, length: int) -> bytes:
        if offset + length > self.size:
            raise SecpackError("container.framing", "short")
        self.reads.append((offset, length))
        return self.data[offset : offset + length]


def _policy() -> Policy:
    """Both signers of the vector, both required: then every byte of the signature
    section is covered too. (Bytes of a signature by a key the policy does not list
    are not protected by anything: docs/SECURITY.md.)"""
    names = ("signing-ed25519.key.pub", "signing-p256.key.pub")
    trusted = policy_from_keys([(n, (KEYS / n).read_bytes()) for n in names])
    return Policy(keys=trusted.keys, threshold=2, rollback=False)


def _split(data: bytes) -> tuple[bytes, bytes, bytes]:
    (m_len,) = struct.unpack(">I", data[12:16])
    return data[:12], data[32 : 32 + m_len], data[32 + m_len :]


def _replace_manifest(data: bytes, manifest: bytes) -> bytes:
    old_len, i_len, b_len = struct.unpack(">IIQ", data[12:28])
    head = data[:12] + struct.pack(">IIQ", len(manifest), i_len, b_len) + data[28:32]
    return head + manifest + data[32 + old_len :]


MANIFEST: dict[str, Any] = cbor2.loads(_split(VECTOR)[1])

mutations = st.one_of(
    st.tuples(st.just("version"), st.integers(min_value=1, max_value=2**40)),
    st.tuples(st.just("name"), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)),
    st.tuples(st.just("created"), st.integers(min_value=0, max_value=2**33)),
    st.tuples(
        st.just("metadata"),
        st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4),
    ),
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(mutations)
def test_resigned_nothing_no_segment_is_read(change: tuple[str, Any]) -> None:
    field, value = change
    doc = dict(MANIFEST)
    doc[field] = value
    if doc == MANIFEST:
        return
    manifest = bytes(cbor2.dumps(doc, canonical=True))
    parse_manifest(cbor2.loads(manifest), DEFAULT_LIMITS)  # schema-valid by construction
    src = Source(_replace_manifest(VECTOR, manifest))
    with pytest.raises(SecpackError) as err:
        header = read_header(src, DEFAULT_LIMITS)
        check_trust(header, _policy(), now=1767225600 + 10)
        verify_segments(src, header)
    # A trusted key's signature over other bytes: integrity, never "untrusted".
    assert err.value.code == "integrity"
    blob_start = 32 + len(manifest) + struct.unpack(">I", VECTOR[16:20])[0]
    blob_end = blob_start + struct.unpack(">Q", VECTOR[20:28])[0]
    assert all(not (blob_start <= off < blob_end) for off, n in src.reads if n)


def _refused(data: bytes) -> bool:
    src = Source(data)
    try:
        header = read_header(src, DEFAULT_LIMITS)
        check_trust(header, _policy(), now=1767225600 + 10)
        verify_segments(src, header)
    except SecpackError:
        return True
    return False


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(VECTOR) * 8 - 1))
def test_any_bit_flip_is_refused(bit: int) -> None:
    data = bytearray(VECTOR)
    data[bit // 8] ^= 1 << (bit % 8)
    assert _refused(bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(VECTOR) - 1), st.binary(min_size=1, max_size=64))
def test_any_truncation_or_extension_is_refused(cut: int, extra: bytes) -> None:
    assert _refused(VECTOR[:cut])
    assert _refused(VECTOR + extra)


def test_the_unmodified_vector_is_accepted() -> None:
    assert not _refused(VECTOR)
