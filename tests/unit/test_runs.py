"""Tensor runs (docs/FORMAT.md §5): small neighbouring tensors of one coded type
share one segment. The writer makes them; every reader path serves each member
as its own exact array; the table rules refuse any run that is not one segment
holding exactly its members, back to back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import Tensor, seal_example, write_safetensors

import secpack
from secpack.api.extract import extract
from secpack.api.keyfiles import load_identity
from secpack.errors import SecpackError
from secpack.format.contents import parse_contents
from secpack.format.limits import DEFAULT_LIMITS
from secpack.package.plan import MIXED_BELOW, RUN_BYTES, RUN_TENSOR
from secpack.sign.policy import policy_from_keys

ROOT = Path(__file__).resolve().parents[2]
KEYS = ROOT / "keys-example"


def _layer_tensors(rng: np.random.Generator, layers: int) -> dict[str, np.ndarray]:
    """A transformer's layout in name order: small biases and norms between large
    matrices, with other dtypes among them (int64 ids, an fp16 gate, a bool mask)."""
    out: dict[str, np.ndarray] = {}
    for i in range(layers):
        out[f"l{i}.attn.bias"] = rng.standard_normal(64).astype(np.float32)
        out[f"l{i}.attn.weight"] = rng.standard_normal((128, 160)).astype(np.float32)  # 80 KiB
        out[f"l{i}.ln.bias"] = rng.standard_normal(64).astype(np.float32)
        out[f"l{i}.ln.weight"] = (1 + rng.standard_normal(64) / 16).astype(np.float32)
        out[f"l{i}.gate"] = rng.standard_normal(24).astype(np.float16)
        out[f"l{i}.mlp.bias"] = rng.standard_normal(96).astype(np.float32)
        out[f"l{i}.ids"] = np.arange(7, dtype=np.int64) * (i + 1)
        out[f"l{i}.mask"] = rng.integers(0, 2, 10).astype(np.bool_)
    out["tail.empty"] = np.zeros((0, 3), np.float32)
    out["tail.a"] = rng.standard_normal(5).astype(np.float32)
    out["tail.b"] = rng.standard_normal((3, 3)).astype(np.float32)
    out["tail.ids"] = np.arange(3, dtype=np.int64)
    return out


_DTYPES = {"float32": "F32", "float16": "F16", "int64": "I64", "bool": "BOOL"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    arrays = _layer_tensors(np.random.default_rng(11), 4)
    # Many tiny tensors of one dtype in a row: more than one run's worth of bytes.
    rng = np.random.default_rng(12)
    for k in range(RUN_BYTES // (48 * 1024) + 2):
        arrays[f"zz.{k:03d}"] = rng.standard_normal(12 * 1024).astype(np.float32)  # 48 KiB
    root = tmp_path_factory.mktemp("runs") / "m"
    root.mkdir()
    write_safetensors(
        root / "model.safetensors",
        {n: Tensor(_DTYPES[str(a.dtype)], a.shape, a.tobytes()) for n, a in arrays.items()},
        metadata={"format": "pt"},
    )
    (root / "config.json").write_text('{"model_type": "runs"}')
    return root, arrays


_seal = seal_example


def _open(pkg: Path, threads: int = 0) -> secpack.Package:
    return secpack.open_package(
        pkg,
        identity=str(KEYS / "recipient-x25519.key"),
        trust=[str(KEYS / "signing-ed25519.key.pub")],
        threads=threads,
    )


@pytest.fixture(scope="module", params=[True, False], ids=["encrypted", "plain"])
def sealed(
    request: pytest.FixtureRequest,
    model: tuple[Path, dict[str, np.ndarray]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    pkg = tmp_path_factory.mktemp("sealed") / "m.spk"
    _seal(model[0], pkg, encrypt=request.param)
    return pkg


def _runs(p: secpack.Package) -> list[list[str]]:
    """The package's runs, each as its members' names in table order."""
    by_segment: dict[int, list[str]] = {}
    for name in p.tensor_names("weights"):
        info = p.tensor_info(name)
        if info.run:
            by_segment.setdefault(info.first, []).append(name)
    return list(by_segment.values())


def test_the_writer_puts_small_neighbours_in_runs(
    sealed: Path, model: tuple[Path, dict[str, np.ndarray]]
) -> None:
    """Runs of one type where they hold MIXED_BELOW bytes or more, coded as that
    type; below, small neighbours of every type together, coded as bytes."""
    _, arrays = model
    with _open(sealed) as p:
        runs = _runs(p)
        comp = next(c for c in p.manifest.components if c.name == "weights")
        for i in range(4):
            # Everything small between two layers' matrices: a norm's pair of
            # fp32 tensors, the fp16 gate, a bias, the int64 ids, the bool mask,
            # and the next layer's first bias: no stretch of one type reaches 1 KiB.
            tail = [f"l{i + 1}.attn.bias"] if i < 3 else []
            assert [
                f"l{i}.ln.bias",
                f"l{i}.ln.weight",
                f"l{i}.gate",
                f"l{i}.mlp.bias",
                f"l{i}.ids",
                f"l{i}.mask",
                *tail,
            ] in runs
            assert not p.tensor_info(f"l{i}.attn.weight").run  # RUN_TENSOR and above
        assert not p.tensor_info("l0.attn.bias").run  # alone before the first matrix
        # After an empty tensor, which is in none; the ids end it, as the 48 KiB
        # tensors after them are a run of their own type.
        assert ["tail.a", "tail.b", "tail.ids"] in runs
        assert not p.tensor_info("tail.empty").run
        zz = [r for r in runs if r[0].startswith("zz.")]
        assert [n for r in zz for n in r] == sorted(n for n in arrays if n.startswith("zz."))
        assert len(zz) == 2  # more than RUN_BYTES in a row: two runs
        for members in runs:
            info = [p.tensor_info(n) for n in members]
            segment = comp.segments[info[0].first]
            assert all(i.count == 1 and i.first == info[0].first for i in info)
            assert segment.plain == sum(i.length for i in info) <= RUN_BYTES
            assert [i.skip for i in info] == list(np.cumsum([0] + [i.length for i in info[:-1]]))
            assert all(0 < i.length < RUN_TENSOR for i in info)
            if len({i.dtype for i in info}) == 1:  # one type, of MIXED_BELOW or more
                assert segment.plain >= MIXED_BELOW
                assert segment.codec.id in ("bgx", "bg"), segment.codec
            else:  # coded as the bytes they are
                assert segment.codec.id in ("zstd", "raw"), segment.codec


def test_small_tensors_of_alternating_types_share_segments(tmp_path: Path) -> None:
    """A quantized checkpoint's layout: each 64-byte fp32 scale beside its
    128-byte int8 codes, 200 times. Runs of one type would leave each tensor a
    segment; the writer joins them, one segment for all 400."""
    rng = np.random.default_rng(5)
    tensors = {}
    for k in range(200):
        tensors[f"q{k:03d}.codes"] = Tensor(
            "I8", (128,), rng.integers(-127, 128, 128).astype(np.int8).tobytes()
        )
        tensors[f"q{k:03d}.scale"] = Tensor(
            "F32", (16,), (rng.random(16) / 100).astype(np.float32).tobytes()
        )
    root = tmp_path / "q"
    root.mkdir()
    write_safetensors(root / "model.safetensors", tensors)
    pkg = tmp_path / "q.spk"
    _seal(root, pkg)
    with _open(pkg) as p:
        comp = next(c for c in p.manifest.components if c.name == "weights")
        # The header, and one run of all 400 (37.5 KiB): every one of them is a
        # run of one type below MIXED_BELOW.
        assert len(comp.segments) == 2
        assert [p.tensor_info(n).run for n in ("q000.codes", "q199.scale")] == [True, True]
        for name in ("q000.codes", "q123.scale", "q199.codes"):
            assert p.tensor(name).tobytes() == tensors[name].data


@pytest.mark.parametrize("threads", [1, 2])
def test_every_reader_path_serves_each_member_exactly(
    sealed: Path, model: tuple[Path, dict[str, np.ndarray]], threads: int
) -> None:
    root, arrays = model
    with _open(sealed, threads) as p:
        for name in ("l2.ln.weight", "tail.b", "zz.003", "l0.ln.bias", "tail.empty"):
            got = p.tensor(name)
            assert got.dtype == arrays[name].dtype and np.array_equal(got, arrays[name])
        sd = p.state_dict("weights")
        assert sd.keys() == arrays.keys()
        for name, want in arrays.items():
            assert sd[name].shape == want.shape and sd[name].tobytes() == want.tobytes(), name
        seen = [(n, a.tobytes()) for n, a in p.iter_tensors("weights")]
        assert seen == [(n, a.tobytes()) for n, a in arrays.items()]
        assert (
            p.read_file("weights", "model.safetensors") == (root / "model.safetensors").read_bytes()
        )
        # Members picked out of their runs, in another order than the file's.
        picked = ["zz.005", "l1.ln.weight", "tail.a", "l3.attn.weight"]
        exported = p.export_safetensors(picked)
        assert exported is not None
        from safetensors.numpy import load

        back = load(exported)
        for name in picked:
            assert np.array_equal(back[name], arrays[name]), name


def test_open_writes_the_file_back_byte_for_byte(
    sealed: Path, model: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    root, _ = model
    out = tmp_path / "out"
    extract(
        str(sealed),
        str(out),
        identities=[load_identity(str(KEYS / "recipient-x25519.key"))],
        policy=policy_from_keys([("trust", (KEYS / "signing-ed25519.key.pub").read_bytes())]),
    )
    for name in ("model.safetensors", "config.json"):
        assert (out / name).read_bytes() == (root / name).read_bytes()


def test_runs_make_a_model_of_tiny_tensors_cost_few_segments(tmp_path: Path) -> None:
    """300 biases of 256 bytes: a few segments, not 300, each of which would cost
    200-350 bytes of package: more than the tensors' own 75 KiB compress by."""
    rng = np.random.default_rng(3)
    arrays = {f"b{k:03d}": rng.standard_normal(64).astype(np.float32) for k in range(300)}
    root = tmp_path / "tiny"
    root.mkdir()
    write_safetensors(
        root / "model.safetensors",
        {n: Tensor("F32", a.shape, a.tobytes()) for n, a in arrays.items()},
    )
    pkg = tmp_path / "t.spk"
    _seal(root, pkg)
    with _open(pkg) as p:
        comp = next(c for c in p.manifest.components if c.name == "weights")
        assert len(comp.segments) == 2  # the header, and one run of all 300
        assert np.array_equal(p.tensor("b123"), arrays["b123"])
    # Stored smaller than the tensors' bytes: the run was coded as floats.
    assert comp.segments[1].stored < 300 * 256


