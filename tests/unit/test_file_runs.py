"""File runs (docs/FORMAT.md §5): small neighbouring raw files that share content
share one segment, coded as one stream. The writer makes them only where they
pay; every reader path serves each member's exact bytes; the contents rules
refuse any run that is not one segment holding exactly its members."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from helpers import ok, seal_example

import secpack
from secpack.api.extract import extract
from secpack.api.keyfiles import load_identity
from secpack.errors import SecpackError
from secpack.format.contents import parse_contents
from secpack.format.limits import DEFAULT_LIMITS
from secpack.sign.policy import policy_from_keys

ROOT = Path(__file__).resolve().parents[2]
KEYS = ROOT / "keys-example"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two exports of one network (the second a copy with 1 % of its bytes
    changed), an unrelated file of random bytes, and a text file."""
    rng = random.Random(5)
    root = tmp_path_factory.mktemp("file-runs") / "m"
    root.mkdir()
    a = bytearray(rng.randbytes(300_000))
    b = bytearray(a)
    for i in rng.sample(range(len(b)), 3_000):
        b[i] ^= 0x5A
    (root / "a.onnx").write_bytes(bytes(a))
    (root / "b.onnx").write_bytes(bytes(b))
    (root / "c.bin").write_bytes(rng.randbytes(200_000))
    (root / "notes.txt").write_text("".join(f"line {i}: weights exported\n" for i in range(2000)))
    return root


_seal = seal_example


def _open(pkg: Path) -> secpack.Package:
    return secpack.open_package(
        pkg,
        identity=str(KEYS / "recipient-x25519.key"),
        trust=[str(KEYS / "signing-ed25519.key.pub")],
    )


@pytest.mark.parametrize("encrypt", [True, False], ids=["encrypted", "plain"])
def test_files_that_share_content_share_a_segment_and_open_exactly(
    model: Path, tmp_path: Path, encrypt: bool
) -> None:
    pkg = tmp_path / "m.spk"
    _seal(model, pkg, encrypt=encrypt)
    with _open(pkg) as p:
        entries = {f.path: f for f in p.files("files")}
        # The two exports share one segment; the random file and the text, which
        # share nothing with them, are not in it (they may share one of their own,
        # for the segment that saves).
        assert entries["a.onnx"].run and entries["b.onnx"].run
        assert entries["a.onnx"].first == entries["b.onnx"].first
        assert (entries["a.onnx"].skip, entries["b.onnx"].skip) == (0, 300_000)
        run = entries["a.onnx"].first
        assert entries["c.bin"].first != run and entries["notes.txt"].first != run
        for name in ("a.onnx", "b.onnx", "c.bin", "notes.txt"):
            assert p.read_file("files", name) == (model / name).read_bytes()
    out = tmp_path / "out"
    extract(
        str(pkg),
        str(out),
        identities=[load_identity(str(KEYS / "recipient-x25519.key"))],
        policy=policy_from_keys([("trust", (KEYS / "signing-ed25519.key.pub").read_bytes())]),
    )
    assert sorted(q.name for q in out.iterdir()) == ["a.onnx", "b.onnx", "c.bin", "notes.txt"]
    for q in out.iterdir():
        assert q.read_bytes() == (model / q.name).read_bytes()


def test_a_run_makes_the_second_export_almost_free(model: Path, tmp_path: Path) -> None:
    together = _seal(model, tmp_path / "runs.spk")
    apart = _seal(model, tmp_path / "apart.spk", file_runs=False)
    # b.onnx is a.onnx with 1 % of its bytes changed: alone it costs its 300 KB
    # (random bytes), after a.onnx a few tens of kilobytes.
    assert apart - together > 200_000, (apart, together)
    with _open(tmp_path / "apart.spk") as p:
        assert not any(f.run for f in p.files("files"))


