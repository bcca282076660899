"""The hostile corpus: adversarial packages, each with the error code a reader
must give for it, built deterministically by tests/hostile/forge.py.

    .venv/bin/python tests/hostile/generate.py --out DIR   # write the corpus into DIR
    .venv/bin/python tests/hostile/generate.py --table     # rewrite tests/hostile/TABLE.md

Every case names the code (secpack.errors.CODES) that each way of reading it
must end with:

- ``verify``: ``secpack verify`` and ``secpack.api.verify.verify``;
- ``open``: ``secpack open`` and ``secpack.api.extract.extract``;
- ``load``: ``secpack.open_package`` followed by ``files``, ``state_dict`` and
  ``read_file`` on every component.

``OK`` means that way of reading legitimately succeeds: ``verify`` decrypts and
decodes nothing (docs/FORMAT.md §9, steps 1-7), so attacks hidden behind a
valid signature and valid digests (contents, codecs, tensor table, paths,
AEAD, key wrap) are for ``open`` and ``load`` to catch; and the loader writes
no files, so a booby-trapped output directory only concerns ``open``.

A tuple of codes is allowed only where the format genuinely leaves the choice
open; the case's ``why`` says so. ``bugs`` names the ways of reading where
secpack is known to misbehave (kept as strict xfails by test_corpus.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import cbor2
import zstandard

from secpack.envelope.dek import seal_segment

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from forge import (  # noqa: E402  (the forge sits next to this file)
    CONTENT_TYPE,
    CREATED,
    KEYS,
    NAME,
    Base,
    Comp,
    Pkg,
    Seg,
    build,
    cose,
    dek_of,
    enc,
    keys,
    rand,
    replace_once,
    segment_aad,
    set_preamble,
)

OK = "ok"
Expect = str | tuple[str, ...]
MiB = 1 << 20

BEHIND = (
    "verify checks framing, manifest, signatures and segment digests only "
    "(FORMAT.md §9 steps 1-7) and decrypts or decodes nothing, so it accepts this "
    "validly signed package; open and load must refuse it"
)
OUTPUT_ONLY = "the loader writes no files, so only open is concerned with the output path"


@dataclass(frozen=True)
class Built:
    """A case's package and how to read it."""

    data: bytes
    policy: str = "trust"  # "trust": --trust the Ed25519 test key; else a name in POLICIES
    name: str | None = None  # --name / expected_name
    identity: str = "recipient"  # --identity: keys/<identity>-x25519.key
    state: str | None = None  # text of versions.json planted in the state directory
    outdir: str = "fresh"  # how the -o path is prepared (runner.prepare_output)


@dataclass(frozen=True)
class Case:
    id: str
    cls: str
    title: str
    verify: Expect
    open: Expect
    load: Expect
    build: Callable[[Base], Built | bytes] = field(repr=False)
    why: str = ""
    bugs: Mapping[str, str] = field(default_factory=dict)  # op -> known secpack bug
    isolate: bool = False  # own runner process, verify only (see test_corpus.py)

    def expect(self, op: str) -> tuple[str, ...]:
        value = {"verify": self.verify, "open": self.open, "load": self.load}[op]
        return value if isinstance(value, tuple) else (value,)


CASES: list[Case] = []
CLASSES = (
    "container",
    "cbor",
    "schema",
    "signature",
    "crypto",
    "compression",
    "tensor",
    "paths",
    "resources",
)
_SAME: Any = object()


def case(
    cls: str,
    cid: str,
    title: str,
    code: Expect,
    *,
    verify: Expect = _SAME,
    load: Expect = _SAME,
    why: str = "",
    bugs: Mapping[str, str] | None = None,
    isolate: bool = False,
) -> Callable[[Callable[[Base], Built | bytes]], Callable[[Base], Built | bytes]]:
    assert cls in CLASSES, cls

    def register(fn: Callable[[Base], Built | bytes]) -> Callable[[Base], Built | bytes]:
        CASES.append(
            Case(
                id=cid,
                cls=cls,
                title=title,
                verify=code if verify is _SAME else verify,
                open=code,
                load=code if load is _SAME else load,
                build=fn,
                why=why,
                bugs=dict(bugs or {}),
                isolate=isolate,
            )
        )
        return fn

    return register


def both(
    cls: str,
    cid: str,
    title: str,
    code: Expect,
    fn: Callable[..., Built | bytes],
    *,
    plain: bool = True,
    **kwargs: Any,
) -> None:
    """Register an encrypted variant and (unless ``plain=False``) a --no-encrypt one."""
    case(cls, f"{cid}-enc", f"{title} (encrypted)", code, **kwargs)(partial(fn, encrypt=True))
    if plain:
        plain_kwargs = dict(kwargs)
        if kwargs.get("verify") == OK and code in CONTENTS_CODES:
            # verify checks the contents of unencrypted components (no key needed),
            # so it refuses what only an identity could see in the encrypted variant.
            plain_kwargs["verify"] = code
        case(cls, f"{cid}-plain", f"{title} (--no-encrypt)", code, **plain_kwargs)(
            partial(fn, encrypt=False)
        )


# The codes of defects in a component's contents (file table, paths, tensor table).
CONTENTS_CODES = ("schema.invalid", "schema.unsupported", "tensor.invalid")


def valid(b: Base, encrypt: bool = True) -> bytes:
    return build(b.pkg(encrypt)).data


# --- raw CBOR pieces ------------------------------------------------------------------------


def head(major: int, arg: int) -> bytes:
    """Shortest-form CBOR head."""
    if arg < 24:
        return bytes([major << 5 | arg])
    for ai, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if arg < 1 << (8 * width):
            return bytes([major << 5 | ai]) + arg.to_bytes(width, "big")
    raise ValueError(arg)


def tstr(text: str) -> bytes:
    raw = text.encode()
    return head(3, len(raw)) + raw


MARKER = b"hostile-marker!!"  # 16 bytes: a byte string no real field holds


def with_ext(b: Base, fragment: bytes, *, encrypt: bool = False) -> bytes:
    """A signed manifest whose ``ext`` (a map readers MAY ignore) holds the raw CBOR
    ``fragment`` under the key "x": without the fragment's defect the package is valid,
    so the defect alone decides the code."""
    p = b.pkg(encrypt)
    p.manifest_hook = lambda m: m.__setitem__("ext", {"x": MARKER})
    p.manifest_bytes_hook = lambda mb: replace_once(mb, enc(MARKER), fragment)
    return build(p).data


def edit_manifest(b: Base, old: bytes, new: bytes, *, encrypt: bool = False) -> bytes:
    p = b.pkg(encrypt)
    p.manifest_bytes_hook = lambda mb: replace_once(mb, old, new)
    return build(p).data


VERSION_1 = tstr("version") + b"\x01"
CREATED_CBOR = tstr("created") + head(0, CREATED)


# === container framing =======================================================================


@case("container", "magic-bad", "first magic byte changed", "container.magic")
def c_magic_bad(b: Base) -> bytes:
    return set_preamble(valid(b), magic=b"\x88SPK\r\n\x1a\n")


@case("container", "magic-text-mode", "CRLF in the magic turned into LF", "container.magic")
def c_magic_text(b: Base) -> bytes:
    return valid(b).replace(b"\r\n", b"\n", 1)


@case("container", "empty-file", "zero-byte file", "container.magic")
def c_empty(b: Base) -> bytes:
    return b""


@case("container", "truncated-in-magic", "file cut inside the magic", "container.magic")
def c_trunc_magic(b: Base) -> bytes:
    return valid(b)[:5]


@case("container", "version-2", "container version 2", "container.version")
def c_version(b: Base) -> bytes:
    return set_preamble(valid(b), version=2)


@case("container", "reserved-1-set", "reserved field at offset 10 non-zero", "container.version")
def c_reserved1(b: Base) -> bytes:
    return set_preamble(valid(b), r1=1)


@case("container", "reserved-2-set", "reserved field at offset 28 non-zero", "container.version")
def c_reserved2(b: Base) -> bytes:
    return set_preamble(valid(b), r2=0x80000000)


@case("container", "manifest-length-zero", "manifest length 0", "container.framing")
def c_m_zero(b: Base) -> bytes:
    return set_preamble(valid(b), m=0)


@case(
    "container",
    "manifest-length-over-cap",
    "manifest length 64 MiB + 1, over max_manifest_bytes",
    "container.framing",
)
def c_m_cap(b: Base) -> bytes:
    return set_preamble(valid(b), m=64 * MiB + 1)


@case(
    "container",
    "manifest-length-past-eof",
    "manifest length under the cap but beyond the file",
    "container.framing",
)
def c_m_eof(b: Base) -> bytes:
    return set_preamble(valid(b), m=MiB)


@case("container", "index-length-zero", "index length 0", "container.framing")
def c_i_zero(b: Base) -> bytes:
    return set_preamble(valid(b), i=0)


@case("container", "index-length-over-cap", "index length 16 MiB + 1", "container.framing")
def c_i_cap(b: Base) -> bytes:
    return set_preamble(valid(b), i=16 * MiB + 1)


@case("container", "blob-length-huge", "blob area length 2^64-1", "container.framing")
def c_b_huge(b: Base) -> bytes:
    return set_preamble(valid(b), b=2**64 - 1)


@case("container", "trailing-data", "one byte after the signature section", "container.framing")
def c_trailing(b: Base) -> bytes:
    return valid(b) + b"\x00"


@case("container", "truncated-preamble", "file cut inside the preamble", "container.framing")
def c_trunc_pre(b: Base) -> bytes:
    return valid(b)[:20]


@case("container", "truncated-blobs", "file cut inside the blob area", "container.framing")
def c_trunc_blobs(b: Base) -> bytes:
    f = build(b.pkg())
    return f.data[: f.b_off + 10]


@case("container", "truncated-signatures", "last byte of the file missing", "container.framing")
def c_trunc_sigs(b: Base) -> bytes:
    return valid(b)[:-1]


@case("container", "sigs-tag-bad", "'SIGS' marker replaced", "container.framing")
def c_sigs_tag(b: Base) -> bytes:
    f = build(b.pkg())
    return f.data[: f.s_off] + b"SIGZ" + f.data[f.s_off + 4 :]


@case(
    "container",
    "sig-length-over-cap",
    "signature section length 4 MiB + 1",
    "container.framing",
)
def c_s_cap(b: Base) -> bytes:
    f = build(b.pkg())
    return f.data[: f.s_off + 4] + (4 * MiB + 1).to_bytes(4, "big") + f.data[f.s_off + 8 :]


@case(
    "container",
    "boundary-late",
    "manifest length +1 / index length -1: sections overlap, the manifest gains a byte",
    "cbor.malformed",
    why="framing sums still match the file; the manifest item is followed by a stray byte",
)
def c_boundary_late(b: Base) -> bytes:
    f = build(b.pkg())
    return set_preamble(f.data, m=f.m_len + 1, i=f.i_len - 1)


@case(
    "container",
    "boundary-early",
    "manifest length -1 / index length +1: the manifest loses its last byte",
    "cbor.malformed",
    why="framing sums still match the file; the manifest item is truncated",
)
def c_boundary_early(b: Base) -> bytes:
    f = build(b.pkg())
    return set_preamble(f.data, m=f.m_len - 1, i=f.i_len + 1)


def _index_offsets(b: Base, change: Callable[[list[int]], list[int]]) -> bytes:
    p = b.pkg()
    p.index_hook = lambda idx: {"offsets": change(list(idx["offsets"])), "pad": idx["pad"]}
    return build(p).data


@case("container", "index-overlap", "index puts blob 1 inside blob 0", "container.framing")
def c_idx_overlap(b: Base) -> bytes:
    return _index_offsets(b, lambda o: [o[0], o[1] - 1, *o[2:]])


@case("container", "index-gap", "index leaves a gap before blob 2", "container.framing")
def c_idx_gap(b: Base) -> bytes:
    return _index_offsets(b, lambda o: [*o[:2], o[2] + 1, *o[3:]])


@case("container", "index-out-of-order", "index lists blobs out of order", "container.framing")
def c_idx_order(b: Base) -> bytes:
    return _index_offsets(b, lambda o: [o[0], o[2], o[1], *o[3:]])


@case("container", "index-missing-offset", "index lacks the last blob", "container.framing")
def c_idx_missing(b: Base) -> bytes:
    return _index_offsets(b, lambda o: o[:-1])


@case(
    "container",
    "blob-area-gap",
    "an unaccounted byte between blobs 0 and 1 (blob area 1 byte too long)",
    "container.framing",
)
def c_area_gap(b: Base) -> bytes:
    p = b.pkg()
    size0 = sum(len(s.payload) + 16 for s in p.comps[0].segs)
    p.blob_area_hook = lambda area: area[:size0] + b"\x00" + area[size0:]
    return build(p).data


@case("container", "index-pad-nonzero", "non-zero index padding", "container.framing")
def c_idx_pad(b: Base) -> bytes:
    p = b.pkg()
    p.index_hook = lambda idx: {"offsets": idx["offsets"], "pad": b"\x00\x01"}
    return build(p).data


@case("container", "index-unknown-key", "index map with an extra key", "schema.invalid")
def c_idx_key(b: Base) -> bytes:
    p = b.pkg()
    p.index_hook = lambda idx: {**idx, "more": 0}
    return build(p).data


