"""Symlinks in the input: refused by default; with ``follow_symlinks``, a link to a
regular file is sealed as that file under the link's name (a Hugging Face cache
snapshot), and nothing else a link can point at is."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import Meddler
from safetensors.numpy import save_file

from secpack.api.extract import extract
from secpack.api.keyfiles import load_signing_key
from secpack.api.seal import seal
from secpack.errors import SecpackError
from secpack.sign.policy import policy_from_keys

ROOT = Path(__file__).resolve().parents[2]
KEYS = ROOT / "keys-example"


def _seal(source: Path, out: Path, **kwargs: object) -> None:
    seal(
        str(source),
        str(out),
        encrypt=False,
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
        **kwargs,  # type: ignore[arg-type]
    )


def _open(package: Path, dest: Path) -> None:
    policy = policy_from_keys([("k", (KEYS / "signing-ed25519.key.pub").read_bytes())])
    extract(str(package), str(dest), identities=[], policy=policy)


def _snapshot(cache: Path) -> tuple[Path, dict[str, bytes]]:
    """A Hugging Face hub cache entry: content-addressed blobs, and a snapshot
    directory of relative links into them (one in a subdirectory). Returns the
    snapshot and what each of its paths must hold once opened."""
    blobs = cache / "blobs"
    blobs.mkdir(parents=True)
    weights = cache / "w.safetensors"
    rng = np.random.default_rng(3)
    save_file({"w": rng.standard_normal((128, 64)).astype(np.float32)}, str(weights))
    want = {
        "config.json": b'{"model_type": "bert"}',
        "model.safetensors": weights.read_bytes(),
        "tokenizer.json": b'{"version": "1.0"}',
        "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    }
    weights.unlink()
    snap = cache / "snapshots" / "0123abc"
    for i, (rel, data) in enumerate(want.items()):
        (blobs / f"blob{i}").write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blobs / f"blob{i}", link.parent))
    return snap, want


def test_a_snapshot_is_refused_without_follow_symlinks_and_names_the_option(
    tmp_path: Path,
) -> None:
    snap, _ = _snapshot(tmp_path / "cache")
    out = tmp_path / "p.spk"
    with pytest.raises(SecpackError) as err:
        _seal(snap, out)
    assert err.value.code == "input.unsafe"
    assert "--follow-symlinks" in err.value.detail
    assert not out.exists()


@pytest.mark.parametrize("through_link", [False, True])
def test_a_snapshot_seals_with_follow_symlinks_as_the_files_it_links_to(
    tmp_path: Path, through_link: bool
) -> None:
    snap, want = _snapshot(tmp_path / "cache")
    source = snap
    if through_link:  # the snapshot named through a link of its own ("main" -> snapshot)
        source = tmp_path / "latest"
        source.symlink_to(snap)
        with pytest.raises(SecpackError) as err:
            _seal(source, tmp_path / "refused.spk")
        assert err.value.code == "input.unsafe"
    out = tmp_path / "p.spk"
    _seal(source, out, follow_symlinks=True)
    _open(out, tmp_path / "opened")
    got = {
        p.relative_to(tmp_path / "opened").as_posix(): p
        for p in (tmp_path / "opened").rglob("*")
        if not p.is_dir()
    }
    assert sorted(got) == sorted(want)
    for rel, path in got.items():
        assert not path.is_symlink() and path.read_bytes() == want[rel]


def test_a_single_file_link_seals_with_follow_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "store" / "blob"
    target.parent.mkdir()
    target.write_bytes(b"weights" * 100)
    link = tmp_path / "model.bin"
    link.symlink_to(target)
    with pytest.raises(SecpackError) as err:
        _seal(link, tmp_path / "refused.spk")
    assert err.value.code == "input.unsafe"
    _seal(link, tmp_path / "p.spk", follow_symlinks=True)
    _open(tmp_path / "p.spk", tmp_path / "opened")
    assert (tmp_path / "opened" / "model.bin").read_bytes() == target.read_bytes()


@pytest.mark.parametrize("kind", ["directory", "dangling", "loop", "fifo"])
def test_links_that_are_not_to_a_regular_file_stay_refused(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "m"
    root.mkdir()
    (root / "config.json").write_text("{}")
    link = root / "extra"
    if kind == "directory":
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "secret.txt").write_text("x")
        link.symlink_to(tmp_path / "elsewhere")
    elif kind == "dangling":
        link.symlink_to(tmp_path / "nowhere")
    elif kind == "loop":
        link.symlink_to(link)
    else:
        os.mkfifo(tmp_path / "fifo")
        link.symlink_to(tmp_path / "fifo")
    out = tmp_path / "p.spk"
    with pytest.raises(SecpackError) as err:
        _seal(root, out, follow_symlinks=True)
    assert err.value.code == "input.unsafe"
    assert "extra" in err.value.detail
    assert not out.exists()


def test_a_link_retargeted_during_the_seal_does_not_change_what_is_read(
    tmp_path: Path,
) -> None:
    snap, want = _snapshot(tmp_path / "cache")
    other = tmp_path / "other.json"
    other.write_bytes(b'{"model_type": "XXXX"}')  # the same size as config.json
    assert len(other.read_bytes()) == len(want["config.json"])

    def retarget() -> None:
        link = snap / "config.json"
        link.unlink()
        link.symlink_to(other)

    meddler = Meddler(retarget)
    _seal(snap, tmp_path / "p.spk", follow_symlinks=True, progress=meddler)
    assert meddler.done
    _open(tmp_path / "p.spk", tmp_path / "opened")
    assert (tmp_path / "opened" / "config.json").read_bytes() == want["config.json"]


def test_a_linked_file_changed_during_the_seal_is_refused(tmp_path: Path) -> None:
    snap, _ = _snapshot(tmp_path / "cache")
    blob = (snap / "config.json").resolve()

    def rewrite() -> None:
        blob.write_bytes(b'{"model_type": "gpt2"}')

    out = tmp_path / "p.spk"
    with pytest.raises(SecpackError) as err:
        _seal(snap, out, follow_symlinks=True, progress=Meddler(rewrite))
    assert err.value.code == "input.changed"
    assert not out.exists()


@pytest.mark.parametrize("target", ["/proc/version", "/proc/self/status", "/proc/self/pagemap"])
def test_a_link_to_a_file_whose_size_is_not_its_length_is_refused(
    tmp_path: Path, target: str
) -> None:
    # Regular files of size 0 whose reads return text.
    root = tmp_path / "m"
    root.mkdir()
    (root / "config.json").write_text("{}")
    (root / "extra").symlink_to(target)
    out = tmp_path / "p.spk"
    with pytest.raises(SecpackError) as err:
        _seal(root, out, follow_symlinks=True)
    assert err.value.code == "input.unsafe" and "size is not its length" in err.value.detail
    assert not out.exists()


def test_links_followed_outside_the_input_are_named_in_a_note(tmp_path: Path) -> None:
    """With --follow-symlinks a link can reach any file the user can read: seal says
    which links led outside the input (the first few by name, then a count), and
    says nothing of links that stay inside it."""
    snap, want = _snapshot(tmp_path / "cache")
    (snap / "inner.json").symlink_to("config.json")  # a link to a link inside
    (snap / "own.txt").write_text("a plain file")
    (snap / "same.txt").symlink_to("own.txt")
    for i in range(4):
        (snap / f"extra{i}.bin").symlink_to(
            os.path.relpath(tmp_path / "cache" / "blobs" / "blob0", snap)
        )
    report = seal(
        str(snap),
        str(tmp_path / "p.spk"),
        encrypt=False,
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
        follow_symlinks=True,
    )
    (note,) = [n for n in report.notes if "outside the input" in n]
    outside = len(want) + 4 + 1  # inner.json resolves through config.json to a blob
    assert note.startswith(f"{outside} followed link(s) lead outside the input: ")
    assert "1_Pooling/config.json -> " + str(tmp_path / "cache" / "blobs") in note
    assert note.endswith(f"(and {outside - 5} more)") and "same.txt" not in note


@pytest.mark.parametrize("target", ["/proc/version", "/proc/self/status"])
def test_a_file_whose_size_is_not_its_length_is_refused_when_named_itself(
    tmp_path: Path, target: str
) -> None:
    # Named directly (no link to follow), it once sealed as an empty file.
    out = tmp_path / "p.spk"
    with pytest.raises(SecpackError) as err:
        _seal(Path(target), out)
    assert err.value.code == "input.unsafe" and "size is not its length" in err.value.detail
    assert not out.exists()


def test_a_directory_of_proc_files_is_refused(tmp_path: Path) -> None:
    # /proc/self/ holds "regular" files of size 0 that read as text, met by the walk.
    out = tmp_path / "p.spk"
    with pytest.raises(SecpackError) as err:
        _seal(Path("/proc/self/net"), out)
    # (It once failed as input.invalid, "changed while it was being sealed".)
    assert err.value.code == "input.unsafe" and "size is not its length" in err.value.detail
    assert not out.exists()


def test_real_files_of_the_sizes_pseudo_files_report_are_sealed(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    (root / "empty").write_bytes(b"")
    (root / "page").write_bytes(bytes(range(256)) * 16)  # 4096 bytes, like a /sys file
    out = tmp_path / "p.spk"
    _seal(root, out)
    assert out.exists()
    _seal(root / "page", tmp_path / "q.spk")
    assert (tmp_path / "q.spk").exists()
