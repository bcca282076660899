"""Seal reads each input file more than once; all of it must be one version."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import Meddler
from safetensors.numpy import save_file

from secpack.api.keyfiles import load_signing_key
from secpack.api.loader import open_package
from secpack.api.seal import seal
from secpack.errors import SecpackError
from secpack.format.limits import Limits
from secpack.sign.policy import policy_from_keys

ROOT = Path(__file__).resolve().parents[2]
KEYS = ROOT / "keys-example"


def _model(root: Path) -> Path:
    root.mkdir()
    rng = np.random.default_rng(7)
    save_file(
        {"w": rng.standard_normal((256, 64)).astype(np.float32)}, str(root / "model.safetensors")
    )
    (root / "config.json").write_text('{"a": 1}')
    return root


def _seal(root: Path, out: Path, progress: object, **kwargs: object) -> None:
    seal(
        str(root),
        str(out),
        encrypt=False,
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
        progress=progress,  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def _rewrite_same_bytes(path: Path) -> None:
    """Write the file's own bytes back, in place: same size, same content."""
    data = path.read_bytes()
    with open(path, "r+b") as fh:
        fh.write(data)


def _restore_mtime_after(path: Path, change: object) -> None:
    """Change the file, then put its size and modification time back."""
    st = path.stat()
    change()  # type: ignore[operator]
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize(
    "meddle",
    [
        "rewrite",
        "rewrite-and-restore-mtime",
        "replace",
        "chmod",
    ],
)
@pytest.mark.parametrize("variants", [(), ("int8",)])
def test_a_file_changed_during_the_seal_is_refused(
    tmp_path: Path, meddle: str, variants: tuple[str, ...]
) -> None:
    root = _model(tmp_path / "m")
    config = root / "config.json"
    weights = root / "model.safetensors"

    def act() -> None:
        if meddle == "rewrite":
            _rewrite_same_bytes(weights)
        elif meddle == "rewrite-and-restore-mtime":
            _restore_mtime_after(config, lambda: config.write_text('{"a": 2}'))
        elif meddle == "replace":
            copy = root / "copy.tmp"
            copy.write_bytes(config.read_bytes())
            os.replace(copy, config)
        else:
            config.chmod(0o600)

    out = tmp_path / "x.spk"
    with pytest.raises(SecpackError) as err:
        _seal(root, out, Meddler(act), variants=list(variants))
    assert err.value.code == "input.changed"
    assert "changed while it was being sealed" in err.value.detail
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_an_unchanged_input_seals(tmp_path: Path) -> None:
    """The twin of the cases above: reading the input changes nothing."""
    root = _model(tmp_path / "m")
    meddler = Meddler(lambda: (root / "config.json").read_bytes())
    _seal(root, tmp_path / "x.spk", meddler, variants=["int8"])
    assert meddler.done and (tmp_path / "x.spk").stat().st_size > 0


@pytest.mark.parametrize("segment_mib", [4, 16])
def test_unencrypted_constant_segments_open_with_default_limits(
    tmp_path: Path, segment_mib: int
) -> None:
    # A constant segment stores one element, and unencrypted it has no GCM tag:
    # the writer must still keep to what the readers' default limits accept.
    from secpack.api.extract import extract
    from secpack.api.verify import verify
    from secpack.sign.policy import policy_from_keys

    root = tmp_path / "model"
    root.mkdir()
    (root / "zeros.bin").write_bytes(bytes(segment_mib << 20))
    save_file(
        {"w": np.full((segment_mib << 19,), 0.25, dtype=np.float16)},
        str(root / "model.safetensors"),
    )
    out = tmp_path / "p.spk"
    _seal(root, out, None, segment_size=segment_mib << 20)
    policy = policy_from_keys([("k", (KEYS / "signing-ed25519.key.pub").read_bytes())])
    verify(str(out), policy)
    extract(str(out), str(tmp_path / "out"), identities=[], policy=policy)
    for name in ("zeros.bin", "model.safetensors"):
        assert (tmp_path / "out" / name).read_bytes() == (root / name).read_bytes()