def test_a_smaller_segment_size_bounds_a_run(model: Path, tmp_path: Path) -> None:
    # 1 MiB segments: the exports (300 KB each) still fit in one run.
    _seal(model, tmp_path / "small.spk", segment_size=1 << 20)
    with _open(tmp_path / "small.spk") as p:
        entries = {f.path: f for f in p.files("files")}
        assert entries["a.onnx"].run and entries["b.onnx"].run
        assert entries["a.onnx"].first == entries["b.onnx"].first
    big = tmp_path / "big"
    big.mkdir()
    data = random.Random(9).randbytes(600_000)
    (big / "x.bin").write_bytes(data)
    (big / "y.bin").write_bytes(data)
    # Each is over half of 1 MiB: neither can be in a run, though they are equal.
    _seal(big, tmp_path / "big.spk", segment_size=1 << 20)
    with _open(tmp_path / "big.spk") as p:
        assert not any(f.run for f in p.files("files"))


def _file(path: str, size: int, first: int, count: int, fmt: str = "raw") -> dict[str, Any]:
    out: dict[str, Any] = {"path": path, "size": size, "mode": 0o644, "format": fmt}
    out["segments"] = [first, count]
    if fmt == "safetensors":
        out["header"] = 10
    return out


def test_a_valid_file_run_gets_its_members_offsets_and_one_unit() -> None:
    contents = parse_contents(
        {
            "files": [
                _file("a", 5, 0, 1),
                _file("b", 7, 0, 1),
                _file("c", 3, 0, 1),
                _file("d", 4, 1, 1),
                _file("e", 0, 2, 0),
            ],
            "tensors": [],
        },
        [15, 4],
        DEFAULT_LIMITS,
    )
    runs = [(f.path, f.run, f.skip) for f in contents.files]
    assert runs == [
        ("a", True, 0),
        ("b", True, 5),
        ("c", True, 12),
        ("d", False, 0),
        ("e", False, 0),
    ]
    assert [(u.label, u.part, u.last) for u in contents.units()] == [
        (("file-run", "a"), 0, True),
        (("file", "d"), 0, True),
    ]


@pytest.mark.parametrize(
    "files,plains",
    [
        # The segment holds a byte more than its members.
        ([_file("a", 5, 0, 1), _file("b", 7, 0, 1)], [13]),
        # An empty file cannot be a member: it would sit inside the run's segment.
        ([_file("a", 5, 0, 1), _file("b", 0, 0, 1), _file("c", 7, 0, 1)], [12]),
        # Nor can a safetensors file, nor a file of more than one segment.
        ([_file("a", 5, 0, 1), _file("b", 12, 0, 1, "safetensors")], [17]),
        ([_file("a", 5, 0, 1), _file("b", 7, 0, 2)], [12, 0]),
        # A run's member apart from it: the file between does not join.
        ([_file("a", 5, 0, 1), _file("x", 4, 1, 1), _file("b", 7, 0, 1)], [12, 4]),
    ],
    ids=["plain-mismatch", "empty-member", "safetensors-member", "two-segments", "apart"],
)
def test_a_file_run_that_is_not_exactly_its_members_is_refused(
    files: list[dict[str, Any]], plains: list[int]
) -> None:
    with pytest.raises(SecpackError) as err:
        parse_contents({"files": files, "tensors": []}, plains, DEFAULT_LIMITS)
    assert err.value.code == "schema.invalid"


def test_the_command_line_can_keep_every_file_apart(model: Path, tmp_path: Path) -> None:
    keys = ["--sign-key", str(KEYS / "signing-ed25519.key")]
    keys += ["--recipient", str(KEYS / "recipient-x25519.key.pub")]
    ok("seal", model, "-o", tmp_path / "runs.spk", *keys)
    ok("seal", model, "-o", tmp_path / "apart.spk", "--no-file-runs", *keys)
    with _open(tmp_path / "runs.spk") as p:
        assert {"a.onnx", "b.onnx"} <= {f.path for f in p.files("files") if f.run}
    with _open(tmp_path / "apart.spk") as p:
        assert not any(f.run for f in p.files("files"))