@case(
    "container",
    "blobs-swapped",
    "blobs 1 and 2 swapped in the blob area; manifest and index unchanged",
    "integrity",
)
def c_blobs_swapped(b: Base) -> bytes:
    p = b.pkg()
    sizes = [sum(len(s.payload) + 16 for s in c.segs) for c in p.comps]
    a, m = sizes[0], sizes[1]

    def swap(area: bytes) -> bytes:
        return (
            area[:a] + area[a + m : a + m + sizes[2]] + area[a : a + m] + area[a + m + sizes[2] :]
        )

    p.blob_area_hook = swap
    return build(p).data


# === strict CBOR =============================================================================


@case("cbor", "depth-20", "20 nested arrays in the manifest (limit 16)", "cbor.limit")
def b_depth(b: Base) -> bytes:
    return with_ext(b, b"\x81" * 20 + b"\x00")


@case("cbor", "indefinite-array", "indefinite-length array", "cbor.forbidden")
def b_indef_array(b: Base) -> bytes:
    return with_ext(b, b"\x9f\x01\x02\xff")


@case("cbor", "indefinite-text", "indefinite-length text string", "cbor.forbidden")
def b_indef_text(b: Base) -> bytes:
    return with_ext(b, b"\x7f\x61a\x61b\xff")


@case("cbor", "indefinite-bytes", "indefinite-length byte string", "cbor.forbidden")
def b_indef_bytes(b: Base) -> bytes:
    return with_ext(b, b"\x5f\x41\x00\xff")


@case("cbor", "indefinite-map-top", "the manifest itself an indefinite map", "cbor.forbidden")
def b_indef_map(b: Base) -> bytes:
    p = b.pkg(False)
    p.manifest_bytes_hook = lambda mb: b"\xbf" + mb[1:] + b"\xff"
    return build(p).data


@case("cbor", "duplicate-key-top", "'version' twice in the manifest map", "cbor.noncanonical")
def b_dup_top(b: Base) -> bytes:
    p = b.pkg(False)

    def dup(mb: bytes) -> bytes:
        assert mb[0] == 0xA7
        return b"\xa8" + replace_once(mb[1:], VERSION_1, VERSION_1 + VERSION_1)

    p.manifest_bytes_hook = dup
    return build(p).data


@case("cbor", "duplicate-key-text", "a map with the text key 'a' twice", "cbor.noncanonical")
def b_dup_text(b: Base) -> bytes:
    return with_ext(b, b"\xa2" + tstr("a") + b"\x00" + tstr("a") + b"\x00")


@case("cbor", "key-int", "integer map key 1", "cbor.forbidden")
def b_key_int(b: Base) -> bytes:
    return with_ext(b, b"\xa1\x01\x00")


@case("cbor", "key-float", "float map key 1.0", "cbor.forbidden")
def b_key_float(b: Base) -> bytes:
    return with_ext(b, b"\xa1\xf9\x3c\x00\x00")


@case("cbor", "key-true", "map key true", "cbor.forbidden")
def b_key_true(b: Base) -> bytes:
    return with_ext(b, b"\xa1\xf5\x00")


@case(
    "cbor",
    "keys-1-alike",
    "keys '1', 1, 1.0 and true in one map (equal to some decoders)",
    "cbor.forbidden",
)
def b_keys_alike(b: Base) -> bytes:
    return with_ext(b, b"\xa4" + tstr("1") + b"\x00\x01\x00\xf9\x3c\x00\x00\xf5\x00")


@case("cbor", "key-bytes", "byte-string map key", "cbor.forbidden")
def b_key_bytes(b: Base) -> bytes:
    return with_ext(b, b"\xa1\x41a\x00")


@case("cbor", "int-non-shortest", "version 1 encoded in two bytes", "cbor.noncanonical")
def b_int_long(b: Base) -> bytes:
    return edit_manifest(b, VERSION_1, tstr("version") + b"\x18\x01")


@case("cbor", "int-non-shortest-8", "created encoded in 8 bytes", "cbor.noncanonical")
def b_int_long8(b: Base) -> bytes:
    return edit_manifest(b, CREATED_CBOR, tstr("created") + b"\x1b" + CREATED.to_bytes(8, "big"))


@case("cbor", "length-non-shortest", "text length in a 1-byte extension", "cbor.noncanonical")
def b_len_long(b: Base) -> bytes:
    return edit_manifest(b, tstr("name") + tstr(NAME), tstr("name") + b"\x78\x07" + NAME.encode())


@case("cbor", "float-double", "1.0 encoded as a double", "cbor.noncanonical")
def b_float_double(b: Base) -> bytes:
    return with_ext(b, b"\xfb\x3f\xf0\x00\x00\x00\x00\x00\x00")


@case("cbor", "float-single", "1.5 encoded as a single", "cbor.noncanonical")
def b_float_single(b: Base) -> bytes:
    return with_ext(b, b"\xfa\x3f\xc0\x00\x00")


@case("cbor", "float-nan-payload", "a NaN with a payload", "cbor.noncanonical")
def b_float_nan(b: Base) -> bytes:
    return with_ext(b, b"\xf9\x7e\x01")


@case("cbor", "keys-unsorted", "manifest keys in insertion order", "cbor.noncanonical")
def b_unsorted(b: Base) -> bytes:
    p = b.pkg(False)
    holder: dict[str, Any] = {}
    p.manifest_hook = lambda m: holder.setdefault("m", m)
    p.manifest_bytes_hook = lambda mb: bytes(cbor2.dumps(holder["m"], canonical=False))
    return build(p).data


@case("cbor", "tag-0", "created as a tag-0 date string", "cbor.forbidden")
def b_tag0(b: Base) -> bytes:
    return edit_manifest(b, CREATED_CBOR, tstr("created") + b"\xc0" + tstr("2020-09-13T12:26:40Z"))


@case("cbor", "tag-1", "created as a tag-1 epoch", "cbor.forbidden")
def b_tag1(b: Base) -> bytes:
    return edit_manifest(b, CREATED_CBOR, tstr("created") + b"\xc1" + head(0, CREATED))


@case("cbor", "tag-2", "version as a tag-2 bignum", "cbor.forbidden")
def b_tag2(b: Base) -> bytes:
    return edit_manifest(b, VERSION_1, tstr("version") + b"\xc2\x41\x01")


@case("cbor", "tag-24", "embedded CBOR (tag 24)", "cbor.forbidden")
def b_tag24(b: Base) -> bytes:
    return with_ext(b, b"\xd8\x18\x41\x00")


@case("cbor", "tag-55799", "self-describe tag 55799 before the manifest", "cbor.forbidden")
def b_tag55799(b: Base) -> bytes:
    p = b.pkg(False)
    p.manifest_bytes_hook = lambda mb: b"\xd9\xd9\xf7" + mb
    return build(p).data


@case("cbor", "tag-18-inner", "a COSE tag inside the manifest", "cbor.forbidden")
def b_tag18(b: Base) -> bytes:
    return with_ext(b, b"\xd2\x80")


@case("cbor", "utf8-invalid", "0xFF inside a text string", "cbor.malformed")
def b_utf8(b: Base) -> bytes:
    return edit_manifest(b, tstr("hostile corpus"), head(3, 14) + b"hostile corpu\xff")


@case("cbor", "utf8-overlong", "overlong UTF-8 ('/' as C0 AF) in a key", "cbor.malformed")
def b_utf8_overlong(b: Base) -> bytes:
    return with_ext(b, b"\xa1\x62\xc0\xaf\x00")


@case("cbor", "utf8-surrogate", "a UTF-8-encoded lone surrogate", "cbor.malformed")
def b_utf8_surrogate(b: Base) -> bytes:
    return with_ext(b, b"\x63\xed\xa0\x80")


@case("cbor", "huge-bytes-length", "byte string declaring 2^63 bytes", "cbor.malformed")
def b_huge_bytes(b: Base) -> bytes:
    return with_ext(b, b"\x5b\x80\x00\x00\x00\x00\x00\x00\x00" + b"x")


@case("cbor", "huge-array-count", "array declaring 2^32 items over 1 byte", "cbor.malformed")
def b_huge_array(b: Base) -> bytes:
    return with_ext(b, b"\x9b\x00\x00\x00\x01\x00\x00\x00\x00\x00")


@case("cbor", "huge-map-count", "map declaring 2^31 pairs", "cbor.malformed")
def b_huge_map(b: Base) -> bytes:
    return with_ext(b, b"\xba\x80\x00\x00\x00" + tstr("a") + b"\x00")


@case(
    "cbor",
    "items-bomb",
    "2 000 001 one-byte items (max_cbor_items is 2 000 000)",
    "cbor.limit",
)
def b_items_bomb(b: Base) -> bytes:
    n = 2_000_001
    return with_ext(b, b"\x9a" + n.to_bytes(4, "big") + bytes(n))


@case("cbor", "trailing-bytes", "a byte after the manifest item", "cbor.malformed")
def b_trailing(b: Base) -> bytes:
    p = b.pkg(False)
    p.manifest_bytes_hook = lambda mb: mb + b"\x00"
    return build(p).data


@case("cbor", "simple-undefined", "the simple value undefined", "cbor.forbidden")
def b_undefined(b: Base) -> bytes:
    return with_ext(b, b"\xf7")


@case("cbor", "simple-16", "simple value 16", "cbor.forbidden")
def b_simple16(b: Base) -> bytes:
    return with_ext(b, b"\xf0")


@case("cbor", "break-stray", "a break code outside an indefinite item", "cbor.malformed")
def b_break(b: Base) -> bytes:
    return with_ext(b, b"\xff")


@case("cbor", "reserved-ai", "reserved additional information 28", "cbor.malformed")
def b_reserved(b: Base) -> bytes:
    return with_ext(b, b"\x1c")


@case(
    "cbor",
    "sig-section-duplicate-key",
    "signature section with 'signatures' twice",
    "cbor.noncanonical",
)
def b_sig_dup(b: Base) -> bytes:
    p = b.pkg()

    def dup(sec: bytes) -> bytes:
        assert sec[0] == 0xA1
        body = sec[1:]
        return b"\xa2" + body + body

    p.sig_section_hook = dup
    return build(p).data


@case(
    "cbor",
    "sig-section-indefinite",
    "signature list as an indefinite array",
    "cbor.forbidden",
)
def b_sig_indef(b: Base) -> bytes:
    p = b.pkg()

    def indef(sec: bytes) -> bytes:
        prefix = b"\xa1" + tstr("signatures")
        assert sec.startswith(prefix + b"\x81")
        return prefix + b"\x9f" + sec[len(prefix) + 1 :] + b"\xff"

    p.sig_section_hook = indef
    return build(p).data


@case("cbor", "index-tag", "blob index wrapped in tag 55799", "cbor.forbidden")
def b_index_tag(b: Base) -> bytes:
    p = b.pkg()
    p.index_hook = lambda idx: b"\xd9\xd9\xf7" + enc(idx)
    return build(p).data


def _contents_raw(b: Base, raw: Callable[[bytes], bytes], *, encrypt: bool) -> bytes:
    p = b.pkg(encrypt)
    c = p.comp("files")
    c.contents_raw = raw(enc(c.contents))
    return build(p).data


both(
    "cbor",
    "contents-tag",
    "contents table wrapped in tag 55799",
    "schema.invalid",
    lambda b, encrypt: _contents_raw(b, lambda c: b"\xd9\xd9\xf7" + c, encrypt=encrypt),
    verify=OK,
    why=BEHIND + "; a signed, authenticated contents table that is bad CBOR is schema.invalid "
    "(secpack/package/decode.py maps the CBOR error)",
)
both(
    "cbor",
    "contents-trailing",
    "contents table followed by a stray byte",
    "schema.invalid",
    lambda b, encrypt: _contents_raw(b, lambda c: c + b"\x00", encrypt=encrypt),
    plain=False,
    verify=OK,
    why=BEHIND,
)


# Compressed contents (FORMAT §4 "contents_codec"): the weights' tensor table as one zstd
# frame. Each frame is refused before anything is decompressed, or decompresses to
# no more than the signed size; encrypted, only an identity gets that far.
def _packed_contents(
    b: Base,
    frame: Callable[[bytes], bytes],
    size: Callable[[int], Any] = lambda n: n,
    *,
    encrypt: bool,
    codec_id: str = "zstd",
    extra: dict[str, Any] | None = None,
    also: str | None = None,
) -> bytes:
    """The weights' table (and ``also`` that component's) compressed by ``frame``,
    declared as ``size`` bytes."""
    p = b.pkg(encrypt)
    for name in ("weights", also) if also else ("weights",):
        c = p.comp(name)
        table = enc(c.contents)
        c.contents_raw = frame(table)
        c.contents_codec = {"id": codec_id, "size": size(len(table)), **(extra or {})}
    return build(p).data


def _zstd(data: bytes, **kw: Any) -> bytes:
    return zstandard.ZstdCompressor(level=19, **kw).compress(data)


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x55])


_SKIPPABLE = b"\x50\x2a\x4d\x18\x00\x00\x00\x00"  # a skippable frame of no bytes