def test_tensor_names_shared_by_two_files_name_both_and_the_way_out(tmp_path: Path) -> None:
    # A diffusers-style pipeline: two parts that reuse tensor names.
    root = tmp_path / "pipe"
    for k, part in enumerate(("unet", "vae")):
        (root / part).mkdir(parents=True)
        save_file(
            {"conv_in.weight": np.full((4, 4), k, np.float32)}, str(root / part / "m.safetensors")
        )
    # By default each part gets a component of its own (test_plan_groups.py).
    _seal(root, tmp_path / "p.spk", None)
    # A tensor asked for by a name both parts use must say where it is from.
    policy = policy_from_keys([("k", (KEYS / "signing-ed25519.key.pub").read_bytes())])
    with open_package(str(tmp_path / "p.spk"), policy=policy) as pkg:
        with pytest.raises(SecpackError) as err:
            pkg.tensor("conv_in.weight")
        assert err.value.code == "component.unknown"
        assert "weights-unet" in err.value.detail and "weights-vae" in err.value.detail
        assert "component=" in err.value.detail
        assert (pkg.tensor("conv_in.weight", "weights-unet") == 0).all()
        assert (pkg.tensor("conv_in.weight", "weights-vae") == 1).all()
    # A rule that puts both in one component is refused, naming both files.
    with pytest.raises(SecpackError) as err:
        _seal(root, tmp_path / "q.spk", None, components=[("weights", "*/m.safetensors")])
    assert err.value.code == "input.safetensors"
    assert "unet/m.safetensors and vae/m.safetensors" in err.value.detail
    assert "--component" in err.value.detail
    assert not (tmp_path / "q.spk").exists()
    _seal(
        root,
        tmp_path / "r.spk",
        None,
        components=[("weights-unet", "unet/*"), ("weights-vae", "vae/*")],
    )


def test_python_dash_m_runs_the_cli() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "secpack", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "seal" in done.stdout


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("variants", {"variants": ["fp16"]}),  # a file where seal puts variants/
        ("MODEL.SIG", {"model_signing": True}),  # beside the model.sig seal adds
        ("model.sig/x", {"model_signing": True}),
    ],
)
def test_what_seal_adds_must_not_collide_with_the_input(
    tmp_path: Path, name: str, options: dict[str, object]
) -> None:
    root = _model(tmp_path / "m")
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text("in the way")
    keys = [str(KEYS / "signing-p256.key")] if options.get("model_signing") else []
    with pytest.raises(SecpackError) as err:
        seal(
            str(root),
            str(tmp_path / "p.spk"),
            encrypt=False,
            sign_keys=[load_signing_key(k) for k in keys]
            or [load_signing_key(str(KEYS / "signing-ed25519.key"))],
            **options,  # type: ignore[arg-type]
        )
    assert err.value.code == "input.unsafe"
    assert not (tmp_path / "p.spk").exists()


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("CON", "CON: path element 'CON' is a reserved device name on Windows"),
        ("nul.txt", "nul.txt: path element 'nul.txt' is a reserved device name on Windows"),
        # The directory is refused as the scan reaches it, before what it holds.
        ("Com1/weights.bin", "Com1: path element 'Com1' is a reserved device name on Windows"),
        (
            "lpt\u00b2.bin",
            "lpt\u00b2.bin: path element 'lpt\u00b2.bin' is a reserved device name on Windows",
        ),
        ("a\u0085b", "a\u0085b: control character U+0085 in path"),
        ("\u009b31mred", "\u009b31mred: control character U+009B in path"),
    ],
)
def test_names_unsafe_on_some_platform_are_refused(tmp_path: Path, name: str, detail: str) -> None:
    """A package seal would refuse to open elsewhere is never written: Windows
    cannot create a device name as a file, and C1 controls drive terminals."""
    root = _model(tmp_path / "m")
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text("x")
    with pytest.raises(SecpackError) as err:
        _seal(root, tmp_path / "p.spk", None)
    assert err.value.code == "input.unsafe"
    assert err.value.detail == detail
    assert not (tmp_path / "p.spk").exists()