def test_a_float_file_is_not_pulled_into_a_run_by_a_tiny_neighbour(tmp_path: Path) -> None:
    """Alone, a file of float weights is coded with a float layout (codec.probe);
    in a run, as bytes. A 19-byte note beside it must not cost it that."""
    import numpy as np

    weights = (np.random.default_rng(0).standard_normal(1_500_000) * 0.02).astype("<f4")
    both, alone = tmp_path / "both", tmp_path / "alone"
    for folder in (both, alone):
        folder.mkdir()
        (folder / "model.bin").write_bytes(weights.tobytes())
    (both / "model.txt").write_text("exported by tool x\n")
    with_note = _seal(both, tmp_path / "both.spk", encrypt=False)
    without = _seal(alone, tmp_path / "alone.spk", encrypt=False)
    assert with_note - without < 1_000, (with_note, without)
    with _open(tmp_path / "both.spk") as p:
        assert not any(f.run for f in p.files("files"))


def test_tiny_files_that_share_nothing_join_runs_of_at_most_1_mib(tmp_path: Path) -> None:
    """Files of a kilobyte of random bytes join runs for the segment each saves,
    but such files come to RUN_BYTES of a run at most, so that reading one
    decodes little."""
    from secpack.package.plan import RUN_BYTES

    rng = random.Random(3)
    root = tmp_path / "tiny"
    root.mkdir()
    for k in range(1500):
        (root / f"f{k:04d}.bin").write_bytes(rng.randbytes(1000))
    _seal(root, tmp_path / "tiny.spk", encrypt=False)
    with _open(tmp_path / "tiny.spk") as p:
        entries = p.files("files")
        runs: dict[int, int] = {}
        for f in entries:
            if f.run:
                runs[f.first] = runs.get(f.first, 0) + f.size
        # The files that join for the segment come to RUN_BYTES at most; the
        # first of the run, which they join, is one more.
        assert runs and max(runs.values()) <= RUN_BYTES + 1000
        # Nearly every file is in a run: a segment each would cost about 200 bytes.
        assert sum(f.run for f in entries) > 1400
        assert p.read_file("files", "f0777.bin") == (root / "f0777.bin").read_bytes()