# fmt: off
PACKED_CASES: list[tuple[str, str, str, Callable[..., bytes]]] = [
    ("size-larger", "declared 1 byte longer than the table", "codec.invalid", lambda b, encrypt: _packed_contents(b, _zstd, lambda n: n + 1, encrypt=encrypt)),
    ("size-smaller", "declared 1 byte shorter than the table", "codec.invalid", lambda b, encrypt: _packed_contents(b, _zstd, lambda n: n - 1, encrypt=encrypt)),
    ("no-content-size", "a frame that does not declare its size", "codec.invalid", lambda b, encrypt: _packed_contents(b, lambda t: _zstd(t, write_content_size=False), encrypt=encrypt)),
    ("skippable", "a skippable frame before the frame", "codec.invalid", lambda b, encrypt: _packed_contents(b, lambda t: _SKIPPABLE + _zstd(t), encrypt=encrypt)),
    ("trailing", "a second frame after the frame", "codec.invalid", lambda b, encrypt: _packed_contents(b, lambda t: _zstd(t) + _zstd(b"x"), encrypt=encrypt)),
    ("corrupt", "the frame's last byte flipped", "codec.invalid", lambda b, encrypt: _packed_contents(b, lambda t: _flip_last(_zstd(t)), encrypt=encrypt)),
    ("not-zstd", "the plain table under a zstd record", "codec.invalid", lambda b, encrypt: _packed_contents(b, lambda t: t, encrypt=encrypt)),
    ("bomb", "128 MiB of zeros declared as such, above the manifest cap", "schema.invalid", lambda b, encrypt: _packed_contents(b, lambda t: _zstd(bytes(128 * MiB)), lambda n: 128 * MiB, encrypt=encrypt)),
    ("zero", "declared size 0", "schema.invalid", lambda b, encrypt: _packed_contents(b, _zstd, lambda n: 0, encrypt=encrypt)),
    ("unknown-codec", "contents codec 'lz4'", "schema.unsupported", lambda b, encrypt: _packed_contents(b, _zstd, encrypt=encrypt, codec_id="lz4")),
    ("unknown-codec-params", "contents codec 'brotli' with a parameter of its own", "schema.unsupported", lambda b, encrypt: _packed_contents(b, _zstd, encrypt=encrypt, codec_id="brotli", extra={"quality": 11})),
    ("total", "two tables of 40 MiB declared: each under the 64 MiB cap, together over it", "schema.invalid", lambda b, encrypt: _packed_contents(b, _zstd, lambda n: 40 * MiB, encrypt=encrypt, also="files")),
]
# fmt: on

for _cid, _title, _code, _fn in PACKED_CASES:
    for _encrypt in (True, False):
        # A schema fault is in the signed manifest, which verify reads; a bad frame
        # is met where the contents are read: by verify only in a plain component.
        _seen = _code if (_code.startswith("schema") or not _encrypt) else OK
        case(
            "compression",
            f"packed-contents-{_cid}-{'enc' if _encrypt else 'plain'}",
            f"compressed contents: {_title} ({'encrypted' if _encrypt else '--no-encrypt'})",
            _code,
            verify=_seen,
            why="" if _seen == _code else BEHIND,
        )(partial(_fn, encrypt=_encrypt))


# === schema (all behind a valid signature by the trusted key) ===============================


def hooked(b: Base, hook: Callable[[dict[str, Any]], Any], *, encrypt: bool = True) -> bytes:
    p = b.pkg(encrypt)
    p.manifest_hook = hook
    return build(p).data


def comp_of(m: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in m["components"] if c["name"] == name)


@case("schema", "unknown-top-key", "unknown top-level manifest key", "schema.invalid")
def s_unknown_top(b: Base) -> bytes:
    return hooked(b, lambda m: m.__setitem__("extra", 1))


@case("schema", "format-2", "manifest format 'secpack': 2", "schema.unsupported")
def s_format2(b: Base) -> bytes:
    return hooked(b, lambda m: m.__setitem__("secpack", 2))


@case("schema", "manifest-crit-unknown", "crit names an extension v1 lacks", "schema.unsupported")
def s_crit(b: Base) -> bytes:
    return hooked(b, lambda m: m.update(ext={"x-future": 1}, crit=["x-future"]))


@case("schema", "name-missing", "manifest without 'name'", "schema.invalid")
def s_no_name(b: Base) -> bytes:
    return hooked(b, lambda m: m.pop("name"))


@case("schema", "version-zero", "version 0", "schema.invalid")
def s_version0(b: Base) -> bytes:
    return hooked(b, lambda m: m.__setitem__("version", 0))


@case("schema", "version-bool", "version true (a bool, not an integer)", "schema.invalid")
def s_version_bool(b: Base) -> bytes:
    return hooked(b, lambda m: m.__setitem__("version", True))


@case("schema", "version-negative", "version -1", "schema.invalid")
def s_version_neg(b: Base) -> bytes:
    return hooked(b, lambda m: m.__setitem__("version", -1))


@case("schema", "name-path", "package name '../evil'", "schema.invalid")
def s_name_path(b: Base) -> bytes:
    return hooked(b, lambda m: m.__setitem__("name", "../evil"))


@case("schema", "expires-before-created", "expires earlier than created", "schema.invalid")
def s_expires(b: Base) -> bytes:
    return hooked(b, lambda m: m.__setitem__("expires", CREATED - 1))


@case("schema", "metadata-int-value", "metadata value that is an integer", "schema.invalid")
def s_metadata(b: Base) -> bytes:
    return hooked(b, lambda m: m["metadata"].__setitem__("n", 1))


@case("schema", "ext-not-map", "ext that is an array", "schema.invalid")
def s_ext(b: Base) -> bytes:
    return hooked(b, lambda m: m.__setitem__("ext", [1]))


@case("schema", "component-kind-unknown", "component kind 'model'", "schema.invalid")
def s_kind(b: Base) -> bytes:
    return hooked(b, lambda m: comp_of(m, "config").__setitem__("kind", "model"))


@case("schema", "component-name-bad", "component name 'Config/..'", "schema.invalid")
def s_comp_name(b: Base) -> bytes:
    return hooked(b, lambda m: comp_of(m, "config").__setitem__("name", "Config/.."))


@case("schema", "component-duplicate", "two components named 'config'", "schema.invalid")
def s_comp_dup(b: Base) -> bytes:
    return hooked(b, lambda m: comp_of(m, "tokenizer").__setitem__("name", "config"))


@case("schema", "component-size", "component size one more than its segments", "schema.invalid")
def s_comp_size(b: Base) -> bytes:
    return hooked(b, lambda m: comp_of(m, "config").__setitem__("size", 45))


@case("schema", "component-unknown-key", "unknown key in a component", "schema.invalid")
def s_comp_key(b: Base) -> bytes:
    return hooked(b, lambda m: comp_of(m, "config").__setitem__("url", "http://x"))


@case("schema", "codec-unknown", "codec 'lz4'", "schema.unsupported")
def s_codec(b: Base) -> bytes:
    def hook(m: dict[str, Any]) -> None:
        comp_of(m, "files")["segments"][0]["codec"] = {"id": "lz4", "size": 26}

    return hooked(b, hook, encrypt=False)


@case("schema", "encryption-alg-unknown", "encryption alg 'A128GCM'", "schema.unsupported")
def s_alg(b: Base) -> bytes:
    p = b.pkg()
    p.comp("config").enc_hook = lambda r: r.__setitem__("alg", "A128GCM")
    return build(p).data


@case("schema", "stored-mismatch", "stored one byte more than the raw payload", "schema.invalid")
def s_stored(b: Base) -> bytes:
    return hooked(b, lambda m: comp_of(m, "config")["segments"][0].__setitem__("stored", 61))


@case("schema", "segment-unknown-key", "unknown key in a segment", "schema.invalid")
def s_seg_key(b: Base) -> bytes:
    return hooked(b, lambda m: comp_of(m, "config")["segments"][0].__setitem__("offset", 0))


@case("schema", "salt-missing", "encrypted segment without its salt", "schema.invalid")
def s_salt_missing(b: Base) -> bytes:
    return hooked(b, lambda m: comp_of(m, "config")["segments"][0].pop("salt"))


@case("schema", "salt-in-plain", "salt on a segment of an unencrypted component", "schema.invalid")
def s_salt_plain(b: Base) -> bytes:
    return hooked(
        b,
        lambda m: comp_of(m, "config")["segments"][0].__setitem__("salt", bytes(16)),
        encrypt=False,
    )


# Segment 8 of weights is the F64 tensor "double" (bg, 8 planes of 64 bytes);
# segment 1 is embed.weight (bgx fp32: H, L, B1, B0, X), segment 5 cols.weight
# (bgx fp32 with column offsets: H, L, B1, B0, X, O), segment 7 noise.bf16 (bgx
# bf16 whose L plane is p5). (Segment 3 is the run of norm.f16, pos.ids, scale
# and mask, of four types: coded as bytes.)
BG_SEG, BGX_SEG, BGX_COLS_SEG, BGX_P5_SEG = 8, 1, 5, 7
# Segment 9 is skew.weight (bgx fp32 whose H plane is "ans": 5121 symbols);
# segment 10 is fp8.weight (4099 F8_E4M3 bytes, the whole segment one "ans" plane);
# segments 11 and 12 the same with "ans32" (wide.weight and fp8.wide, 131,079 each).
BGX_ANS_SEG, ANS_SEG, BGX_ANS32_SEG, ANS32_SEG = 9, 10, 11, 12
# Segment 4 is "pruned" (const); segment 13 the run of run.bias, run.norm, run.head.
CONST_SEG, RUN_SEG = 4, 13


@case("schema", "bg-plane-count", "bg codec of width 8 with 7 planes", "schema.invalid")
def s_bg_planes(b: Base) -> bytes:
    return hooked(b, lambda m: comp_of(m, "weights")["segments"][BG_SEG]["codec"]["planes"].pop())


@case("schema", "bg-raw-plane-size", "raw bg plane shorter than n", "schema.invalid")
def s_bg_raw(b: Base) -> bytes:
    def hook(m: dict[str, Any]) -> None:
        comp_of(m, "weights")["segments"][BG_SEG]["codec"]["planes"][0] = {"id": "raw", "size": 61}

    return hooked(b, hook)


def _bgx_record(
    change: Callable[[dict[str, Any]], Any], seg: int = BGX_SEG
) -> Callable[[dict[str, Any]], None]:
    def hook(m: dict[str, Any]) -> None:
        change(comp_of(m, "weights")["segments"][seg]["codec"])

    return hook


for _name, _what, _change, _seg in [
    (
        "bgx-plane-count",
        "bgx fp32 record with its X plane missing",
        lambda c: c["planes"].pop(),
        BGX_SEG,
    ),
    (
        "bgx-span-32",
        "bgx exponent window of 32 values",
        lambda c: c.__setitem__("span", 32),
        BGX_SEG,
    ),
    (
        "bgx-window-past-max",
        "bgx window lo 240 + span 31 > 256",
        lambda c: c.__setitem__("lo", 240),
        BGX_SEG,
    ),
    (
        "bgx-float-unknown",
        "bgx float layout 'fp8'",
        lambda c: c.__setitem__("float", "fp8"),
        BGX_SEG,
    ),
    (
        "bgx-period-1",
        "bgx column offsets of period 1",
        lambda c: c.__setitem__("period", 1),
        BGX_COLS_SEG,
    ),
    (
        "bgx-escapes-above-n",
        "bgx with more escapes than elements",
        lambda c: c.__setitem__("escapes", 1025),
        BGX_SEG,
    ),
    (
        "bgx-offsets-compressed",
        "bgx offsets plane stored as zstd",
        lambda c: c["planes"][-1].__setitem__("id", "zstd"),
        BGX_COLS_SEG,
    ),
    ("bgx-extra-key", "bgx record with an unknown key", lambda c: c.__setitem__("rot", 1), BGX_SEG),
    (
        "bgx-ans-on-l",
        "bgx L plane marked ans",
        lambda c: c["planes"][1].__setitem__("id", "ans"),
        BGX_ANS_SEG,
    ),
    (
        "bgx-ans-size-48",
        "bgx ans plane of 48 bytes, below its smallest possible size",
        lambda c: c["planes"][0].__setitem__("size", 48),
        BGX_ANS_SEG,
    ),
    (
        "bgx-ans32-on-l",
        "bgx L plane marked ans32",
        lambda c: c["planes"][1].__setitem__("id", "ans32"),
        BGX_ANS32_SEG,
    ),
    (
        "bgx-ans32-size-160",
        "bgx ans32 plane of 160 bytes, below its smallest possible size",
        lambda c: c["planes"][0].__setitem__("size", 160),
        BGX_ANS32_SEG,
    ),
    (
        "bgx-p5-on-h",
        "bgx H plane marked p5",
        lambda c: c["planes"][0].__setitem__("id", "p5"),
        BGX_P5_SEG,
    ),
    (
        "bgx-p5-size",
        "bgx p5 plane one byte short",
        lambda c: c["planes"][1].__setitem__("size", 2559),
        BGX_P5_SEG,
    ),
]:
    case(
        "schema",
        _name,
        _what,
        "schema.unsupported" if _name == "bgx-float-unknown" else "schema.invalid",
    )(lambda b, _c=_change, _s=_seg: hooked(b, _bgx_record(_c, _s)))


for _name, _what, _change, _seg in [
    (
        "ans-size-48",
        "ans codec of 48 bytes, below its smallest plane",
        lambda c: c.__setitem__("size", 48),
        ANS_SEG,
    ),
    (
        "ans-size-above-plain",
        "ans codec larger than its plaintext",
        lambda c: c.__setitem__("size", 4100),
        ANS_SEG,
    ),
    (
        "ans-extra-key",
        "ans codec record with a width",
        lambda c: c.__setitem__("width", 1),
        ANS_SEG,
    ),
    (
        "ans32-size-160",
        "ans32 codec of 160 bytes, below its smallest plane",
        lambda c: c.__setitem__("size", 160),
        ANS32_SEG,
    ),
    (
        "ans32-size-above-plain",
        "ans32 codec larger than its plaintext",
        lambda c: c.__setitem__("size", 131080),
        ANS32_SEG,
    ),
]:
    case("schema", _name, _what, "schema.invalid")(
        lambda b, _c=_change, _s=_seg: hooked(b, _bgx_record(_c, _s))
    )