def test_names_that_merely_contain_a_device_name_seal(tmp_path: Path) -> None:
    root = _model(tmp_path / "m")
    for name in ("CONFIG.yaml", "console.txt", "nul_count.bin", "com10.txt", "lpt0", "caf\u00e9"):
        (root / name).write_text("x")
    _seal(root, tmp_path / "p.spk", None)
    assert (tmp_path / "p.spk").exists()


def test_open_caps_the_files_of_all_components_together(tmp_path: Path) -> None:
    """max_files bounds each contents table as it is read, and what open writes in
    all: two components of two files each are refused under a cap of three, with
    nothing written, while the loader still reads each component."""
    import dataclasses

    import secpack
    from secpack.api.extract import extract
    from secpack.format.limits import Limits
    from secpack.sign.policy import policy_from_keys

    root = _model(tmp_path / "m")
    (root / "tokenizer.json").write_text("{}")
    (root / "vocab.txt").write_text("a\nb\n")
    (root / "generation_config.json").write_text("{}")
    out = tmp_path / "p.spk"
    _seal(root, out, None)
    policy = policy_from_keys([("k", (KEYS / "signing-ed25519.key.pub").read_bytes())])
    tight = dataclasses.replace(policy, limits=Limits(max_files=3))
    with pytest.raises(SecpackError) as err:
        extract(str(out), str(tmp_path / "out"), identities=[], policy=tight)
    assert err.value.code == "schema.invalid" and "5 files in all" in err.value.detail
    assert not (tmp_path / "out").exists()
    with secpack.open_package(str(out), policy=tight) as pkg:
        assert sorted(f.path for f in pkg.files("tokenizer")) == ["tokenizer.json", "vocab.txt"]
    report = extract(str(out), str(tmp_path / "all"), identities=[], policy=policy)
    assert report.files == 5


@pytest.mark.parametrize("how", ["rename", "symlink"])
def test_a_directory_swapped_away_and_back_cannot_lend_another_file(
    tmp_path: Path, how: str
) -> None:
    """O_NOFOLLOW guards a path's last element only. A directory on the way renamed
    away and back (or a parent link flipped and flipped back) between the scan and
    a read must not hand over another file: the read itself is refused, since the
    check at the end would see the original again."""
    from secpack.format.limits import DEFAULT_LIMITS
    from secpack.transport.inputs import scan_input

    model = tmp_path / "m"
    (model / "sub").mkdir(parents=True)
    (model / "sub" / "big.bin").write_bytes(b"A" * 4096)
    other = tmp_path / "other"
    (other / "sub").mkdir(parents=True)
    (other / "sub" / "big.bin").write_bytes(b"B" * 4096)
    if how == "symlink":
        # The input is named through a link (with a trailing slash), which is flipped.
        link = tmp_path / "link"
        link.symlink_to(model)
        tree = scan_input(f"{link}/", DEFAULT_LIMITS)
        link.unlink()
        link.symlink_to(other)
    else:
        tree = scan_input(str(model), DEFAULT_LIMITS)
        (model / "sub").rename(tmp_path / "away")
        (other / "sub").rename(model / "sub")
    with pytest.raises(SecpackError) as err:
        tree.read_at("sub/big.bin", 0, 16)
    assert err.value.code == "input.changed" and "changed while" in err.value.detail


def test_a_variant_build_is_named_as_a_temporary_of_its_output(tmp_path: Path) -> None:
    """What a killed seal leaves must be something the next seal removes: the
    precision variants' scratch directory is named like the package's own
    temporaries, and cleaned by the same rule."""
    from crash_helpers import temp_pattern

    root = _model(tmp_path / "m")
    outdir = tmp_path / "out"
    outdir.mkdir()
    seen: list[str] = []
    _seal(
        root, outdir / "p.spk", Meddler(lambda: seen.extend(os.listdir(outdir))), variants=["fp16"]
    )
    assert len(seen) >= 2  # the package being written and the variants beside it
    assert all(temp_pattern("p.spk").fullmatch(name) for name in seen), seen
    assert os.listdir(outdir) == ["p.spk"]