# --- the table rules, on the contents alone ------------------------------------------------


def _contents(tensors: list[tuple[str, int, list[int]]], plains: list[int]) -> Any:
    """Contents of one safetensors file: a 16-byte header segment, then
    ``(name, length, segments)`` F32 tensors at the running offset."""
    records, offset = [], 16
    for name, length, segments in tensors:
        records.append(
            {
                "name": name,
                "dtype": "F32",
                "shape": [length // 4],
                "file": 0,
                "offset": offset,
                "length": length,
                "segments": segments,
            }
        )
        offset += length
    return {
        "files": [
            {
                "path": "m.safetensors",
                "size": sum(plains),
                "mode": 0o644,
                "format": "safetensors",
                "segments": [0, len(plains)],
                "header": 16,
            }
        ],
        "tensors": records,
    }


def test_a_valid_run_gets_its_members_offsets_and_one_unit() -> None:
    plains = [16, 28, 40]
    c = parse_contents(
        _contents(
            [("a", 8, [1, 1]), ("b", 4, [1, 1]), ("c", 16, [1, 1]), ("d", 40, [2, 1])], plains
        ),
        plains,
        DEFAULT_LIMITS,
    )
    assert [(t.run, t.skip) for t in c.tensors] == [(True, 0), (True, 8), (True, 12), (False, 0)]
    assert [u.label for u in c.units()] == [
        ("header", "m.safetensors"),
        ("run", "a"),
        ("tensor", "d"),
    ]
    assert all(u.part == 0 and u.last for u in c.units())


@pytest.mark.parametrize(
    ("tensors", "plains"),
    [
        # The run's segment holds 4 bytes more than its members.
        ([("a", 8, [1, 1]), ("b", 4, [1, 1])], [16, 16]),
        # ... or fewer.
        ([("a", 8, [1, 1]), ("b", 8, [1, 1])], [16, 12, 4]),
        # Sharing a segment that is not the one after the previous unit: "c" goes
        # back to a's, past b's.
        ([("a", 8, [1, 1]), ("b", 8, [2, 1]), ("c", 4, [1, 1])], [16, 12, 8]),
        # Two tensors that share two segments.
        ([("a", 8, [1, 2]), ("b", 8, [1, 2])], [16, 8, 8]),
        # A member of no bytes in the run's segment.
        ([("a", 8, [1, 1]), ("b", 0, [1, 1])], [16, 8]),
        # A member that leaves the run, claiming no segment while it has bytes.
        ([("a", 8, [1, 1]), ("b", 8, [2, 0]), ("c", 8, [1, 1])], [16, 24]),
    ],
    ids=["plain-longer", "plain-shorter", "not-adjacent", "two-segments", "empty", "left"],
)
def test_a_run_that_is_not_exactly_one_segment_of_its_members_is_refused(
    tensors: list[tuple[str, int, list[int]]], plains: list[int]
) -> None:
    with pytest.raises(SecpackError) as err:
        parse_contents(_contents(tensors, plains), plains, DEFAULT_LIMITS)
    assert err.value.code == "tensor.invalid"


def test_a_tensor_table_is_stored_compressed_where_that_is_smaller(
    sealed: Path, model: tuple[Path, dict[str, np.ndarray]]
) -> None:
    """FORMAT §4 "contents_codec": the weights' table (60 records that repeat their
    keys and name prefixes) is stored as a zstd frame; the config's one-file table
    is too small to gain the record's cost, and is stored as it is."""
    from secpack.format.cbor import encode

    with _open(sealed) as p:
        comps = {c.name: c for c in p.manifest.components}
        weights = comps["weights"]
        table = encode(p._component("weights").contents.to_cbor())
        assert weights.contents_size == len(table)
        tag = 16 if weights.encryption is not None else 0
        assert len(weights.contents) - tag < len(table) // 3
        assert comps["config"].contents_size is None
        # What the loader serves came out of the compressed table.
        assert p.tensor_names("weights") == list(model[1])


def test_a_run_apart_in_the_table_is_refused() -> None:
    """Two files, each with a run of two, their records listed a0, b0, b1, a1: each
    file's own tensors are in order, but a1 is not next to a0. FORMAT §5: a run is
    in a row of the table (a reader decodes in the table's order)."""
    plains = [16, 16, 16, 16]

    def file(path: str, first: int) -> dict[str, Any]:
        return {
            "path": path,
            "size": 32,
            "mode": 0o644,
            "format": "safetensors",
            "segments": [first, 2],
            "header": 16,
        }

    def tensor(name: str, file: int, offset: int, segment: int) -> dict[str, Any]:
        return {
            "name": name,
            "dtype": "F32",
            "shape": [2],
            "file": file,
            "offset": offset,
            "length": 8,
            "segments": [segment, 1],
        }

    a0, a1 = tensor("a0", 0, 16, 1), tensor("a1", 0, 24, 1)
    b0, b1 = tensor("b0", 1, 16, 3), tensor("b1", 1, 24, 3)
    files = [file("a.safetensors", 0), file("b.safetensors", 2)]
    in_a_row = parse_contents({"files": files, "tensors": [a0, a1, b0, b1]}, plains, DEFAULT_LIMITS)
    assert [t.skip for t in in_a_row.tensors] == [0, 8, 0, 8]
    with pytest.raises(SecpackError) as err:
        parse_contents({"files": files, "tensors": [a0, b0, b1, a1]}, plains, DEFAULT_LIMITS)
    assert err.value.code == "tensor.invalid"