@case("schema", "const-width-3", "const codec of width 3", "schema.invalid")
def s_const3(b: Base) -> bytes:
    return hooked(
        b, lambda m: comp_of(m, "weights")["segments"][CONST_SEG]["codec"].__setitem__("width", 3)
    )


@case("schema", "digest-short", "31-byte segment digest", "schema.invalid")
def s_digest(b: Base) -> bytes:
    def hook(m: dict[str, Any]) -> None:
        seg = comp_of(m, "config")["segments"][0]
        seg["digest"] = seg["digest"][:31]

    return hooked(b, hook)


@case("schema", "blob-out-of-order", "tokenizer segments point at blob 2", "schema.invalid")
def s_blob_order(b: Base) -> bytes:
    def hook(m: dict[str, Any]) -> None:
        for s in comp_of(m, "tokenizer")["segments"]:
            s["blob"] = 2
        for s in comp_of(m, "weights")["segments"]:
            s["blob"] = 1

    return hooked(b, hook)


@case("schema", "blob-shared", "tokenizer segments share config's blob 0", "schema.invalid")
def s_blob_shared(b: Base) -> bytes:
    def hook(m: dict[str, Any]) -> None:
        for s in comp_of(m, "tokenizer")["segments"]:
            s["blob"] = 0

    return hooked(b, hook)


@case("schema", "blob-size", "blob size one more than its segments", "schema.invalid")
def s_blob_size(b: Base) -> bytes:
    return hooked(b, lambda m: m["blobs"][0].__setitem__("size", m["blobs"][0]["size"] + 1))


@case("schema", "blob-extra", "a blob that holds no segment", "schema.invalid")
def s_blob_extra(b: Base) -> bytes:
    return hooked(b, lambda m: m["blobs"].append({"digest": bytes(32), "size": 1}))


def _contents(b: Base, comp: str, change: Callable[[dict[str, Any]], Any], encrypt: bool) -> bytes:
    p = b.pkg(encrypt)
    change(p.comp(comp).contents)
    return build(p).data


both(
    "schema",
    "contents-format-unknown",
    "contents file format 'gguf'",
    "schema.unsupported",
    lambda b, encrypt: _contents(
        b, "config", lambda c: c["files"][0].__setitem__("format", "gguf"), encrypt
    ),
    verify=OK,
    why=BEHIND,
)
both(
    "schema",
    "contents-not-tiling",
    "second file does not start where the first ends",
    "schema.invalid",
    lambda b, encrypt: _contents(
        b, "tokenizer", lambda c: c["files"][1].__setitem__("segments", [0, 2]), encrypt
    ),
    plain=False,
    verify=OK,
    why=BEHIND,
)
both(
    "schema",
    "contents-unknown-key",
    "unknown key in a contents file entry",
    "schema.invalid",
    lambda b, encrypt: _contents(
        b, "config", lambda c: c["files"][0].__setitem__("uid", 0), encrypt
    ),
    plain=False,
    verify=OK,
    why=BEHIND,
)
both(
    "schema",
    "contents-header-missing",
    "safetensors file entry without 'header'",
    "schema.invalid",
    lambda b, encrypt: _contents(b, "weights", lambda c: c["files"][0].pop("header"), encrypt),
    plain=False,
    verify=OK,
    why=BEHIND,
)
both(
    "schema",
    "contents-file-size",
    "file size one more than its segments",
    "schema.invalid",
    lambda b, encrypt: _contents(
        b, "config", lambda c: c["files"][0].__setitem__("size", 45), encrypt
    ),
    plain=False,
    verify=OK,
    why=BEHIND,
)


# === signatures, trust and freshness =========================================================


def signed(b: Base, sigs: Callable[[bytes], list[tuple[str, bytes]]], **kw: Any) -> Built:
    p = b.pkg()
    p.sigs_hook = lambda mb, _entries: sigs(mb)
    return Built(build(p).data, **kw)


def one(data: Callable[[bytes], bytes]) -> Callable[[bytes], list[tuple[str, bytes]]]:
    return lambda mb: [("cose-sign1", data(mb))]


def protected_for(key: Any, **changes: Any) -> dict[int, Any]:
    from secpack.recipes import signing
    from secpack.recipes.keys import key_id

    hdr: dict[int, Any] = {
        1: signing.cose_alg_of(key),
        3: CONTENT_TYPE,
        4: key_id(key.public_key()),
    }
    for k, v in changes.items():
        label = {"alg": 1, "crit": 2, "cty": 3, "kid": 4}[k]
        if v is None:
            hdr.pop(label)
        else:
            hdr[label] = v
    return hdr


@case("signature", "no-signature", "empty signature list", "sig.missing")
def g_none(b: Base) -> Built:
    return signed(b, lambda mb: [])


@case("signature", "untrusted-key", "signed by an untrusted key only", "sig.untrusted")
def g_untrusted(b: Base) -> Built:
    return signed(b, one(lambda mb: cose(keys().untrusted, mb)))


@case(
    "signature",
    "unknown-type-only",
    "one entry of an unknown signature type, carrying a valid COSE by the trusted key",
    "sig.untrusted",
)
def g_unknown_type(b: Base) -> Built:
    return signed(b, lambda mb: [("x-sigstore", cose(keys().ed, mb))])


@case("signature", "alg-unprotected", "alg in the unprotected header", "sig.malformed")
def g_alg_unprot(b: Base) -> Built:
    return signed(b, one(lambda mb: cose(keys().ed, mb, unprotected={1: -8})))


@case("signature", "crit-unprotected", "crit in the unprotected header", "sig.malformed")
def g_crit_unprot(b: Base) -> Built:
    return signed(b, one(lambda mb: cose(keys().ed, mb, unprotected={2: [99]})))


@case("signature", "kid-unprotected", "a kid in the unprotected header", "sig.malformed")
def g_kid_unprot(b: Base) -> Built:
    return signed(b, one(lambda mb: cose(keys().ed, mb, unprotected={4: bytes(32)})))


@case("signature", "cose-crit-unknown", "protected crit naming label 99", "sig.malformed")
def g_crit(b: Base) -> Built:
    k = keys()
    return signed(b, one(lambda mb: cose(k.ed, mb, protected=protected_for(k.ed, crit=[99]))))


@case(
    "signature",
    "alg-key-mismatch",
    "ES256 alg with the kid of the trusted Ed25519 key",
    "sig.malformed",
)
def g_alg_mismatch(b: Base) -> Built:
    k = keys()
    return signed(b, one(lambda mb: cose(k.ed, mb, protected=protected_for(k.ed, alg=-7))))


@case("signature", "alg-unknown", "alg RS256 (-257)", "sig.malformed")
def g_alg_unknown(b: Base) -> Built:
    k = keys()
    return signed(b, one(lambda mb: cose(k.ed, mb, protected=protected_for(k.ed, alg=-257))))


@case("signature", "kid-short", "31-byte kid", "sig.malformed")
def g_kid_short(b: Base) -> Built:
    k = keys()
    return signed(
        b, one(lambda mb: cose(k.ed, mb, protected=protected_for(k.ed, kid=k.ed_kid[:31])))
    )


@case("signature", "cty-other", "content type of another format", "sig.malformed")
def g_cty(b: Base) -> Built:
    k = keys()
    return signed(
        b, one(lambda mb: cose(k.ed, mb, protected=protected_for(k.ed, cty="application/json")))
    )


@case("signature", "untagged", "COSE_Sign1 without tag 18", "sig.malformed")
def g_untagged(b: Base) -> Built:
    return signed(b, one(lambda mb: cose(keys().ed, mb, tagged=False)))


@case("signature", "payload-attached", "COSE payload attached, not nil", "sig.malformed")
def g_attached(b: Base) -> Built:
    return signed(b, one(lambda mb: cose(keys().ed, mb, payload=mb)))


def _raw_protected(b: Base, body: bytes, count: int) -> Built:
    k = keys()
    raw = bytes([0xA0 | count]) + body + b"\x04\x58\x20" + k.ed_kid
    return signed(b, one(lambda mb: cose(k.ed, mb, protected_raw=raw)))


@case(
    "signature",
    "protected-duplicate-alg",
    "protected header with label 1 twice",
    "sig.malformed",
)
def g_prot_dup(b: Base) -> Built:
    return _raw_protected(b, b"\x01\x27\x01\x27", 3)


@case(
    "signature",
    "protected-key-float",
    "protected header labels 1 and 1.0",
    "sig.malformed",
)
def g_prot_float(b: Base) -> Built:
    return _raw_protected(b, b"\x01\x27\xf9\x3c\x00\x27", 3)


@case(
    "signature",
    "protected-key-true",
    "protected header labels 1 and true",
    "sig.malformed",
)
def g_prot_true(b: Base) -> Built:
    return _raw_protected(b, b"\x01\x27\xf5\x27", 3)


@case(
    "signature",
    "bad-signature-trusted-kid",
    "trusted kid, signature bytes flipped",
    "integrity",
)
def g_bad_sig(b: Base) -> Built:
    def flip(mb: bytes) -> bytes:
        data = bytearray(cose(keys().ed, mb))
        data[-1] ^= 1
        return bytes(data)

    return signed(b, one(flip))


@case(
    "signature",
    "signature-of-other-manifest",
    "valid signature by the trusted key over another manifest",
    "integrity",
)
def g_other_manifest(b: Base) -> Built:
    return signed(b, one(lambda mb: cose(keys().ed, mb + b" ")))


@case(
    "signature",
    "threshold-same-key-twice",
    "policy threshold 2; the same trusted key signs twice (two distinct COSE items)",
    "sig.threshold",
)
def g_threshold(b: Base) -> Built:
    k = keys()
    return signed(
        b,
        lambda mb: [
            ("cose-sign1", cose(k.ed, mb)),
            ("cose-sign1", cose(k.ed, mb, protected=protected_for(k.ed, cty=None))),
        ],
        policy="threshold2",
    )


def _evil_twin(b: Base) -> Pkg:
    """The same model under another name, config.json's bytes changed (same length)."""
    p = b.pkg()
    p.name = f"{NAME}-evil"
    seg = p.comp("config").segs[0]
    seg.payload = seg.payload.replace(b"golden", b"evil!!")
    return p


@case(
    "signature",
    "name-substituted",
    "validly signed package of another name, opened with --name hostile",
    "policy.name",
)
def g_name(b: Base) -> Built:
    return Built(build(_evil_twin(b)).data, name=NAME)


def _swapped(b: Base) -> bytes:
    """hostile's blobs under hostile-evil's header and signatures."""
    good = build(b.pkg())
    evil = build(_evil_twin(b))
    assert (good.b_len, good.i_len) == (evil.b_len, evil.i_len)
    return evil.data[: evil.b_off] + good.data[good.b_off : good.s_off] + evil.data[evil.s_off :]


@case(
    "signature",
    "manifest-swapped-named",
    "another package's signed header over hostile's blobs, with --name hostile",
    "policy.name",
)
def g_swapped_named(b: Base) -> Built:
    return Built(_swapped(b), name=NAME)


@case(
    "signature",
    "manifest-swapped",
    "another package's signed header over hostile's blobs",
    "integrity",
)
def g_swapped(b: Base) -> Built:
    return Built(_swapped(b))


def _state(version: int) -> str:
    doc = {"format": 1, "packages": {NAME: {keys().ed_kid.hex(): version}}}
    return json.dumps(doc)


@case(
    "signature",
    "rollback",
    "version 1 after version 99 was seen from the same signer",
    "fresh.rollback",
)
def g_rollback(b: Base) -> Built:
    return Built(valid(b), state=_state(99))


@case("signature", "expired", "expires one second after creation (2020)", "fresh.expired")
def g_expired(b: Base) -> Built:
    p = b.pkg()
    p.expires = CREATED + 1
    return Built(build(p).data)


@case("signature", "created-future", "created in 2096", "fresh.future")
def g_future(b: Base) -> Built:
    p = b.pkg()
    p.created = 4_000_000_000
    return Built(build(p).data)


@case("signature", "max-age", "created 2020, policy max_age 30d", "fresh.max-age")
def g_max_age(b: Base) -> Built:
    return Built(valid(b), policy="max-age")


@case("signature", "expiry-required", "no expiry, policy require_expires", "policy.unmet")
def g_require_expires(b: Base) -> Built:
    return Built(valid(b), policy="require-expires")


@case(
    "signature",
    "required-component",
    "policy requires a component the package lacks",
    "policy.unmet",
)
def g_required(b: Base) -> Built:
    return Built(valid(b), policy="required-component")


@case(
    "signature",
    "state-corrupt",
    "rollback state file that is not JSON",
    "state.corrupt",
)
def g_state_corrupt(b: Base) -> Built:
    return Built(valid(b), state="{not json")


# === crypto ==================================================================================


def crypto(b: Base, change: Callable[[Pkg], Any], **kw: Any) -> Built:
    p = b.pkg()
    change(p)
    return Built(build(p).data, **kw)


def stanza(p: Pkg, comp: str, change: Callable[[dict[str, Any]], Any]) -> None:
    p.comp(comp).enc_hook = lambda record: change(record["recipients"][0])


@case("crypto", "wrapped-47", "wrapped key of 47 bytes", "schema.invalid")
def k_wrapped47(b: Base) -> Built:
    return crypto(b, lambda p: stanza(p, "config", lambda r: r.update(wrapped=r["wrapped"][:47])))


@case("crypto", "wrapped-49", "wrapped key of 49 bytes", "schema.invalid")
def k_wrapped49(b: Base) -> Built:
    return crypto(
        b, lambda p: stanza(p, "config", lambda r: r.update(wrapped=r["wrapped"] + b"\x00"))
    )