def test_the_output_inside_the_input_is_not_sealed_into_itself(tmp_path: Path) -> None:
    """Sealing a folder into a package inside it: the package a previous seal left
    there and temporaries of a killed seal are not input; a file of the input that
    is not a package is refused rather than replaced."""
    import subprocess

    import secpack
    from secpack.sign.policy import policy_from_keys
    from secpack.transport.atomic import origin

    root = _model(tmp_path / "m")
    pkg = root / "m.spk"
    _seal(root, pkg, None)
    first = pkg.stat().st_size
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = root / f".m.spk.secpack-tmp-{origin()}-{dead.pid}-0123abcd"
    stale.write_bytes(b"left by a killed seal")
    _seal(root, pkg, None, overwrite=True)
    assert abs(pkg.stat().st_size - first) < 64 and not stale.exists()
    policy = policy_from_keys([("k", (KEYS / "signing-ed25519.key.pub").read_bytes())])
    with secpack.open_package(str(pkg), policy=policy) as p:
        paths = {f.path for c in p.components for f in p.files(c.name)}
    assert paths == {"config.json", "model.safetensors"}
    config = root / "config.json"
    before = config.read_bytes()
    for target, source in ((config, root), (config, config)):
        with pytest.raises(SecpackError) as err:
            _seal(source, target, None, overwrite=True)
        assert err.value.code == "input.invalid"
        assert config.read_bytes() == before


def test_an_output_name_near_the_longest_a_file_system_takes_seals(tmp_path: Path) -> None:
    """Temporaries add about 40 bytes to the output's name: for a name near the
    255-byte limit they carry a shortened form of it, the same each time, so that
    a killed seal's temporaries are still found and removed."""
    import subprocess

    from secpack.transport.atomic import origin, remove_stale, temp_name

    root = _model(tmp_path / "m")
    name = "é" * 100 + "x" * 46 + ".spk"  # 250 bytes
    assert len(name.encode()) == 250
    out = tmp_path / name
    _seal(root, out, None)
    assert out.stat().st_size > 0
    tmp = os.path.basename(temp_name(str(out)))
    assert len(tmp.encode()) <= 255
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / tmp.replace(f"-{os.getpid()}-", f"-{dead.pid}-")
    assert origin() in stale.name
    stale.write_bytes(b"x")
    assert remove_stale(str(out)) == [str(stale)]


