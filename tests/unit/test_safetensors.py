"""The strict safetensors header reader: one hand-written case per rule."""

from __future__ import annotations

import json
import struct

import pytest

from secpack.errors import InputError
from secpack.tensors import safetensors as st


def _file(header: str | dict[str, object], data: bytes = b"") -> bytes:
    raw = header.encode() if isinstance(header, str) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _parse(blob: bytes) -> st.SafetensorsLayout:
    n = st.parse_prefix(blob[:8], len(blob), 1 << 20)
    return st.parse_header(blob[8 : 8 + n], len(blob), 32)


def _refused(blob: bytes) -> None:
    with pytest.raises(InputError) as err:
        _parse(blob)
    assert err.value.code == "input.safetensors"


def t(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_valid_file_with_zero_size_and_scalar() -> None:
    header = {
        "a": t("F32", [2], 0, 8),
        "z": t("F32", [0, 3], 8, 8),
        "s": t("I64", [], 8, 16),
        "__metadata__": {"k": "v"},
    }
    layout = _parse(_file(header, bytes(16)))
    assert [e.name for e in layout.tensors] == ["a", "z", "s"]
    assert layout.metadata == {"k": "v"}


def test_null_metadata_is_no_metadata_as_safetensors_reads_it() -> None:
    layout = _parse(_file({"__metadata__": None, "a": t("F32", [2], 0, 8)}, bytes(8)))
    assert [e.name for e in layout.tensors] == ["a"]
    assert layout.metadata == {}


def test_zero_size_tensor_at_running_offset_before_neighbour_is_fine() -> None:
    header = {"z": t("F32", [0], 0, 0), "a": t("F32", [1], 0, 4)}
    assert len(_parse(_file(header, bytes(4))).tensors) == 2


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(
            _file(
                '{"a":'
                + json.dumps(t("U8", [1], 0, 1))
                + ',"a":'
                + json.dumps(t("U8", [1], 1, 2))
                + "}",
                bytes(2),
            ),
            id="duplicate-name",
        ),
        pytest.param(
            _file({"\u00e9": t("U8", [1], 0, 1), "e\u0301": t("U8", [1], 1, 2)}, bytes(2)),
            id="nfc-duplicate",
        ),
        pytest.param(
            _file({"a": t("U8", [4], 0, 4), "z": t("U8", [0], 2, 2)}, bytes(4)),
            id="zero-size-aliases-inside",
        ),
        pytest.param(
            _file({"a": t("U8", [4], 0, 4), "b": t("U8", [4], 2, 6)}, bytes(6)), id="overlap"
        ),
        pytest.param(
            _file({"a": t("U8", [4], 0, 4), "b": t("U8", [4], 6, 10)}, bytes(10)), id="gap"
        ),
        pytest.param(_file({"a": t("U8", [4], 0, 4)}, bytes(5)), id="trailing-data"),
        pytest.param(_file({"a": t("U8", [4], 0, 4)}, bytes(3)), id="truncated-data"),
        pytest.param(_file({"a": t("F32", [3], 0, 8)}, bytes(8)), id="shape-length-mismatch"),
        pytest.param(
            _file({"a": t("F32", [2**62, 2**62], 0, 8)}, bytes(8)), id="overflowing-shape"
        ),
        pytest.param(_file({"a": t("F32", [-1], 0, 0)}), id="negative-dim"),
        pytest.param(
            _file({"a": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}, bytes(4)),
            id="float-dim",
        ),
        pytest.param(
            _file({"a": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, bytes(1)),
            id="bool-dim",
        ),
        pytest.param(_file({"a": t("F4", [2], 0, 1)}, bytes(1)), id="unknown-dtype"),
        pytest.param(_file({"a": {**t("U8", [1], 0, 1), "extra": 1}}, bytes(1)), id="extra-field"),
        pytest.param(_file({"a": t("U8", [1], 1, 0)}, bytes(1)), id="reversed-offsets"),
        pytest.param(_file({"__metadata__": {"k": 1}}), id="metadata-not-strings"),
        pytest.param(_file({"__metadata__": ["k", "v"]}), id="metadata-a-list"),
        pytest.param(_file({"__metadata__": "k"}), id="metadata-a-string"),
        pytest.param(_file('{"a": NaN}'), id="nan-literal"),
        pytest.param(_file("[1, 2]"), id="not-an-object"),
        pytest.param(_file(' {"a": 1}'), id="leading-space"),
        pytest.param(struct.pack("<Q", 1 << 40) + b"{}", id="huge-header-length"),
        pytest.param(struct.pack("<Q", 100) + b"{}", id="header-past-eof"),
        pytest.param(b"\x01\x00", id="short-prefix"),
        pytest.param(_file(b"\xff\xfe".decode("latin-1")), id="not-json"),
        # Python's JSON parser refuses integers of more than 4300 digits (ValueError).
        pytest.param(
            _file('{"a": {"dtype": "U8", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 1]}}'),
            id="5000-digit-dim",
        ),
        pytest.param(
            _file('{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1' + "0" * 5000 + "]}}"),
            id="5000-digit-offset",
        ),
        # JSON escapes that decode to lone surrogates: valid JSON, not Unicode text.
        pytest.param(
            _file('{"a\\ud800": ' + json.dumps(t("U8", [1], 0, 1)) + "}", bytes(1)),
            id="surrogate-name",
        ),
        pytest.param(
            _file(
                '{"__metadata__": {"k": "\\udfff"}, "a": ' + json.dumps(t("U8", [1], 0, 1)) + "}",
                bytes(1),
            ),
            id="surrogate-metadata-value",
        ),
        pytest.param(
            _file(
                '{"__metadata__": {"\\ud83d": "v"}, "a": ' + json.dumps(t("U8", [1], 0, 1)) + "}",
                bytes(1),
            ),
            id="surrogate-metadata-key",
        ),
    ],
)
def test_refusals(blob: bytes) -> None:
    _refused(blob)


def test_a_git_lfs_pointer_is_named_as_such() -> None:
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n"
    with pytest.raises(InputError) as err:
        st.parse_prefix(pointer[:8], len(pointer), 1 << 20)
    assert err.value.code == "input.safetensors" and "Git LFS pointer" in err.value.detail


def test_a_surrogate_pair_escape_is_one_character_and_fine() -> None:
    # "\\ud83d\\ude00" is JSON's spelling of U+1F600: text, unlike a lone half.
    layout = _parse(_file('{"a\\ud83d\\ude00": ' + json.dumps(t("U8", [1], 0, 1)) + "}", bytes(1)))
    assert [e.name for e in layout.tensors] == ["a\U0001f600"]


def test_a_reader_rechecking_a_stored_header_lets_metadata_surrogates_through() -> None:
    # Sealed before seal refused them, such a header must stay readable; a name
    # with one is still refused (it could never match the tensor table anyway).
    meta = _file(
        '{"__metadata__": {"k": "\\ud800"}, "a": ' + json.dumps(t("U8", [1], 0, 1)) + "}", bytes(1)
    )
    n = st.parse_prefix(meta[:8], len(meta), 1 << 20)
    layout = st.parse_header(meta[8 : 8 + n], len(meta), 32, strict_text=False)
    assert [e.name for e in layout.tensors] == ["a"]
    name = _file('{"a\\ud800": ' + json.dumps(t("U8", [1], 0, 1)) + "}", bytes(1))
    n = st.parse_prefix(name[:8], len(name), 1 << 20)
    with pytest.raises(InputError):
        st.parse_header(name[8 : 8 + n], len(name), 32, strict_text=False)