@case("crypto", "enc-31", "encapsulated key of 31 bytes", "schema.invalid")
def k_enc31(b: Base) -> Built:
    return crypto(b, lambda p: stanza(p, "config", lambda r: r.update(enc=r["enc"][:31])))


@case("crypto", "enc-33", "encapsulated key of 33 bytes", "schema.invalid")
def k_enc33(b: Base) -> Built:
    return crypto(b, lambda p: stanza(p, "config", lambda r: r.update(enc=r["enc"] + b"\x00")))


# Low-order points of Curve25519 (u = 0, 1, an order-8 point, p - 1, p, p + 1).
_P25519 = 2**255 - 19
LOW_ORDER = {
    "zero": 0,
    "one": 1,
    "order8": 39382357235489614581723060781553021112529911719440698176882885853963445705823,
    "p-minus-1": _P25519 - 1,
    "p": _P25519,
}
for _label, _u in LOW_ORDER.items():
    case(
        "crypto",
        f"enc-low-order-{_label}",
        f"encapsulated key is a low-order point (u = {_label})",
        "integrity",
        verify=OK,
        why=BEHIND,
    )(
        partial(
            lambda b, point: crypto(
                b, lambda p: stanza(p, "config", lambda r: r.update(enc=point))
            ),
            point=_u.to_bytes(32, "little"),
        )
    )


@case(
    "crypto",
    "wrapped-corrupt",
    "one bit of the wrapped key flipped",
    "integrity",
    verify=OK,
    why=BEHIND,
)
def k_wrapped_corrupt(b: Base) -> Built:
    def flip(r: dict[str, Any]) -> None:
        r["wrapped"] = bytes([r["wrapped"][0] ^ 1]) + r["wrapped"][1:]

    return crypto(b, lambda p: stanza(p, "config", flip))


@case(
    "crypto",
    "commitment-mismatch",
    "key commitment of another key",
    "integrity",
    verify=OK,
    why=BEHIND,
)
def k_commitment(b: Base) -> Built:
    return crypto(
        b, lambda p: setattr(p.comp("config"), "enc_hook", lambda r: r.update(commitment=bytes(32)))
    )


@case(
    "crypto",
    "no-recipient",
    "components wrapped for another recipient only",
    "key.no-recipient",
    verify=OK,
    why=BEHIND,
)
def k_no_recipient(b: Base) -> Built:
    def change(p: Pkg) -> None:
        for c in p.comps:
            c.recipients = [keys().other]

    return crypto(b, change)


@case(
    "crypto",
    "contents-bad-tag",
    "last byte of the sealed contents flipped (manifest re-signed)",
    "integrity",
    verify=OK,
    why=BEHIND,
)
def k_contents_tag(b: Base) -> Built:
    def change(p: Pkg) -> None:
        p.comp("config").contents_post = lambda c: c[:-1] + bytes([c[-1] ^ 1])

    return crypto(b, change)


@case(
    "crypto",
    "contents-other-component",
    "config's contents sealed as tokenizer's",
    "integrity",
    verify=OK,
    why=BEHIND,
)
def k_contents_moved(b: Base) -> Built:
    return crypto(b, lambda p: setattr(p.comp("config"), "contents_aad", "tokenizer"))


@case(
    "crypto",
    "segment-bad-tag",
    "last byte of a sealed segment flipped (digest and signature redone)",
    "integrity",
    verify=OK,
    why=BEHIND,
)
def k_seg_tag(b: Base) -> Built:
    def change(p: Pkg) -> None:
        p.comp("files").segs[0].post = lambda s: s[:-1] + bytes([s[-1] ^ 1])

    return crypto(b, change)


@case(
    "crypto",
    "segment-digest",
    "a stored byte changed without re-signing",
    "integrity",
)
def k_seg_digest(b: Base) -> Built:
    f = build(b.pkg())
    data = bytearray(f.data)
    data[f.b_off + 3] ^= 1
    return Built(bytes(data))


def multi(p: Pkg, b: Base) -> Comp:
    """Cut sub/deep/notes.md (450 bytes) into three raw 150-byte segments, each sealed
    as part 0, 1, 2 of its unit: a valid package whose file spans several segments."""
    c = p.comp("files")
    path = "sub/deep/notes.md"
    data = b.file_bytes(path)
    c.segs = [
        Seg(
            150,
            {"id": "raw"},
            data[i * 150 : (i + 1) * 150],
            ("file", path, i, i == 2),
            salt=rand(f"salt/files/{i}", 16),  # salts travel with their segments
        )
        for i in range(3)
    ]
    c.file(path)["segments"] = [0, 3]
    c.file(path)["size"] = 450
    return c


def file_run(p: Pkg, b: Base, label: tuple[str, str] = ("file-run", "tokenizer.json")) -> Comp:
    """Make the tokenizer's two files (tokenizer.json, vocab.txt) one file run
    (FORMAT §5): one raw segment of their bytes back to back, which both name as
    [0, 1]. A valid package, as a writer makes it where the files share content;
    ``label`` is the unit its AAD binds."""
    c = p.comp("tokenizer")
    paths = [f["path"] for f in c.contents["files"]]
    assert paths == ["tokenizer.json", "vocab.txt"], paths
    data = b"".join(b.file_bytes(path) for path in paths)
    c.segs = [
        Seg(
            len(data),
            {"id": "raw"},
            data,
            (*label, 0, True),
            salt=rand("salt/tokenizer/run", 16),
        )
    ]
    for f in c.contents["files"]:
        f["segments"] = [0, 1]
    return c


def valid_run(b: Base, encrypt: bool = True) -> bytes:
    p = b.pkg(encrypt)
    file_run(p, b)
    return build(p).data


def _run_contents(b: Base, change: Callable[[list[Any]], Any], encrypt: bool) -> bytes:
    p = b.pkg(encrypt)
    change(file_run(p, b).contents["files"])
    return build(p).data


both(
    "schema",
    "file-run-size",
    "a file run's first member one byte larger than its share of the segment",
    "schema.invalid",
    lambda b, encrypt: _run_contents(
        b, lambda fs: fs[0].__setitem__("size", fs[0]["size"] + 1), encrypt
    ),
    plain=False,
    verify=OK,
    why=BEHIND,
)
both(
    "schema",
    "file-run-two-segments",
    "a file run's second member as [0, 2], over the run's segment and past it",
    "schema.invalid",
    lambda b, encrypt: _run_contents(b, lambda fs: fs[1].__setitem__("segments", [0, 2]), encrypt),
    plain=False,
    verify=OK,
    why=BEHIND,
)
both(
    "schema",
    "file-run-empty-member",
    "an empty file named as a member of a file run ([0, 1], size 0)",
    "schema.invalid",
    lambda b, encrypt: _run_contents(
        b, lambda fs: fs.insert(1, {**fs[1], "path": "added.txt", "size": 0}), encrypt
    ),
    plain=False,
    verify=OK,
    why=BEHIND,
)


@case(
    "crypto",
    "file-run-as-file",
    "a file run's segment sealed as the unit 'file' of its first member",
    "integrity",
    verify=OK,
    why=BEHIND,
)
def k_run_as_file(b: Base) -> Built:
    return crypto(b, lambda p: file_run(p, b, ("file", "tokenizer.json")))


@case(
    "crypto",
    "file-run-named-last",
    "a file run's segment sealed under the name of its last member",
    "integrity",
    verify=OK,
    why=BEHIND,
)
def k_run_named_last(b: Base) -> Built:
    return crypto(b, lambda p: file_run(p, b, ("file-run", "vocab.txt")))


def refile(c: Comp) -> None:
    f = c.file("sub/deep/notes.md")
    f["segments"] = [0, len(c.segs)]
    f["size"] = sum(s.plain for s in c.segs)


@case(
    "crypto",
    "segment-missing",
    "last segment of a 3-segment file dropped (contents say 2)",
    "integrity",
    verify=OK,
    why=BEHIND,
)
def k_missing(b: Base) -> Built:
    def change(p: Pkg) -> None:
        c = multi(p, b)
        c.segs.pop()
        refile(c)

    return crypto(b, change)


@case(
    "crypto",
    "segment-extra",
    "a copy of segment 0 appended (contents say 4)",
    "integrity",
    verify=OK,
    why=BEHIND,
)
def k_extra(b: Base) -> Built:
    def change(p: Pkg) -> None:
        c = multi(p, b)
        c.segs.append(replace(c.segs[0]))
        refile(c)

    return crypto(b, change)


@case(
    "crypto",
    "segment-reordered",
    "segments 0 and 1 of a file swapped",
    "integrity",
    verify=OK,
    why=BEHIND,
)
def k_reordered(b: Base) -> Built:
    def change(p: Pkg) -> None:
        c = multi(p, b)
        c.segs[0], c.segs[1] = c.segs[1], c.segs[0]

    return crypto(b, change)


@case(
    "crypto",
    "segment-duplicated",
    "segment 1 replaced by a copy of segment 0",
    "integrity",
    verify=OK,
    why=BEHIND,
)
def k_duplicated(b: Base) -> Built:
    def change(p: Pkg) -> None:
        c = multi(p, b)
        c.segs[1] = replace(c.segs[0])

    return crypto(b, change)


@case(
    "crypto",
    "segment-moved",
    "a segment sealed for the tokenizer component moved into files",
    "integrity",
    verify=OK,
    why=BEHIND,
)
def k_moved(b: Base) -> Built:
    def change(p: Pkg) -> None:
        c = multi(p, b)
        # vocab.txt's stored segment exactly as the tokenizer component holds it:
        # sealed under the tokenizer's data key, with the tokenizer's salt and AAD.
        src = p.comp("tokenizer").segs[1]
        salt = rand("salt/tokenizer/1", 16)
        stored = seal_segment(
            dek_of("tokenizer"),
            salt,
            segment_aad("tokenizer", src.unit, src.plain, src.codec),
            src.payload,
        )
        c.segs[1] = replace(src, salt=salt, post=lambda _s: stored)
        refile(c)

    return crypto(b, change)


@case(
    "crypto",
    "segment-plain-over-16mib",
    "segment plain 16 MiB + 1 (out of range)",
    "schema.invalid",
)
def k_plain_range(b: Base) -> Built:
    return Built(
        hooked(b, lambda m: comp_of(m, "config")["segments"][0].__setitem__("plain", 16 * MiB + 1))
    )


@case("crypto", "segment-stored-zero", "segment stored 0 (out of range)", "schema.invalid")
def k_stored_zero(b: Base) -> Built:
    return Built(hooked(b, lambda m: comp_of(m, "config")["segments"][0].__setitem__("stored", 0)))


# === compression (behind a valid signature and AEAD, or with --no-encrypt) ==================

ZMAGIC = b"\x28\xb5\x2f\xfd"
NOTES = "sub/deep/notes.md"


def zcompress(data: bytes) -> bytes:
    return bytes(
        zstandard.ZstdCompressor(level=3, write_content_size=True, write_checksum=False).compress(
            data
        )
    )


def zblocks(frame: bytes) -> bytes:
    """The blocks of a frame without checksum: everything after its header."""
    assert frame[:4] == ZMAGIC
    fhd = frame[4]
    fcs_flag, single, did_flag = fhd >> 6, fhd >> 5 & 1, fhd & 3
    assert not fhd & 4, "checksum"
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[did_flag] + (single, 2, 4, 8)[fcs_flag]
    return frame[pos:]


def zframe(
    blocks: bytes,
    *,
    fcs: int | None,
    window_log: int | None = None,
    dict_id: int | None = None,
    checksum: bytes | None = None,
    magic: bytes = ZMAGIC,
) -> bytes:
    """A zstd frame header (RFC 8878 §3.1.1.1) built field by field, then ``blocks``."""
    single = window_log is None
    if fcs is None:
        assert not single
        flag, field_ = 0, b""
    elif single and fcs < 256:
        flag, field_ = 0, fcs.to_bytes(1, "little")
    elif 256 <= fcs < 65536 + 256:
        flag, field_ = 1, (fcs - 256).to_bytes(2, "little")
    elif fcs < 2**32:
        flag, field_ = 2, fcs.to_bytes(4, "little")
    else:
        flag, field_ = 3, fcs.to_bytes(8, "little")
    fhd = flag << 6 | int(single) << 5 | (4 if checksum is not None else 0) | (3 if dict_id else 0)
    window = b"" if window_log is None else bytes([(window_log - 10) << 3])
    did = dict_id.to_bytes(4, "little") if dict_id else b""
    return magic + bytes([fhd]) + window + did + field_ + blocks + (checksum or b"")


def zcase(
    b: Base,
    payload: Callable[[bytes], bytes],
    *,
    encrypt: bool,
    plain: bytes | None = None,
) -> bytes:
    """notes.md stored as one zstd segment whose payload is ``payload(plaintext)``."""
    p = b.pkg(encrypt)
    c = p.comp("files")
    data = plain if plain is not None else b.file_bytes(NOTES)
    frame = payload(data)
    assert len(frame) <= len(data), "a stored form larger than raw is refused by the schema"
    seg = c.segs[0]
    seg.plain = len(data)
    seg.codec = {"id": "zstd", "size": len(frame)}
    seg.payload = frame
    c.file(NOTES)["size"] = len(data)
    return build(p).data


def z_no_size(d: bytes) -> bytes:
    return zframe(zblocks(zcompress(d)), fcs=None, window_log=10)


def z_size_plus1(d: bytes) -> bytes:
    return zframe(zblocks(zcompress(d)), fcs=len(d) + 1)


