"""Manifest schema and cross-field rules, on mutations of a real manifest."""

from __future__ import annotations

import copy
import struct
from pathlib import Path
from typing import Any

import cbor2
import pytest

from secpack.errors import SchemaError
from secpack.format.limits import DEFAULT_LIMITS
from secpack.format.manifest import parse_manifest

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def _manifest(name: str) -> dict[str, Any]:
    data = (VECTORS / name).read_bytes()
    (m_len,) = struct.unpack(">I", data[12:16])
    return cbor2.loads(data[32 : 32 + m_len])  # type: ignore[no-any-return]


@pytest.fixture
def plain() -> dict[str, Any]:
    return _manifest("plain-signed.spk")


@pytest.fixture
def encrypted() -> dict[str, Any]:
    return _manifest("encrypted.spk")


def _code(obj: Any) -> str:
    with pytest.raises(SchemaError) as err:
        parse_manifest(obj, DEFAULT_LIMITS)
    return err.value.code


def test_round_trip(plain: dict[str, Any], encrypted: dict[str, Any]) -> None:
    for doc in (plain, encrypted):
        m = parse_manifest(doc, DEFAULT_LIMITS)
        assert m.to_cbor() == doc


def _weights(doc: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in doc["components"] if c["name"] == "weights")


def _bg_width_one(comp: dict[str, Any]) -> None:
    """A bg record that is consistent except for its width of 1 (no planes to group)."""
    seg = comp["segments"][0]
    n = seg["plain"]
    seg["codec"] = {"id": "bg", "width": 1, "rot": 0, "planes": [{"id": "raw", "size": n}]}
    seg["stored"] = n


MUTATIONS = {
    "unknown top-level key": (lambda d: d.__setitem__("extra", 1), "schema.invalid"),
    "missing name": (lambda d: d.pop("name"), "schema.invalid"),
    "bad name": (lambda d: d.__setitem__("name", "../evil"), "schema.invalid"),
    "version zero": (lambda d: d.__setitem__("version", 0), "schema.invalid"),
    "version is bool": (lambda d: d.__setitem__("version", True), "schema.invalid"),
    "format 2": (lambda d: d.__setitem__("secpack", 2), "schema.unsupported"),
    "crit extension": (lambda d: d.__setitem__("crit", ["x-new"]), "schema.unsupported"),
    "expires before created": (lambda d: d.__setitem__("expires", d["created"]), "schema.invalid"),
    "no components": (lambda d: d.__setitem__("components", []), "schema.invalid"),
    "duplicate component": (
        lambda d: d["components"].append(copy.deepcopy(d["components"][0])),
        "schema.invalid",
    ),
    "unknown kind": (lambda d: d["components"][0].__setitem__("kind", "exe"), "schema.invalid"),
    "size mismatch": (lambda d: _weights(d).__setitem__("size", 1), "schema.invalid"),
    "unknown codec": (
        lambda d: _weights(d)["segments"][0].__setitem__("codec", {"id": "lz4"}),
        "schema.unsupported",
    ),
    "bg of one-byte elements": (lambda d: _bg_width_one(_weights(d)), "schema.invalid"),
    "stored disagrees with codec": (
        lambda d: _weights(d)["segments"][0].__setitem__("stored", 999999),
        "schema.invalid",
    ),
    "short digest": (
        lambda d: _weights(d)["segments"][0].__setitem__("digest", b"\0" * 31),
        "schema.invalid",
    ),
    "salt on plain component": (
        lambda d: _weights(d)["segments"][0].__setitem__("salt", b"\0" * 16),
        "schema.invalid",
    ),
    "segment in wrong blob": (
        lambda d: _weights(d)["segments"][0].__setitem__("blob", 7),
        "schema.invalid",
    ),
    "blob size off by one": (
        lambda d: d["blobs"][0].__setitem__("size", d["blobs"][0]["size"] + 1),
        "schema.invalid",
    ),
    "extra blob": (
        lambda d: d["blobs"].append({"digest": b"\0" * 32, "size": 1}),
        "schema.invalid",
    ),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_mutations_are_refused(plain: dict[str, Any], case: str) -> None:
    mutate, code = MUTATIONS[case]
    mutate(plain)
    assert _code(plain) == code


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("enc", b"\0" * 31, "schema.invalid"),
        ("wrapped", b"\0" * 47, "schema.invalid"),
        ("kid", b"\0" * 33, "schema.invalid"),
        ("type", "rsa-oaep", "schema.unsupported"),
    ],
)
def test_recipient_lengths_checked_before_crypto(
    encrypted: dict[str, Any], field: str, value: Any, code: str
) -> None:
    encrypted["components"][0]["encryption"]["recipients"][0][field] = value
    assert _code(encrypted) == code


def test_encrypted_segment_needs_salt(encrypted: dict[str, Any]) -> None:
    _weights(encrypted)["segments"][0].pop("salt")
    assert _code(encrypted) == "schema.invalid"


def test_component_count_limit(plain: dict[str, Any]) -> None:
    from dataclasses import replace

    with pytest.raises(SchemaError):
        parse_manifest(plain, replace(DEFAULT_LIMITS, max_components=2))