def test_reading_a_runs_files_in_turn_decodes_the_run_once(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secpack.package.decode import OpenComponent

    pkg = tmp_path / "m.spk"
    _seal(model, pkg)
    decoded: list[int] = []
    real = OpenComponent.decode

    def counting(self: OpenComponent, seg: int) -> bytearray:
        decoded.append(seg)
        return real(self, seg)

    monkeypatch.setattr(OpenComponent, "decode", counting)
    with _open(pkg) as p:
        for _ in range(3):
            for name in ("a.onnx", "b.onnx"):
                assert p.read_file("files", name) == (model / name).read_bytes()
        run = next(f.first for f in p.files("files") if f.run)
    assert decoded == [run]


def test_the_trial_on_two_threads_plans_what_it_plans_on_one(model: Path, tmp_path: Path) -> None:
    """The second thread only codes each file alone beside the run's trial: the
    runs must come out the same, whether files join (the exports), do not (the
    random and the text file) or join for the segment they save (tiny files)."""
    from secpack.package.plan import make_plan
    from secpack.transport.inputs import scan_input

    root = tmp_path / "mixed"
    root.mkdir()
    for f in model.iterdir():
        (root / f.name).write_bytes(f.read_bytes())
    rng = random.Random(9)
    for k in range(40):
        (root / f"z{k:02d}.bin").write_bytes(rng.randbytes(700))
    tree = scan_input(str(root), DEFAULT_LIMITS)
    plans = [make_plan(tree, probe_floats=True, threads=n) for n in (1, 2)]
    runs = [[s.members for c in plan.components for s in c.segments if s.members] for plan in plans]
    # Both kinds of run are there to compare: the exports', and the tiny files'.
    assert any(("a.onnx", 300_000) in r for r in runs[0]), runs[0]
    assert any(len(r) > 10 for r in runs[0]), runs[0]
    assert runs[1] == runs[0]
    assert plans[1] == plans[0]


def test_at_max_two_vocabularies_in_other_orders_share_a_run(tmp_path: Path) -> None:
    """One vocabulary in two orders (two tokenizers of one family) repeats only in
    pieces of a few bytes, which zstd's fastest level cannot reach across files
    and level 19 can: at max the trial searches deeper (RUN_TRIAL_DEEP), and the
    files share a run; at balanced they stay apart, as balanced codes them."""
    import base64

    rng = random.Random(4)
    tokens = [base64.b64encode(rng.randbytes(rng.randint(3, 9))).decode() for _ in range(30000)]
    root = tmp_path / "vocab"
    root.mkdir()
    (root / "a.tiktoken").write_text("".join(f"{t} {i}\n" for i, t in enumerate(tokens)))
    rng.shuffle(tokens)
    (root / "b.tiktoken").write_text("".join(f"{t} {i}\n" for i, t in enumerate(tokens)))
    sizes = {}
    for level, runs in (("balanced", True), ("max", True), ("max", False)):
        pkg = tmp_path / f"{level}-{runs}.spk"
        sizes[level, runs] = _seal(root, pkg, encrypt=False, level=level, file_runs=runs)
        with _open(pkg) as p:
            joined = [f.run for f in p.files("tokenizer")]
            assert joined == [level == "max" and runs] * 2, (level, runs, joined)
            for name in ("a.tiktoken", "b.tiktoken"):
                assert p.read_file("tokenizer", name) == (root / name).read_bytes()
    # The second file costs about half of what it costs alone.
    assert sizes["max", True] < 0.8 * sizes["max", False], sizes


class _Tree:
    def __init__(self, data: dict[str, bytes]) -> None:
        from secpack.package.plan import InputFile

        self.data = data
        self.files = [InputFile(p, len(b), 0o644) for p, b in sorted(data.items())]

    def read_at(self, path: str, offset: int, length: int) -> bytes:
        return self.data[path][offset : offset + length]


@pytest.mark.parametrize("level", [1, 9])
def test_a_run_must_beat_a_float_members_estimate_by_its_error(level: int) -> None:
    """A file the probe takes for floats is costed alone from its samples. A run
    that beats that estimate only by the segment a tiny neighbour saves is within
    the estimate's error (pymorphy3's words.dawg lost 140 KB of float coding so),
    and is not made; one that shares real content with it is."""
    from secpack.codec import zstd
    from secpack.package.plan import RUN_FILES_MAX, _trial_runs

    rng = random.Random(7)
    weights = rng.randbytes(400_000)
    tiny = b"__version__ = '1'\n"
    # The float layout's estimate equal to zstd's cost alone at the trial level:
    # the run saves the tiny file's segment and nothing more.
    gain = zstd.RunTrial(level).add(weights) / zstd.trial_size(weights) if level > 1 else 1.0
    tree = _Tree({"a.bin": weights, "b.py": tiny})
    assert _trial_runs(tree, tree.files, RUN_FILES_MAX, {"a.bin": gain}, None, level) == {}
    # Without a float estimate the same pair is a run: it saves a segment.
    assert list(_trial_runs(tree, tree.files, RUN_FILES_MAX, {}, None, level)) == ["a.bin"]
    # A second copy of the weights, 1 % changed, shares far past the error.
    copy = bytearray(weights)
    for i in rng.sample(range(len(copy)), 4_000):
        copy[i] ^= 0x5A
    tree = _Tree({"a.bin": weights, "b.bin": bytes(copy)})
    gains = {"a.bin": gain, "b.bin": gain}
    assert list(_trial_runs(tree, tree.files, RUN_FILES_MAX, gains, None, level)) == ["a.bin"]