def z_claims_4gib(d: bytes) -> bytes:
    return zframe(zblocks(zcompress(d)), fcs=4 << 30, window_log=18)


def z_window(d: bytes) -> bytes:
    return zframe(zblocks(zcompress(d)), fcs=len(d), window_log=25)


def z_two_frames(d: bytes) -> bytes:
    return zcompress(d) + zcompress(b"")


def z_skippable(d: bytes) -> bytes:
    return b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"skip" + zcompress(d)


def z_trailing(d: bytes) -> bytes:
    return zcompress(d) + b"\x00\x00\x00"


def z_overrun(d: bytes) -> bytes:
    return zframe(zblocks(zcompress(d + d)), fcs=len(d))


def z_dict(d: bytes) -> bytes:
    return zframe(zblocks(zcompress(d)), fcs=len(d), window_log=10, dict_id=0x12345678)


def z_legacy(d: bytes) -> bytes:
    return b"\x27\xb5\x2f\xfd" + zcompress(d)[4:]


def z_truncated(d: bytes) -> bytes:
    return zcompress(d)[:-3]


def z_checksum(d: bytes) -> bytes:
    return zframe(zblocks(zcompress(d)), fcs=len(d), checksum=b"\x00\x00\x00\x00")


BOMB_PLAIN = rand("zstd bomb", 100_000) + bytes(256 * 1024 - 100_000)

both(
    "compression",
    "zstd-no-content-size",
    "zstd frame without a content size",
    "codec.invalid",
    lambda b, encrypt: zcase(b, z_no_size, encrypt=encrypt),
    verify=OK,
    why=BEHIND,
)
both(
    "compression",
    "zstd-size-disagrees",
    "frame content size plain + 1",
    "codec.invalid",
    lambda b, encrypt: zcase(b, z_size_plus1, encrypt=encrypt),
    verify=OK,
    why=BEHIND,
)
both(
    "compression",
    "zstd-claims-4gib",
    "a ~100 KB frame whose header claims 4 GiB (manifest: 256 KiB)",
    "codec.invalid",
    lambda b, encrypt: zcase(b, z_claims_4gib, encrypt=encrypt, plain=BOMB_PLAIN),
    verify=OK,
    why=BEHIND,
)
both(
    "compression",
    "zstd-window-32mib",
    "frame window 32 MiB (cap 16 MiB)",
    "codec.invalid",
    lambda b, encrypt: zcase(b, z_window, encrypt=encrypt),
    verify=OK,
    why=BEHIND,
)
both(
    "compression",
    "zstd-extra-frame",
    "a second (empty) frame after the first",
    "codec.invalid",
    lambda b, encrypt: zcase(b, z_two_frames, encrypt=encrypt),
    verify=OK,
    why=BEHIND,
)
both(
    "compression",
    "zstd-skippable-frame",
    "a skippable frame before the frame",
    "codec.invalid",
    lambda b, encrypt: zcase(b, z_skippable, encrypt=encrypt),
    verify=OK,
    why=BEHIND,
)
both(
    "compression",
    "zstd-trailing-bytes",
    "three zero bytes after the frame",
    "codec.invalid",
    lambda b, encrypt: zcase(b, z_trailing, encrypt=encrypt),
    plain=False,
    verify=OK,
    why=BEHIND,
)
both(
    "compression",
    "zstd-output-past-size",
    "frame header says plain bytes, its blocks decode to twice that",
    "codec.invalid",
    lambda b, encrypt: zcase(b, z_overrun, encrypt=encrypt),
    verify=OK,
    why=BEHIND,
)
both(
    "compression",
    "zstd-dictionary",
    "frame that needs dictionary 0x12345678",
    "codec.invalid",
    lambda b, encrypt: zcase(b, z_dict, encrypt=encrypt),
    plain=False,
    verify=OK,
    why=BEHIND,
)
both(
    "compression",
    "zstd-legacy-magic",
    "legacy (v0.7) zstd magic",
    "codec.invalid",
    lambda b, encrypt: zcase(b, z_legacy, encrypt=encrypt),
    plain=False,
    verify=OK,
    why=BEHIND,
)
both(
    "compression",
    "zstd-truncated",
    "frame cut short by 3 bytes",
    "codec.invalid",
    lambda b, encrypt: zcase(b, z_truncated, encrypt=encrypt),
    plain=False,
    verify=OK,
    why=BEHIND,
)
both(
    "compression",
    "zstd-bad-checksum",
    "frame with a wrong content checksum",
    "codec.invalid",
    lambda b, encrypt: zcase(b, z_checksum, encrypt=encrypt),
    plain=False,
    verify=OK,
    why=BEHIND,
)


def bg_plane(b: Base, change: Callable[[bytes], bytes], *, encrypt: bool) -> bytes:
    """Change plane 0 of the byte-grouped "double" segment (8 x 64-byte planes)."""
    p = b.pkg(encrypt)
    seg = p.comp("weights").segs[BG_SEG]
    planes = seg.codec["planes"]
    assert seg.codec["id"] == "bg" and [q["id"] for q in planes] == ["zstd"] * 8
    parts, pos = [], 0
    for q in planes:
        parts.append(seg.payload[pos : pos + q["size"]])
        pos += q["size"]
    parts[0] = change(parts[0])
    planes[0]["size"] = len(parts[0])
    seg.payload = b"".join(parts)
    return build(p).data


both(
    "compression",
    "bg-plane-size-disagrees",
    "byte-grouping plane whose frame claims n + 1 bytes",
    "codec.invalid",
    lambda b, encrypt: bg_plane(
        b, lambda f: zframe(zblocks(f), fcs=65, window_log=10), encrypt=encrypt
    ),
    verify=OK,
    why=BEHIND,
)
both(
    "compression",
    "bg-plane-window",
    "byte-grouping plane whose frame has a 1 GiB window",
    "codec.invalid",
    lambda b, encrypt: bg_plane(
        b, lambda f: zframe(zblocks(f), fcs=64, window_log=30), encrypt=encrypt
    ),
    plain=False,
    verify=OK,
    why=BEHIND,
)


def bgx_planes(
    b: Base, change: Callable[[list[bytes], dict[str, Any]], None], *, encrypt: bool
) -> bytes:
    """Change the decoded planes of the bgx embed.weight segment (1024 fp32
    elements) with ``change``: values a writer never produces, behind a valid
    signature, digest and AEAD."""
    p = b.pkg(encrypt)
    seg = p.comp("weights").segs[BGX_SEG]
    codec = seg.codec
    assert codec["id"] == "bgx" and codec["float"] == "fp32" and codec["escapes"] > 0
    n = 1024
    decoded, pos = [], 0
    for q, size in zip(codec["planes"], [n, n, n, n, 2 * codec["escapes"]], strict=True):
        chunk = seg.payload[pos : pos + q["size"]]
        pos += q["size"]
        decoded.append(
            chunk
            if q["id"] == "raw"
            else zstandard.ZstdDecompressor().decompress(chunk, max_output_size=size)
        )
    change(decoded, codec)
    # Recompressed (raw planes would make the segment larger than its plaintext,
    # which the schema refuses before any decoding), except a plane that zstd
    # does not shrink (the few bytes of X), which the schema wants raw.
    planes = []
    for d in decoded:
        z = zstandard.ZstdCompressor(level=3).compress(d)
        planes.append(("zstd", z) if len(z) < len(d) else ("raw", d))
    codec["planes"] = [{"id": kind, "size": len(data)} for kind, data in planes]
    seg.payload = b"".join(data for _, data in planes)
    return build(p).data


def _set(planes: list[bytes], k: int, i: int, value: int) -> None:
    buf = bytearray(planes[k])
    buf[i] = value
    planes[k] = bytes(buf)


def _escape_inside(planes: list[bytes], codec: dict[str, Any]) -> None:
    inside = ((codec["lo"] + 1) << 3).to_bytes(2, "little")
    planes[4] = inside + planes[4][2:]


def _one_more_escape(planes: list[bytes], codec: dict[str, Any]) -> None:
    h = planes[0]
    i = next(k for k, v in enumerate(h) if v != 255)
    _set(planes, 0, i, 255)


for _name, _what, _change in [
    (
        "bgx-h-out-of-range",
        "bgx H byte between 8 x span and 255",
        lambda pl, c: _set(pl, 0, 3, 8 * c["span"]),
    ),
    (
        "bgx-b0-out-of-range",
        "bgx fp32 B0 byte of 32 (5 bits only)",
        lambda pl, c: _set(pl, 3, 5, 32),
    ),
    ("bgx-escape-inside-window", "bgx escape whose exponent is inside the window", _escape_inside),
    ("bgx-escape-count", "bgx H with one 255 more than the record's escapes", _one_more_escape),
]:
    both(
        "compression",
        _name,
        _what,
        "codec.invalid",
        lambda b, encrypt, _c=_change: bgx_planes(b, _c, encrypt=encrypt),
        verify=OK,
        why=BEHIND,
    )


def bgx_p5_padding(b: Base, *, encrypt: bool) -> bytes:
    """Set a padding bit of the p5 L plane of noise.bf16: 4095 values fill 20475
    bits of its 2560 bytes, so the top bit of the last byte is padding."""
    p = b.pkg(encrypt)
    seg = p.comp("weights").segs[BGX_P5_SEG]
    codec = seg.codec
    assert codec["id"] == "bgx" and codec["planes"][1] == {"id": "p5", "size": 2560}
    end = codec["planes"][0]["size"] + 2560
    payload = bytearray(seg.payload)
    payload[end - 1] |= 0x80
    seg.payload = bytes(payload)
    return build(p).data


both(
    "compression",
    "bgx-p5-padding",
    "bgx p5 plane with a padding bit set",
    "codec.invalid",
    bgx_p5_padding,
    verify=OK,
    why=BEHIND,
)


def bgx_ans(
    b: Base, change: Callable[[bytes], bytes], *, encrypt: bool, wide: bool = False
) -> bytes:
    """Replace the ans H plane of skew.weight (``wide``: the ans32 one of
    wide.weight) with ``change(plane)``, its record's size following: a plane a
    writer never produces, behind a valid signature, digest and AEAD."""
    p = b.pkg(encrypt)
    seg = p.comp("weights").segs[BGX_ANS32_SEG if wide else BGX_ANS_SEG]
    codec = seg.codec
    assert codec["id"] == "bgx" and codec["planes"][0]["id"] == ("ans32" if wide else "ans")
    size = codec["planes"][0]["size"]
    plane = change(seg.payload[:size])
    codec["planes"][0]["size"] = len(plane)
    seg.payload = plane + seg.payload[size:]
    return build(p).data


def _ans_table_end(plane: bytes) -> int:
    """Where the states start: after the bitmap and one LEB128 frequency per symbol."""
    at = 32
    for s in range(256):
        if plane[s // 8] >> (s % 8) & 1:
            at += 1 if plane[at] < 128 else 2
    return at


def _ans_first_freq(plane: bytes, new: bytes) -> bytes:
    """The plane with its first frequency's LEB128 bytes replaced by ``new``."""
    width = 1 if plane[32] < 128 else 2
    return plane[:32] + new + plane[32 + width :]


def _ans_state(plane: bytes, value: int) -> bytes:
    at = _ans_table_end(plane)
    return plane[:at] + value.to_bytes(4, "little") + plane[at + 4 :]


def _leb(f: int) -> bytes:
    return bytes((f,)) if f < 128 else bytes(((f & 127) | 128, f >> 7))


def _ans_freq_delta(plane: bytes, delta: int) -> bytes:
    """The first frequency changed by ``delta``: the table no longer sums to 4096."""
    first = plane[32] if plane[32] < 128 else (plane[32] & 127) | (plane[33] << 7)
    return _ans_first_freq(plane, _leb(first + delta))


# Damages to an ans plane, each breaking one rule of FORMAT.md §6.1.1.
ANS_DAMAGES: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "sum": ("frequencies summing to 4097", lambda pl: _ans_freq_delta(pl, 1)),
    "leb-long": (
        "a frequency in non-minimal LEB128 (a 0x00 second byte)",
        lambda pl: _ans_first_freq(pl, bytes([0x80, 0x00])),
    ),
    "empty-table": ("a bitmap with no symbol", lambda pl: bytes(32) + pl[32:]),
    "state-low": ("a state below 2^23", lambda pl: _ans_state(pl, (1 << 23) - 1)),
    "state-high": ("a state of 2^31", lambda pl: _ans_state(pl, 1 << 31)),
    "truncated": ("a stream one byte short", lambda pl: pl[:-1]),
    "trailing": ("a stream with one byte left over", lambda pl: pl + b"\x00"),
    "flipped": (
        "a stream with a flipped bit (final states disagree)",
        lambda pl: pl[:-3] + bytes([pl[-3] ^ 0x10]) + pl[-2:],
    ),
}


# Damages to an ans32 plane, each breaking one rule of FORMAT.md §6.1.2 (its table
# is an ans table: those damages above apply unchanged).
ANS32_DAMAGES: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "sum": ANS_DAMAGES["sum"],
    "state-low": ("a state below 2^16", lambda pl: _ans_state(pl, (1 << 16) - 1)),
    "odd": ("a stream of an odd number of bytes", lambda pl: pl[:-1]),
    "truncated": ("a stream one word short", lambda pl: pl[:-2]),
    "trailing": ("a stream with one word left over", lambda pl: pl + b"\x00\x00"),
    "flipped": ANS_DAMAGES["flipped"],
}