def test_an_input_that_cannot_be_read_is_an_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory that can be listed but not searched (mode r--): its entries' stat
    fails. That is the input's problem (input.io), not the output's, and the
    library raises it typed. So is a segment size out of range."""
    import errno

    from secpack.transport import inputs

    root = _model(tmp_path / "m")
    real_scandir = os.scandir

    class Unsearchable:
        def __init__(self, entry: os.DirEntry[str]) -> None:
            self.name, self.path, self._entry = entry.name, entry.path, entry

        def stat(self, follow_symlinks: bool = True) -> os.stat_result:
            if self.name == "config.json":
                raise PermissionError(errno.EACCES, "Permission denied")
            return self._entry.stat(follow_symlinks=follow_symlinks)

    monkeypatch.setattr(
        inputs.os, "scandir", lambda path: [Unsearchable(e) for e in real_scandir(path)]
    )
    with pytest.raises(SecpackError) as err:
        _seal(root, tmp_path / "a.spk", None)
    assert err.value.code == "input.io" and "config.json" in err.value.detail
    monkeypatch.undo()
    with pytest.raises(SecpackError) as err:
        _seal(root, tmp_path / "b.spk", None, segment_size=100)
    assert err.value.code == "input.invalid"
    assert not (tmp_path / "a.spk").exists() and not (tmp_path / "b.spk").exists()


def test_names_near_the_outputs_temporaries_and_a_fifo_at_the_output_are_not_skipped(
    tmp_path: Path,
) -> None:
    """Only the output's real temporaries are left out of the input: a file whose
    name merely starts like one is sealed. A FIFO at the output's path is refused at
    once (never opened to wait on), and an output name that is not UTF-8 works."""
    import secpack
    from secpack.sign.policy import policy_from_keys

    root = _model(tmp_path / "m")
    (root / ".m.spk.secpack-tmp-README").write_text("mine")
    (root / ".m.spk.secpack-tmp-data").mkdir()
    (root / ".m.spk.secpack-tmp-data" / "x.bin").write_bytes(b"x")
    _seal(root, root / "m.spk", None)
    policy = policy_from_keys([("k", (KEYS / "signing-ed25519.key.pub").read_bytes())])
    with secpack.open_package(str(root / "m.spk"), policy=policy) as p:
        paths = {f.path for c in p.components for f in p.files(c.name)}
    assert ".m.spk.secpack-tmp-README" in paths and ".m.spk.secpack-tmp-data/x.bin" in paths
    fifo = root / "f.spk"
    os.mkfifo(fifo)
    with pytest.raises(SecpackError) as err:
        _seal(root, fifo, None, overwrite=True)
    assert err.value.code == "input.invalid"
    odd = tmp_path / os.fsdecode(b"pkg\xff.spk")
    fifo.unlink()
    _seal(root, odd, None)
    assert odd.stat().st_size > 0


def test_the_plan_counts_what_seal_adds_against_max_files(tmp_path: Path) -> None:
    """The scan caps the input's files; the plan caps them again with what seal adds
    (variant files, model.sig), so that no package holds more than open accepts."""
    from secpack.format.limits import DEFAULT_LIMITS, Limits
    from secpack.package.plan import DEFAULT_SEGMENT, make_plan
    from secpack.transport.inputs import WithExtraFiles, scan_input

    root = tmp_path / "m"
    root.mkdir()
    for name in ("a.txt", "b.txt"):
        (root / name).write_text(name)
    tree = scan_input(str(root), DEFAULT_LIMITS)
    assert len(make_plan(tree, [], DEFAULT_SEGMENT, Limits(max_files=2)).components) == 1
    more = WithExtraFiles(tree, extra={"model.sig": b"{}"})
    with pytest.raises(SecpackError) as err:
        make_plan(more, [], DEFAULT_SEGMENT, Limits(max_files=2))
    assert err.value.code == "input.invalid" and "3 files" in err.value.detail


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("my model", "my-model"),
        (".index", "index"),
        ("v1.2 (final)", "v1.2-final"),
        ("模型", "model"),
        ("Ünïcode Mödel", "Unicode-Model"),
        ("__", "model"),
        ("x" * 200, "x" * 128),
    ],
)
def test_the_default_package_name_is_made_valid(tmp_path: Path, given: str, expected: str) -> None:
    """A directory or file whose own name is no package name seals under one made
    from it, instead of failing until --name is given; --name itself is strict."""
    import secpack

    source = tmp_path / given
    source.mkdir()
    (source / "config.json").write_text("{}")
    out = tmp_path / "x.spk"
    report = seal(
        str(source),
        str(out),
        encrypt=False,
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
    )
    assert report.manifest.name == expected
    with secpack.open_package(out, trust=[str(KEYS / "signing-ed25519.key.pub")]) as pkg:
        assert pkg.name == expected
    with pytest.raises(SecpackError) as err:
        seal(str(source), str(out), encrypt=False, name=given, overwrite=True)
    assert err.value.code == "input.invalid"


def test_max_keeps_4_mib_segments_for_a_file_of_float_arrays(tmp_path: Path) -> None:
    """The 16 MiB segments are for zstd's window: a file the probe finds float
    arrays in (an ONNX or PyTorch export) is coded by its float layout, which
    gains nothing from them, and a segment spanning arrays of other layouts
    loses. Such a file keeps 4 MiB segments at max, and a text file beside it
    gets 16 MiB."""
    import secpack

    root = tmp_path / "model"
    root.mkdir()
    rng = np.random.default_rng(4)
    weights = (rng.standard_normal(9 << 18) * 0.05).astype("<f4").tobytes()  # 9 MiB
    (root / "export.bin").write_bytes(weights)
    words = [bytes(rng.integers(97, 123, 6, dtype=np.uint8)) for _ in range(3000)]
    (root / "words.txt").write_bytes(b"\n".join(words[i] for i in rng.integers(0, 3000, 900_000)))
    out = tmp_path / "max.spk"
    _seal(root, out, None, level="max")
    with secpack.open_package(out, trust=[str(KEYS / "signing-ed25519.key.pub")]) as p:
        counts = {f.path: f.count for f in p.files("files")}
        assert p.read_file("files", "export.bin") == weights
    assert counts == {"export.bin": 3, "words.txt": 1}, counts


def test_max_gives_files_it_does_not_parse_segments_of_16_mib(tmp_path: Path) -> None:
    """With --level max and no --segment-size, a file that is not safetensors is
    cut into 16 MiB segments (zstd -19 then reaches further), tensors stay at
    4 MiB; an explicit segment size holds for both; balanced keeps 4 MiB. Each
    package opens to the same bytes."""
    from secpack.api.extract import extract
    from secpack.package.reader import read_header
    from secpack.sign.policy import policy_from_keys
    from secpack.transport.spkfile import FileSource

    root = tmp_path / "model"
    root.mkdir()
    rng = np.random.default_rng(3)
    words = [
        bytes(rng.integers(97, 123, int(rng.integers(2, 9)), dtype=np.uint8)) for _ in range(5000)
    ]
    text = b"\n".join(words[i] for i in rng.integers(0, len(words), 800_000))
    assert 4 << 20 < len(text) < 16 << 20
    (root / "vocab.txt").write_bytes(text)
    save_file(
        {"w": rng.standard_normal(5 << 18).astype(np.float32)}, str(root / "model.safetensors")
    )
    policy = policy_from_keys([("k", (KEYS / "signing-ed25519.key.pub").read_bytes())])
    for case, kwargs, text_segment in (
        ("max", {"level": "max"}, len(text)),
        ("max4", {"level": "max", "segment_size": 4 << 20}, 4 << 20),
        ("balanced", {}, 4 << 20),
    ):
        out = tmp_path / f"{case}.spk"
        _seal(root, out, None, **kwargs)
        src = FileSource(str(out))
        try:
            manifest = read_header(src, Limits()).manifest
        finally:
            src.close()
        largest = {c.name: max(s.plain for s in c.segments) for c in manifest.components}
        assert largest.pop("weights") == 4 << 20, case
        assert max(largest.values()) == text_segment, case
        extract(str(out), str(tmp_path / case), identities=[], policy=policy)
        for name in ("vocab.txt", "model.safetensors"):
            assert (tmp_path / case / name).read_bytes() == (root / name).read_bytes()


def test_a_checkpoint_with_null_metadata_seals_opens_and_loads(tmp_path: Path) -> None:
    # Real checkpoints write "__metadata__": null, which safetensors reads as none.
    import json
    import struct

    from secpack.api.extract import extract

    data = np.arange(12, dtype=np.float32)
    header = json.dumps(
        {"__metadata__": None, "w": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    blob = struct.pack("<Q", len(header)) + header + data.tobytes()
    root = tmp_path / "model"
    root.mkdir()
    (root / "model.safetensors").write_bytes(blob)
    out = tmp_path / "p.spk"
    _seal(root, out, None)
    policy = policy_from_keys([("k", (KEYS / "signing-ed25519.key.pub").read_bytes())])
    extract(str(out), str(tmp_path / "out"), identities=[], policy=policy)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == blob
    with open_package(str(out), policy=policy) as pkg:
        assert pkg.tensor_names("weights") == ["w"]
        assert (pkg.state_dict("weights")["w"] == data.reshape(3, 4)).all()
