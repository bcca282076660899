"""Fuzz targets for the reader entry points. Only SecpackError may escape them;
anything else (or a hang, or runaway memory) is a finding.

- ``header``: framing, bounded header, strict CBOR, schema and the blob index.
- ``manifest``: strict CBOR and the manifest schema on raw bytes, plus the
  contents schema of every unencrypted component.
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

# Everything the targets reach is imported here, at the top: atheris instruments the
# modules imported while this file loads, and nothing imported later.
import secpack.api.loader
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
import secpack.tensors.safetensors  # noqa: F401
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
    from secpack.format.manifest import parse_manifest

    limits = DEFAULT_LIMITS
    try:
        obj = cbor.decode(
            data,
            max_bytes=limits.max_manifest_bytes,
            max_depth=limits.max_cbor_depth,
            max_items=limits.max_cbor_items,
        )
        manifest = parse_manifest(obj, limits)
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


TARGETS = {"header": target_header, "manifest": target_manifest, "open": target_open}