def ans_codec(
    b: Base, change: Callable[[bytes], bytes], *, encrypt: bool, wide: bool = False
) -> bytes:
    """Replace the ans plane that is the whole of fp8.weight's segment (``wide``:
    the ans32 plane of fp8.wide's) with ``change(plane)``, its record's size
    following."""
    p = b.pkg(encrypt)
    seg = p.comp("weights").segs[ANS32_SEG if wide else ANS_SEG]
    kind = "ans32" if wide else "ans"
    assert seg.codec["id"] == kind and seg.codec["size"] == len(seg.payload)
    seg.payload = change(seg.payload)
    seg.codec["size"] = len(seg.payload)
    return build(p).data


# Every damage on bgx's H plane; on the ans codec, which decodes through the same
# plane decoder, the table, a state and the stream's end.
for _prefix, _where, _build, _keys, _wide in [
    ("bgx-ans", "bgx H plane as ans with", bgx_ans, list(ANS_DAMAGES), False),
    (
        "ans-codec",
        "ans codec with",
        ans_codec,
        ["sum", "state-low", "truncated", "trailing", "flipped"],
        False,
    ),
    ("bgx-ans32", "bgx H plane as ans32 with", bgx_ans, list(ANS32_DAMAGES), True),
    ("ans32-codec", "ans32 codec with", ans_codec, list(ANS32_DAMAGES), True),
]:
    for _key in _keys:
        _what, _change = (ANS32_DAMAGES if _wide else ANS_DAMAGES)[_key]
        both(
            "compression",
            f"{_prefix}-{_key}",
            f"{_where} {_what}",
            "codec.invalid",
            lambda b, encrypt, _c=_change, _f=_build, _w=_wide: _f(b, _c, encrypt=encrypt, wide=_w),
            verify=OK,
            why=BEHIND,
        )


def relabelled(b: Base, *, encrypt: bool, plane: bool) -> bytes:
    """An ans32 plane (wide.weight's H, or fp8.wide's whole segment) relabelled
    "ans": the schema allows the size, and the bytes no longer decode."""
    p = b.pkg(encrypt)
    seg = p.comp("weights").segs[BGX_ANS32_SEG if plane else ANS32_SEG]
    record = seg.codec["planes"][0] if plane else seg.codec
    assert record["id"] == "ans32"
    record["id"] = "ans"
    return build(p).data


for _plane in (True, False):
    both(
        "compression",
        "bgx-ans32-as-ans" if _plane else "ans32-codec-as-ans",
        "an ans32 " + ("H plane" if _plane else "codec") + " relabelled ans",
        "codec.invalid",
        lambda b, encrypt, _p=_plane: relabelled(b, encrypt=encrypt, plane=_p),
        verify=OK,
        why=BEHIND,
    )


# === tensor table (weights contents, behind a valid signature and AEAD) ======================


def tensor_case(
    b: Base, change: Callable[[Comp], Any], *, encrypt: bool = True, **kw: Any
) -> Built:
    p = b.pkg(encrypt)
    change(p.comp("weights"))
    return Built(build(p).data, **kw)


def retensor(tensor: str, /, **fields: Any) -> Callable[[Comp], None]:
    return lambda c: c.tensor(tensor).update(fields)


# fmt: off
TENSOR_CASES: list[tuple[str, str, Callable[[Comp], None], bool]] = [
    ("length-mismatch", "embed.weight shape [64, 15] for 4096 bytes", retensor("embed.weight", shape=[64, 15]), True),
    ("length-overflow", "pruned shape [2^62 + 256] F32: prod * 4 = 1024 mod 2^64", retensor("pruned", shape=[2**62 + 256]), True),
    ("length-overflow-zero", "empty shape [2^32, 2^32] F32: prod * 4 = 0 mod 2^64", retensor("empty", shape=[2**32, 2**32]), False),
    ("dim-negative", "scale shape [-1, -1] (prod is 1, as for [])", retensor("scale", shape=[-1, -1]), True),
    ("dim-float", "norm.f16 shape [8.0]", retensor("norm.f16", shape=[8.0]), True),
    ("dim-bool", "scale shape [true]", retensor("scale", shape=[True]), False),
    ("dim-text", "norm.f16 shape ['8']", retensor("norm.f16", shape=["8"]), False),
    ("shape-not-array", "mask shape {'n': 6}", retensor("mask", shape={"n": 6}), False),
    ("ndim-33", "scale with 33 dimensions of 1", retensor("scale", shape=[1] * 33), False),
    ("dtype-unknown", "embed.weight dtype 'F4' (packed 4-bit)", retensor("embed.weight", dtype="F4"), True),
    ("dtype-wider", "embed.weight dtype 'C64' at its F32 length (8-byte elements)", retensor("embed.weight", dtype="C64"), True),
    ("dtype-one-byte", "embed.weight dtype 'F8_E8M0' at its F32 length", retensor("embed.weight", dtype="F8_E8M0"), True),
    ("dtype-lowercase", "mask dtype 'bool'", retensor("mask", dtype="bool"), False),
    ("offsets-aliased", "embed.bf16 at embed.weight's offset", retensor("embed.bf16", offset=1224), True),
    ("offsets-gap", "norm.f16 8 bytes later than it should be", retensor("norm.f16", offset=7376), True),
    ("names-duplicate", "embed.bf16 renamed embed.weight", retensor("embed.bf16", name="embed.weight"), True),
    ("names-nfc-duplicate", "tensors 'caf\\u00e9' and 'cafe\\u0301'", lambda c: (c.tensor("embed.weight").update(name="caf\u00e9"), c.tensor("embed.bf16").update(name="cafe\u0301")), True),
    ("name-empty", "a tensor named ''", retensor("mask", name=""), False),
    ("file-index", "a tensor in file 1 of a 1-file component", retensor("mask", file=1), False),
    ("segments-past-file", "pos.ids covering two segments", retensor("pos.ids", segments=[3, 2]), False),
    ("header-split", "safetensors header 4 bytes longer than its segment", lambda c: c.contents["files"][0].update(header=1228), False),
    ("name-metadata", "a tensor named '__metadata__'", retensor("mask", name="__metadata__"), False),
    # The run (segment 11: run.bias, run.norm, run.head share it, FORMAT §5).
    ("run-alias", "run.norm names fp8.weight's segment [10, 1]", retensor("run.norm", segments=[ANS_SEG, 1]), True),
    ("run-two-segments", "run.norm as [11, 2], over the run's segment and past it", retensor("run.norm", segments=[RUN_SEG, 2]), True),
    ("run-empty-member", "run.head of shape [0] (no bytes) still in the run's segment", retensor("run.head", shape=[0]), True),
    ("run-left", "run.norm leaves the run (segments [12, 0]): run.bias alone is shorter than the segment", retensor("run.norm", segments=[RUN_SEG + 1, 0]), True),
    ("run-short", "run.head of shape [3]: the run's tensors end 4 bytes before its segment", retensor("run.head", shape=[3]), True),
    # The table and the file's stored safetensors header must agree: the loader serves
    # the one, open writes the other.
    ("header-disagrees-dtype", "embed.weight listed as I32, its stored header says F32", retensor("embed.weight", dtype="I32"), True),
    ("header-disagrees-shape", "embed.weight listed as [16, 64], its stored header says [64, 16]", retensor("embed.weight", shape=[16, 64]), True),
    ("header-disagrees-name", "embed.weight listed as embed.other", retensor("embed.weight", name="embed.other"), True),
]
# fmt: on

for _tid, _title, _change, _plain_too in TENSOR_CASES:
    both(
        "tensor",
        _tid,
        _title,
        "tensor.invalid",
        partial(lambda b, change, encrypt: tensor_case(b, change, encrypt=encrypt), change=_change),
        plain=_plain_too,
        verify=OK,
        why=BEHIND,
    )


@case(
    "tensor",
    "zero-size-huge-dim",
    "zero-length tensor of shape [0, 2^64 - 1]: prod * itemsize == length == 0",
    "tensor.invalid",
    verify=OK,
    why="prod(shape) * itemsize == length holds (0 == 0), but no framework can build an "
    "array with a 2^64 - 1 axis: FORMAT.md §5 bounds prod(max(d, 1)) * itemsize below "
    "2^62. (This once reached numpy and raised ValueError from the loader.)",
)
def t_zero_huge(b: Base) -> Built:
    return tensor_case(b, retensor("empty", shape=[0, 2**64 - 1]))


def _header_bomb(c: Comp) -> None:
    """The safetensors header unit declared 2 GiB long: the real header, then 256
    const segments of 8 MiB (a few bytes each in the package), every tensor moved
    past them. A reader that decoded the whole unit before reading its 8-byte
    length would allocate the 2 GiB (the check of header against table once did)."""
    count, size = 256, 8 << 20
    f = c.contents["files"][0]
    c.segs[0].unit = ("header", f["path"], 0, False)
    c.segs[1:1] = [
        Seg(
            size,
            {"id": "const", "width": 8},
            bytes(8),
            ("header", f["path"], i + 1, i == count - 1),
        )
        for i in range(count)
    ]
    f["header"] += count * size
    f["size"] += count * size
    f["segments"] = [0, f["segments"][1] + count]
    for t in c.contents["tensors"]:
        t["offset"] += count * size
        t["segments"] = [t["segments"][0] + count, t["segments"][1]]


both(
    "tensor",
    "header-unit-2gib",
    "safetensors header unit declared 2 GiB (256 const segments of 8 MiB)",
    "tensor.invalid",
    lambda b, encrypt: tensor_case(b, _header_bomb, encrypt=encrypt),
    verify=OK,
    why=BEHIND,
)


# === extraction paths ========================================================================


def path_case(b: Base, change: Callable[[Comp], Any], *, encrypt: bool = True) -> Built:
    p = b.pkg(encrypt)
    change(p.comp("files"))
    return Built(build(p).data)


def repath(path: str, old: str = NOTES) -> Callable[[Comp], None]:
    return lambda c: c.file(old).__setitem__("path", path)


def two_paths(first: str, second: str) -> Callable[[Comp], None]:
    def change(c: Comp) -> None:
        c.file("empty.txt")["path"] = first
        c.file(NOTES)["path"] = second

    return change


# fmt: off
PATH_CASES: list[tuple[str, str, Callable[[Comp], None], bool]] = [
    ("absolute", "/tmp/hostile-escape", repath("/tmp/hostile-escape"), True),
    ("dotdot", "../escape.md", repath("../escape.md"), True),
    ("dotdot-inner", "sub/../../escape.md", repath("sub/../../escape.md"), True),
    ("backslash", "..\\escape.md", repath("..\\escape.md"), True),
    ("nul", "notes\\x00.md", repath("notes\x00.md"), True),
    ("control", "ESC in a name", repath("sub/\x1b[31mred.md"), False),
    ("control-c1", "CSI (U+009B, a C1 control) in a name", repath("sub/\x9b31mred.md"), False),
    ("device-name", "sub/deep/NUL.md (a Windows device)", repath("sub/deep/NUL.md"), True),
    ("device-dir", "com1/deep/notes.md (a Windows device as a directory)", repath("com1/deep/notes.md"), False),
    ("dot-element", "sub/./notes.md", repath("sub/./notes.md"), False),
    ("empty-element", "sub//notes.md", repath("sub//notes.md"), False),
    ("empty", "the empty path", repath(""), False),
    ("trailing-dot", "sub/deep/notes.", repath("sub/deep/notes."), False),
    ("trailing-space", "sub/deep/notes ", repath("sub/deep/notes "), False),
    ("drive-colon", "C:notes.md", repath("C:notes.md"), False),
    ("not-nfc", "cafe\\u0301.md (decomposed)", repath("cafe\u0301.md"), False),
    ("element-256", "one 256-byte element", repath("a" * 256), False),
    ("too-long", "4097-byte path", repath("/".join(["a" * 200] * 20) + "/" + "b" * 77), False),
    ("too-deep", "65 path elements (limit 64)", repath("/".join(["d"] * 64) + "/notes.md"), True),
    ("case-collision", "Sub/Deep/Notes.md next to sub/deep/notes.md", two_paths("Sub/Deep/Notes.md", NOTES), True),
    ("fullwidth-collision", "\\uff53ub/deep/notes.md (fullwidth s) next to sub/deep/notes.md", two_paths("\uff53ub/deep/notes.md", NOTES), True),
    ("casefold-collision", "stra\\u00dfe.md next to STRASSE.md", two_paths("STRASSE.md", "stra\u00dfe.md"), False),
    ("ligature-collision", "\\ufb01le.md (fi ligature) next to file.md", two_paths("file.md", "\ufb01le.md"), False),
    ("file-is-dir", "a file 'sub/deep' next to sub/deep/notes.md", two_paths("sub/deep", NOTES), True),
    ("mode-setuid", "mode 0o4755", lambda c: c.file(NOTES).__setitem__("mode", 0o4755), False),
]
# fmt: on

for _pid, _title, _change, _plain_too in PATH_CASES:
    both(
        "paths",
        _pid,
        _title,
        "schema.invalid",
        partial(lambda b, change, encrypt: path_case(b, change, encrypt=encrypt), change=_change),
        plain=_plain_too,
        verify=OK,
        why=BEHIND,
    )

# Each component's paths are fine, but open writes every component into one tree.
CROSS_CASES = [
    (
        "cross-component-same",
        "files' notes renamed config.json, the config component's file",
        "config.json",
    ),
    (
        "cross-component-case",
        "files' notes renamed CONFIG.json, beside the config component's config.json",
        "CONFIG.json",
    ),
    (
        "cross-component-file-is-dir",
        "files' notes renamed config.json/x, under the config component's file",
        "config.json/x",
    ),
]
_CROSS_WHY = (
    "each component's contents are valid alone, so verify accepts it; open writes every "
    "component into one tree and must refuse before writing anything. The loader reads "
    "files one by one: it serves the --no-encrypt variant, and the renamed file of the "
    "encrypted one fails its segments' AAD, which binds the path"
)
for _pid, _title, _path in CROSS_CASES:
    for _encrypt, _suffix, _how in ((True, "enc", "encrypted"), (False, "plain", "--no-encrypt")):
        case(
            "paths",
            f"{_pid}-{_suffix}",
            f"{_title} ({_how})",
            "schema.invalid",
            verify=OK,
            load="integrity" if _encrypt else OK,
            why=_CROSS_WHY,
        )(
            partial(
                lambda b, path, encrypt: path_case(b, repath(path), encrypt=encrypt),
                path=_path,
                encrypt=_encrypt,
            )
        )

OUTDIRS = {
    "symlink-to-dir": "-o is a pre-planted symlink to a non-empty directory",
    "symlink-to-empty-dir": "-o is a pre-planted symlink to an empty directory",
    "dangling-symlink": "-o is a pre-planted dangling symlink",
    "dir-with-symlink": "-o is a directory holding only a planted symlink (config.json)",
}
for _kind, _title in OUTDIRS.items():
    case(
        "paths",
        f"output-{_kind}",
        _title,
        "output.exists",
        verify=OK,
        load=OK,
        why=OUTPUT_ONLY + "; nothing may be written through the link, and it must stay as planted",
    )(partial(lambda b, kind: Built(valid(b), outdir=kind), kind=_kind))


# === resources ===============================================================================


@case("resources", "recipients-65", "65 recipient stanzas (limit 64)", "schema.invalid")
def r_recipients(b: Base) -> Built:
    return crypto(
        b,
        lambda p: setattr(
            p.comp("config"), "enc_hook", lambda r: r.update(recipients=r["recipients"] * 65)
        ),
    )


@case(
    "resources",
    "recipients-over-policy",
    "2 recipients, policy max_recipients 1",
    "schema.invalid",
)
def r_recipients_policy(b: Base) -> Built:
    return crypto(
        b,
        lambda p: setattr(p.comp("config"), "recipients", [keys().recipient, keys().other]),
        policy="limit-recipients",
    )


@case(
    "resources",
    "scrypt-recipient",
    "recipient type 'scrypt' (secpack has none), stanza shaped like hpke-x25519",
    "schema.unsupported",
)
def r_scrypt(b: Base) -> Built:
    return crypto(b, lambda p: stanza(p, "config", lambda r: r.update(type="scrypt")))


@case(
    "resources",
    "scrypt-work-factor",
    "scrypt recipient with its own fields and work factor log_n = 60",
    ("schema.unsupported", "schema.invalid"),
    why="FORMAT.md §4 says an unknown recipient type is schema.unsupported and any other "
    "unknown key schema.invalid; a stanza of an unknown type carrying that type's own keys "
    "is both (secpack checks the keys first and says schema.invalid, while for an unknown "
    "codec it checks the id first and says schema.unsupported)",
)
def r_scrypt_n(b: Base) -> Built:
    def change(r: dict[str, Any]) -> None:
        r.clear()
        r.update(type="scrypt", salt=bytes(16), log_n=60, r=8, p=1, wrapped=bytes(48))

    return crypto(b, lambda p: stanza(p, "config", change))


@case("resources", "components-1025", "1025 empty components (limit 1024)", "schema.invalid")
def r_components(b: Base) -> Built:
    empty = {"files": [], "tensors": []}
    comps = [
        Comp(f"c{i}", "files", "application/octet-stream", dict(empty), [], encrypt=False)
        for i in range(1025)
    ]
    return Built(build(Pkg(comps)).data)


@case(
    "resources",
    "segments-over-policy",
    "weights has 8 segments, policy max_segments 4",
    "schema.invalid",
)
def r_segments(b: Base) -> Built:
    return Built(valid(b), policy="limit-segments")


@case(
    "resources",
    "total-plain-over-policy",
    "8360 plaintext bytes, policy max_total_plain 8000",
    "schema.invalid",
)
def r_total(b: Base) -> Built:
    return Built(valid(b), policy="limit-total-plain")


@case(
    "resources",
    "component-plain-over-policy",
    "7810-byte weights, policy max_component_plain 4096",
    "schema.invalid",
)
def r_component(b: Base) -> Built:
    return Built(valid(b), policy="limit-component-plain")


@case(
    "resources",
    "expansion-bomb",
    "const segment: 1 stored byte for 16 MiB (max_expansion 2^20)",
    "schema.invalid",
)
def r_expansion(b: Base) -> Built:
    p = b.pkg(False)
    c = p.comp("files")
    c.segs[0] = Seg(16 * MiB, {"id": "const", "width": 1}, b"\x00", ("file", NOTES, 0, True))
    c.file(NOTES)["size"] = 16 * MiB
    return Built(build(p).data)


@case(
    "resources",
    "files-over-policy",
    "tokenizer with 2 files, policy max_files 1",
    "schema.invalid",
    verify=OK,
    why=BEHIND,
)
def r_files(b: Base) -> Built:
    return Built(valid(b), policy="limit-files")


@case(
    "resources",
    "tensors-over-policy",
    "8 tensors, policy max_tensors 4",
    "schema.invalid",
    verify=OK,
    why=BEHIND,
)
def r_tensors(b: Base) -> Built:
    return Built(valid(b), policy="limit-tensors")


@case("resources", "metadata-257", "257 metadata entries (limit 256)", "schema.invalid")
def r_metadata(b: Base) -> Built:
    p = b.pkg()
    p.metadata = {f"k{i:03d}": "v" for i in range(257)}
    return Built(build(p).data)


@case(
    "resources",
    "signatures-65",
    "65 signature entries (max_signatures 64)",
    ("cbor.limit", "schema.invalid"),
    why="the signature-section decode caps CBOR items and the list length separately; "
    "either refusal is a limit on the section. (secpack's item cap also refuses 53-64 "
    "signatures, which the spec allows: see test_corpus.test_signature_count_bug)",
)
def r_signatures(b: Base) -> Built:
    k = keys()
    return signed(b, lambda mb: [("cose-sign1", cose(k.ed, mb))] * 65)


@case(
    "resources",
    "items-bomb-under-cap",
    "1 000 000-entry map in ext, under max_cbor_items, signed by an untrusted key",
    "cbor.limit",
    why="a map's entries are capped on their own (4096) before anything is built: a "
    "million-entry map once cost ~3 s and ~300 MiB before the signature check",
    isolate=True,
)
def r_map_bomb(b: Base) -> Built:
    n = 999_000  # 1 998 001 items with the map itself, plus the manifest's ~300
    # Keys "000000", "000001", ...: 6-byte text strings (head 0x66), in canonical order.
    fragment = head(5, n) + b"".join(b"\x66%06d\x00" % i for i in range(n))
    p = b.pkg(False)
    p.signers = [keys().untrusted]
    p.manifest_hook = lambda m: m.__setitem__("ext", {"x": MARKER})
    p.manifest_bytes_hook = lambda mb: replace_once(mb, enc(MARKER), fragment)
    return Built(build(p).data)


# === controls: packages every reader must accept ============================================


def control_signatures_60(b: Base) -> bytes:
    """60 signature entries (FORMAT.md §8 allows 64): the trusted key and 59 others."""
    k = keys()

    def sigs(mb: bytes) -> list[tuple[str, bytes]]:
        return [("cose-sign1", cose(k.ed, mb))] + [("cose-sign1", cose(k.untrusted, mb))] * 59

    p = b.pkg()
    p.sigs_hook = lambda mb, _entries: sigs(mb)
    return build(p).data


CONTROLS: dict[str, Callable[[Base], bytes]] = {
    "valid-enc": lambda b: valid(b, True),
    "valid-plain": lambda b: valid(b, False),
    "file-run-enc": lambda b: valid_run(b, True),
    "file-run-plain": lambda b: valid_run(b, False),
    "signatures-60": control_signatures_60,
}


# === policies and output =====================================================================

_TRUST = 'version = 1\n[trust]\nkeys = ["../keys/signing-ed25519.key.pub"]\n'
POLICIES = {
    "threshold2": 'version = 1\n[trust]\nkeys = ["../keys/signing-ed25519.key.pub", '
    '"../keys/signing-p256.key.pub"]\nthreshold = 2\n',
    "max-age": _TRUST + '[freshness]\nmax_age = "30d"\n',
    "require-expires": _TRUST + "[freshness]\nrequire_expires = true\n",
    "required-component": _TRUST + '[components]\nrequired = ["adapter:lora"]\n',
    "limit-segments": _TRUST + "[limits]\nmax_segments = 4\n",
    "limit-total-plain": _TRUST + "[limits]\nmax_total_plain = 8000\n",
    "limit-component-plain": _TRUST + "[limits]\nmax_component_plain = 4096\n",
    "limit-files": _TRUST + "[limits]\nmax_files = 1\n",
    "limit-tensors": _TRUST + "[limits]\nmax_tensors = 4\n",
    "limit-recipients": _TRUST + "[limits]\nmax_recipients = 1\n",
}
KEY_FILES = (
    "signing-ed25519.key.pub",
    "signing-p256.key.pub",
    "recipient-x25519.key",
    "other-recipient-x25519.key",
)
TRUST_KEY = "keys/signing-ed25519.key.pub"


def identity_path(name: str) -> str:
    return {"recipient": "keys/recipient-x25519.key", "other": "keys/other-recipient-x25519.key"}[
        name
    ]


def generate(out: Path, only: set[str] | None = None) -> list[dict[str, Any]]:
    """Write the corpus into ``out`` (which must not exist); return its records,
    also written to ``out/cases.json``. ``out/controls`` holds packages that must
    open (the unchanged forged baselines) and the model they hold."""
    ids = [c.id for c in CASES]
    if len(ids) != len(set(ids)):
        raise AssertionError("duplicate case ids")
    out.mkdir(parents=True)
    (out / "cases").mkdir()
    (out / "keys").mkdir()
    (out / "policies").mkdir()
    (out / "controls").mkdir()
    for name in KEY_FILES:
        shutil.copyfile(KEYS / name, out / "keys" / name)
    for name, text in POLICIES.items():
        (out / "policies" / f"{name}.toml").write_text(text)
    records = []
    with tempfile.TemporaryDirectory(prefix="hostile-base-") as tmp:
        base = Base(Path(tmp))
        shutil.copytree(base.model, out / "controls" / "model")
        for name, make in CONTROLS.items():
            (out / "controls" / f"{name}.spk").write_bytes(make(base))
        for c in CASES:
            if only is not None and c.id not in only:
                continue
            built = c.build(base)
            if isinstance(built, bytes):
                built = Built(built)
            rel = f"cases/{c.id}.spk"
            (out / rel).write_bytes(built.data)
            records.append(
                {
                    "id": c.id,
                    "class": c.cls,
                    "title": c.title,
                    "why": c.why,
                    "expect": {op: list(c.expect(op)) for op in ("verify", "open", "load")},
                    "bugs": dict(c.bugs),
                    "isolate": c.isolate,
                    "package": rel,
                    "trust": [TRUST_KEY] if built.policy == "trust" else [],
                    "policy": None if built.policy == "trust" else f"policies/{built.policy}.toml",
                    "name": built.name,
                    "identity": identity_path(built.identity),
                    "state": built.state,
                    "outdir": built.outdir,
                }
            )
    (out / "cases.json").write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    return records


# === TABLE.md ================================================================================


def _codes(values: set[str]) -> str:
    return ", ".join(f"`{v}`" for v in sorted(values)) or "-"


def render_table() -> str:
    lines = [
        "# Hostile corpus",
        "",
        "Written by `tests/hostile/generate.py --table`; do not edit by hand.",
        "`tests/hostile/test_corpus.py` builds every case, checks that `verify`, `open` and",
        "the library give the expected code (`ok`: that way of reading legitimately",
        "succeeds, see the case's reason), and that this file is up to date.",
        "",
        f"**{len(CASES)} cases** in {len(CLASSES)} classes.",
        "",
        "| class | cases | codes seen (any of verify / open / load) | verify accepts |",
        "|---|---:|---|---:|",
    ]
    for cls in CLASSES:
        mine = [c for c in CASES if c.cls == cls]
        seen = {code for c in mine for op in ("verify", "open", "load") for code in c.expect(op)}
        accepts = sum(1 for c in mine if c.expect("verify") == (OK,))
        lines.append(f"| {cls} | {len(mine)} | {_codes(seen - {OK})} | {accepts} |")
    lines += [
        "",
        "## Cases",
        "",
        "| id | class | verify | open | load | what |",
        "|---|---|---|---|---|---|",
    ]
    for c in CASES:
        cells = [" / ".join(c.expect(op)) for op in ("verify", "open", "load")]
        note = " (known bug: " + ", ".join(sorted(c.bugs)) + ")" if c.bugs else ""
        title = c.title.replace("|", "\\|")
        lines.append(
            f"| `{c.id}` | {c.cls} | {cells[0]} | {cells[1]} | {cells[2]} | {title}{note} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the corpus into this new directory")
    parser.add_argument("--table", action="store_true", help="rewrite tests/hostile/TABLE.md")
    args = parser.parse_args(argv)
    if not args.out and not args.table:
        parser.error("give --out DIR and/or --table")
    if args.table:
        (HERE / "TABLE.md").write_text(render_table())
        print(f"wrote {HERE / 'TABLE.md'} ({len(CASES)} cases)")
    if args.out:
        records = generate(args.out)
        print(f"wrote {len(records)} cases to {args.out}")


if __name__ == "__main__":
    main()
