"""Keys, trust and output safety through the CLI: who may open and verify what,
the error code each refusal carries, and `secpack sign` adding a signature
without touching the signed bytes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import (
    COMPONENT_FILES,
    KeyPair,
    KeyRing,
    assert_same_tree,
    fails,
    leftovers,
    ok,
    run_cli,
)

from secpack.format.limits import DEFAULT_LIMITS
from secpack.package.reader import read_header
from secpack.transport.spkfile import FileSource


def sigs_offset(pkg: Path) -> int:
    with FileSource(str(pkg)) as src:
        return read_header(src, DEFAULT_LIMITS).layout.sigs_off


def signature_count(pkg: Path) -> int:
    with FileSource(str(pkg)) as src:
        return len(read_header(src, DEFAULT_LIMITS).signatures)


def assert_no_output(out: Path) -> None:
    assert leftovers(out.parent, out.name) == [], "output or a temporary was left behind"


# --- keygen --------------------------------------------------------------------------------


def test_keygen_files_and_refusals(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    first = ok("keygen", "signing", "-o", key, "--json").json()
    assert key.stat().st_mode & 0o777 == 0o600
    assert Path(f"{key}.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    fails("output.exists", "keygen", "signing", "-o", key, "--json")
    again = ok("keygen", "signing", "-o", key, "--force", "--json").json()
    assert again["key_id"] != first["key_id"]
    fails("input.invalid", "keygen", "signing", "-o", tmp_path / "x.key", "--alg", "rsa-2048")
    assert not (tmp_path / "x.key").exists()


def test_keygen_writes_both_halves_or_neither(tmp_path: Path) -> None:
    # The public half cannot be written (its name is a directory, or too long):
    # no private key is left without it, and --force keeps the old pair whole.
    blocked = tmp_path / "b.key"
    Path(f"{blocked}.pub").mkdir()
    fails("output.exists", "keygen", "signing", "-o", blocked)
    assert not blocked.exists()
    key = tmp_path / "k.key"
    ok("keygen", "signing", "-o", key)
    old = key.read_bytes()
    Path(f"{key}.pub").unlink()
    Path(f"{key}.pub").mkdir()
    fails("output.unsafe", "keygen", "signing", "-o", key, "--force")
    assert key.read_bytes() == old
    long = tmp_path / ("n" * 252)  # the private half fits NAME_MAX, "<name>.pub" does not
    fails("output.io", "keygen", "signing", "-o", long)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.key.pub", "k.key", "k.key.pub"]


def test_force_replaces_files_only(tmp_path: Path, model_dir: Path, release_key: KeyPair) -> None:
    import os

    fifo = tmp_path / "fifo.spk"
    os.mkfifo(fifo)
    fails(
        "output.unsafe",
        "seal",
        model_dir,
        "-o",
        fifo,
        "--sign-key",
        release_key.private,
        "--no-encrypt",
        "--force",
    )
    fails("output.unsafe", "keygen", "signing", "-o", fifo, "--force")
    assert fifo.is_fifo()


def test_wrong_key_kinds(
    tmp_path: Path, model_dir: Path, sealed: Path, release_key: KeyPair, server_key: KeyPair
) -> None:
    pkg = tmp_path / "p.spk"
    seal_to = ("seal", model_dir, "-o", pkg)
    signed_for = (*seal_to, "--sign-key", release_key.private, "--recipient")
    # A recipient key cannot sign, and a signing key is not a recipient.
    fails("key.invalid", *seal_to, "--sign-key", server_key.private)
    fails("key.invalid", *signed_for, release_key.public)
    assert_no_output(pkg)
    fails("key.invalid", "verify", sealed, "--trust", server_key.public)
    out = tmp_path / "out"
    fails(
        "key.invalid",
        "open",
        sealed,
        "-o",
        out,
        "--identity",
        release_key.private,
        "--trust",
        release_key.public,
    )
    assert_no_output(out)
    fails("key.invalid", "sign", sealed, "--key", server_key.private)
    # A private key where a public one belongs is named as such, so that it is not
    # handed on as if it were public.
    said = "this is a private key; give its public key"
    res = fails("key.invalid", "verify", sealed, "--trust", release_key.private)
    assert said in res.stderr, str(res)
    res = fails("key.invalid", *signed_for, server_key.private)
    assert said in res.stderr, str(res)
    res = fails("key.invalid", *seal_to, "--sign-key", release_key.public)
    assert "this is a public key; give the private key" in res.stderr, str(res)
    assert_no_output(pkg)


# --- trust ---------------------------------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True])
def test_untrusted_signer(
    tmp_path: Path, sealed: Path, keys: KeyRing, server_key: KeyPair, as_json: bool
) -> None:
    other = keys.signing("other")
    flags = ["--json"] if as_json else []
    fails("sig.untrusted", "verify", sealed, "--trust", other.public, *flags)
    out = tmp_path / "out"
    fails(
        "sig.untrusted",
        "open",
        sealed,
        "-o",
        out,
        "--identity",
        server_key.private,
        "--trust",
        other.public,
        *flags,
    )
    assert_no_output(out)


def test_unsigned_package(
    tmp_path: Path, model_dir: Path, release_key: KeyPair, server_key: KeyPair
) -> None:
    pkg = tmp_path / "unsigned.spk"
    ok("seal", model_dir, "-o", pkg, "--recipient", server_key.public, "-q")
    assert signature_count(pkg) == 0
    fails("sig.missing", "verify", pkg, "--trust", release_key.public)
    fails("sig.missing", "verify", pkg, "--trust", release_key.public, "--json")
    out = tmp_path / "out"
    args = ("--identity", server_key.private, "--trust", release_key.public)
    fails("sig.missing", "open", pkg, "-o", out, *args)
    assert_no_output(out)
    # Signing it afterwards makes it acceptable.
    ok("sign", pkg, "--key", release_key.private, "-q")
    ok("verify", pkg, "--trust", release_key.public, "-q")
    ok("open", pkg, "-o", out, *args, "-q")
    assert_same_tree(model_dir, out)


def test_no_trust_at_all(tmp_path: Path, sealed: Path, server_key: KeyPair) -> None:
    # run_cli() removes SECPACK_POLICY from the environment.
    fails("policy.none", "verify", sealed)
    fails("policy.none", "verify", sealed, "--json")
    out = tmp_path / "out"
    fails("policy.none", "open", sealed, "-o", out, "--identity", server_key.private)
    assert_no_output(out)
    fails("policy.none", "inspect", sealed, "--identity", server_key.private)


def test_inspect_with_trust_applies_the_rollback_check(
    tmp_path: Path, model_dir: Path, release_key: KeyPair, server_key: KeyPair
) -> None:
    """inspect --trust says "verified against policy": it must refuse a replayed
    older release as verify and open do, and record nothing itself."""
    common = ("--sign-key", release_key.private, "--recipient", server_key.public, "-q")
    v1, v2 = tmp_path / "v1.spk", tmp_path / "v2.spk"
    ok("seal", model_dir, "-o", v1, "--version", "1", *common)
    ok("seal", model_dir, "-o", v2, "--version", "2", *common)
    trust = ("--trust", release_key.public)
    ids = ("--identity", server_key.private)
    ok("inspect", v2, *trust, *ids, "-q")
    ok("inspect", v1, *trust, "-q")  # inspect recorded nothing: v1 is still fine
    ok("open", v2, "-o", tmp_path / "out", *ids, *trust, "-q")  # open records v2
    fails("fresh.rollback", "verify", v1, *trust)
    fails("fresh.rollback", "inspect", v1, *trust)
    fails("fresh.rollback", "inspect", v1, *trust, *ids)
    shown = ok("inspect", v1, *trust, *ids, "--allow-downgrade", "--json").json()
    assert shown["verified"] is True and shown["version"] == 1
    # Without a policy it is the public view, which claims no verification.
    public = ok("inspect", v1, "--json").json()
    assert public["verified"] is False


def test_policy_file_from_environment(
    tmp_path: Path, sealed: Path, keys: KeyRing, release_key: KeyPair
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(f'version = 1\n[trust]\nkeys = ["{release_key.public}"]\n')
    ok("verify", sealed, "-q", env={"SECPACK_POLICY": str(policy)})
    ok("verify", sealed, "--policy", policy, "-q")
    fails("policy.invalid", "verify", sealed, "--policy", policy, "--trust", release_key.public)
    other = keys.signing("other")
    strict = tmp_path / "strict.toml"
    strict.write_text(f'version = 1\n[trust]\nkeys = ["{other.public}"]\n')
    fails("sig.untrusted", "verify", sealed, env={"SECPACK_POLICY": str(strict)})


def test_wrong_identity(
    tmp_path: Path, sealed: Path, keys: KeyRing, release_key: KeyPair, server_key: KeyPair
) -> None:
    stranger = keys.recipient("stranger")
    out = tmp_path / "out"
    trust = ("--trust", release_key.public)
    fails("key.no-recipient", "open", sealed, "-o", out, "--identity", stranger.private, *trust)
    assert_no_output(out)
    fails("key.no-recipient", "open", sealed, "-o", out, *trust)  # no identity at all
    assert_no_output(out)
    fails(
        "key.no-recipient",
        "open",
        sealed,
        "-o",
        out,
        "--identity",
        stranger.private,
        *trust,
        "--component",
        "config",
        "--json",
    )
    assert_no_output(out)
    # A second identity that is a recipient is enough.
    ids = ("--identity", stranger.private, "--identity", server_key.private)
    ok("open", sealed, "-o", out, *ids, *trust, "-q")


def test_per_component_recipients(
    tmp_path: Path, model_dir: Path, keys: KeyRing, release_key: KeyPair, server_key: KeyPair
) -> None:
    """A recipient scoped to one component opens that component and nothing else."""
    edge = keys.recipient("edge")
    pkg = tmp_path / "p.spk"
    ok(
        "seal",
        model_dir,
        "-o",
        pkg,
        "--sign-key",
        release_key.private,
        "--recipient",
        server_key.public,
        "--recipient",
        f"weights={edge.public}",
        "-q",
    )
    trust = ("--trust", release_key.public)
    out = tmp_path / "out"
    fails("key.no-recipient", "open", pkg, "-o", out, "--identity", edge.private, *trust)
    assert_no_output(out)
    ok("open", pkg, "-o", out, "--identity", edge.private, *trust, "--component", "weights", "-q")
    assert_same_tree(model_dir, out, only=COMPONENT_FILES["weights"])


def test_unknown_component(tmp_path: Path, sealed: Path, release_key: KeyPair) -> None:
    fails("component.unknown", "verify", sealed, "--trust", release_key.public, "--component", "x")
    out = tmp_path / "out"
    fails(
        "component.unknown",
        "open",
        sealed,
        "-o",
        out,
        "--trust",
        release_key.public,
        "--component",
        "adapter:none",
    )
    assert_no_output(out)


# --- output safety -------------------------------------------------------------------------


def test_open_refuses_existing_output(
    tmp_path: Path, sealed: Path, release_key: KeyPair, server_key: KeyPair
) -> None:
    args = ("--identity", server_key.private, "--trust", release_key.public)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    fails("output.exists", "open", sealed, "-o", busy, *args)
    fails("output.exists", "open", sealed, "-o", busy, *args, "--json")
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    assert (busy / "keep.txt").read_text() == "mine"

    a_file = tmp_path / "file"
    a_file.write_text("x")
    fails("output.exists", "open", sealed, "-o", a_file, *args)
    assert a_file.read_text() == "x"

    empty = tmp_path / "empty"
    empty.mkdir()
    link = tmp_path / "link"
    link.symlink_to(empty)
    fails("output.exists", "open", sealed, "-o", link, *args)
    assert list(empty.iterdir()) == []
    assert [p for p in tmp_path.iterdir() if ".secpack-tmp-" in p.name] == []


def test_seal_refuses_existing_output(
    tmp_path: Path, model_dir: Path, release_key: KeyPair
) -> None:
    pkg = tmp_path / "p.spk"
    pkg.write_bytes(b"precious")
    seal = ("seal", model_dir, "-o", pkg, "--sign-key", release_key.private, "--no-encrypt")
    fails("output.exists", *seal)
    assert pkg.read_bytes() == b"precious"
    ok(*seal, "--force", "-q")
    ok("verify", pkg, "--trust", release_key.public, "-q")
    assert [p.name for p in tmp_path.iterdir()] == ["p.spk"]


# --- sign ----------------------------------------------------------------------------------


def test_sign_adds_second_signature(
    tmp_path: Path, sealed: Path, keys: KeyRing, release_key: KeyPair
) -> None:
    qa = keys.signing("qa", "ecdsa-p256")
    pkg = tmp_path / "p.spk"
    shutil.copyfile(sealed, pkg)
    before = pkg.read_bytes()
    cut = sigs_offset(pkg)
    assert 0 < cut < len(before)
    assert signature_count(pkg) == 1
    fails("sig.untrusted", "verify", pkg, "--trust", qa.public)

    res = ok("sign", pkg, "--key", qa.private, "--json").json()
    assert res["ok"] is True and res["added"] is True and res["signatures"] == 2
    after = pkg.read_bytes()
    assert after[:cut] == before[:cut], "signed bytes or blobs changed"
    assert len(after) > len(before)
    assert sigs_offset(pkg) == cut
    assert signature_count(pkg) == 2

    ver = ok("verify", pkg, "--trust", qa.public, "--json").json()
    assert [s["alg"] for s in ver["signers"]] == ["ecdsa-p256"]
    ok("verify", pkg, "--trust", release_key.public, "-q")
    both = ok("verify", pkg, "--trust", release_key.public, "--trust", qa.public, "--json")
    assert len(both.json()["signers"]) == 2

    # Signing again with the same key adds nothing and leaves the file as it was.
    res = ok("sign", pkg, "--key", qa.private, "--json").json()
    assert res["added"] is False and res["signatures"] == 2
    assert pkg.read_bytes() == after
    res = ok("sign", pkg, "--key", release_key.private, "--json").json()
    assert res["added"] is False and res["signatures"] == 2
    assert pkg.read_bytes() == after


def test_sign_to_copy_leaves_original(tmp_path: Path, sealed: Path, keys: KeyRing) -> None:
    qa = keys.signing("qa", "ecdsa-p256")
    original = sealed.read_bytes()
    copy = tmp_path / "signed.spk"
    res = ok("sign", sealed, "--key", qa.private, "-o", copy, "--json").json()
    assert res["added"] is True and res["signatures"] == 2
    assert sealed.read_bytes() == original
    cut = sigs_offset(sealed)
    assert copy.read_bytes()[:cut] == original[:cut]
    ok("verify", copy, "--trust", qa.public, "-q")
    fails("output.exists", "sign", sealed, "--key", qa.private, "-o", copy)


def test_sign_and_unsign_in_place_go_through_a_symlink(
    tmp_path: Path, sealed: Path, keys: KeyRing
) -> None:
    """`sign current.spk`, a link to a release: the release is signed and the link
    still points at it (not replaced by a signed copy beside an unsigned target)."""
    qa = keys.signing("qa-link")
    release = tmp_path / "releases" / "v7.spk"
    release.parent.mkdir()
    release.write_bytes(sealed.read_bytes())
    link = tmp_path / "current.spk"
    link.symlink_to(Path("releases") / "v7.spk")
    assert ok("sign", link, "--key", qa.private, "--json").json()["signatures"] == 2
    assert link.is_symlink() and os.readlink(link) == os.path.join("releases", "v7.spk")
    ok("verify", release, "--trust", qa.public, "-q")
    kid = ok("signatures", release, "--json").json()["signatures"][1]["key_id"]
    ok("unsign", link, "--key-id", kid.removeprefix("sha256:")[:16])
    assert link.is_symlink() and release.read_bytes() == sealed.read_bytes()


def test_sign_refuses_tampered_package(tmp_path: Path, sealed: Path, keys: KeyRing) -> None:
    """A signature vouches for every stored byte, so sign checks them first."""
    qa = keys.signing("qa", "ecdsa-p256")
    pkg = tmp_path / "p.spk"
    data = bytearray(sealed.read_bytes())
    data[sigs_offset(sealed) - 1] ^= 0x40  # last byte of the blob area
    pkg.write_bytes(bytes(data))
    fails("integrity", "sign", pkg, "--key", qa.private)
    assert pkg.read_bytes() == bytes(data)


# --- policy requirements -------------------------------------------------------------------


def test_threshold_needs_distinct_signers(
    tmp_path: Path, sealed: Path, keys: KeyRing, release_key: KeyPair
) -> None:
    qa = keys.signing("qa", "ecdsa-p256")
    policy = tmp_path / "two.toml"
    policy.write_text(
        f'version = 1\n[trust]\nkeys = ["{release_key.public}", "{qa.public}"]\nthreshold = 2\n'
    )
    pkg = tmp_path / "p.spk"
    shutil.copyfile(sealed, pkg)
    fails("sig.threshold", "verify", pkg, "--policy", policy)
    ok("sign", pkg, "--key", release_key.private, "-q")  # the same key again counts once
    fails("sig.threshold", "verify", pkg, "--policy", policy)
    ok("sign", pkg, "--key", qa.private, "-q")
    assert len(ok("verify", pkg, "--policy", policy, "--json").json()["signers"]) == 2


def test_sealing_an_already_expired_package_is_refused(
    tmp_path: Path, model_dir: Path, release_key: KeyPair
) -> None:
    pkg = tmp_path / "dead.spk"
    args = ["seal", model_dir, "-o", pkg, "--sign-key", release_key.private, "--no-encrypt"]
    fails("input.invalid", *args, "--expires", "1d", env={"SOURCE_DATE_EPOCH": "1700000000"})
    fails("input.invalid", *args, "--expires", "2001-01-01")
    # Past what a 64-bit time holds: no package that no reader could parse.
    fails("input.invalid", *args, "--expires", "99999999999999999999w")
    fails("input.invalid", *args, "--expires", "")  # not "never"
    fails("input.invalid", *args, "--threads", "-1")
    assert not pkg.exists()
    ok(*args, "--expires", "5000w")


@pytest.mark.parametrize("epoch", [str(2**63), str(2**64), "9" * 5000, "\u00b2", "-1", "1.5"])
def test_source_date_epoch_out_of_range_is_refused_before_anything_is_written(
    tmp_path: Path, sealed: Path, model_dir: Path, release_key: KeyPair, keys: KeyRing, epoch: str
) -> None:
    # Past 2^63 - 1 a time is a CBOR bignum, which no strict reader accepts: a seal
    # or a countersignature made with it would leave a package no one can read.
    env = {"SOURCE_DATE_EPOCH": epoch}
    pkg = tmp_path / "p.spk"
    res = fails(
        "input.invalid",
        *["seal", model_dir, "-o", pkg, "--sign-key", release_key.private, "--no-encrypt"],
        env=env,
    )
    assert "SOURCE_DATE_EPOCH" in res.stderr
    assert not pkg.exists()
    signed = tmp_path / "signed.spk"
    shutil.copyfile(sealed, signed)
    before = signed.read_bytes()
    qa = keys.signing("qa", "ecdsa-p256")
    assert (
        "SOURCE_DATE_EPOCH"
        in fails("input.invalid", "sign", signed, "--key", qa.private, env=env).stderr
    )
    assert signed.read_bytes() == before
    ok("verify", signed, "--trust", release_key.public)
    ok("sign", signed, "--key", qa.private, "-q", env={"SOURCE_DATE_EPOCH": str(2**63 - 1)})
    assert len(ok("signatures", signed, "--json").json()["signatures"]) == 2


def test_expired_package(
    tmp_path: Path, model_dir: Path, release_key: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secpack.api import common

    pkg = tmp_path / "old.spk"
    # Seal at a time long past (the clock and SOURCE_DATE_EPOCH agree), valid for a day.
    with monkeypatch.context() as patched:
        patched.setattr(common, "now", lambda: 1700000000)
        ok(
            "seal",
            model_dir,
            "-o",
            pkg,
            "--sign-key",
            release_key.private,
            "--no-encrypt",
            "--expires",
            "1d",
            "-q",
            env={"SOURCE_DATE_EPOCH": "1700000000"},
        )
    fails("fresh.expired", "verify", pkg, "--trust", release_key.public)
    out = tmp_path / "out"
    fails("fresh.expired", "open", pkg, "-o", out, "--trust", release_key.public)
    assert_no_output(out)
    # Nor is it signed again: nothing would load it, whoever vouched for it.
    before = pkg.read_bytes()
    qa = tmp_path / "qa.key"
    ok("keygen", "signing", "-o", qa, "-q")
    fails("fresh.expired", "sign", pkg, "--key", qa)
    fails("fresh.expired", "sign", pkg, "--key", qa, "-o", tmp_path / "copy.spk")
    assert pkg.read_bytes() == before and not (tmp_path / "copy.spk").exists()
    # Its signatures can still be listed and removed.
    listed = ok("signatures", pkg, "--json").json()["signatures"]
    ok("unsign", pkg, "--key-id", listed[0]["key_id"], "-q")
    assert ok("signatures", pkg, "--json").json()["signatures"] == []


# --- regressions for bugs found while writing these tests ------------------------------------


def test_bug_keygen_empty_passphrase_writes_unencrypted_key(tmp_path: Path) -> None:
    """`--passphrase-env VAR` with VAR set to "" must not silently write a plaintext
    private key (secpack.recipes.keys.private_pem treats b"" as "no passphrase"),
    which the same `--passphrase-env VAR` then refuses to load."""
    key = tmp_path / "k.key"
    res = run_cli(
        "keygen", "signing", "-o", key, "--passphrase-env", "EMPTY_PASS", env={"EMPTY_PASS": ""}
    )
    plain = key.exists() and b"BEGIN PRIVATE KEY" in key.read_bytes()
    assert not plain, "keygen wrote an unencrypted private key although a passphrase was asked for"
    assert res.returncode != 0, str(res)
    assert res.error_code in {"key.passphrase", "input.invalid"}, str(res)
    assert not key.exists() and not Path(f"{key}.pub").exists()


def test_bug_seal_duplicate_sign_key_adds_duplicate_signature(
    tmp_path: Path, model_dir: Path, release_key: KeyPair
) -> None:
    """`secpack sign` never adds a second signature by the same key; `seal` with the
    same key given twice (here once through a copy of the file) should not either."""
    copy = tmp_path / "same.key"
    shutil.copyfile(release_key.private, copy)
    copy.chmod(0o600)
    pkg = tmp_path / "p.spk"
    res = ok(
        "seal",
        model_dir,
        "-o",
        pkg,
        "--sign-key",
        release_key.private,
        "--sign-key",
        copy,
        "--no-encrypt",
        "--json",
    ).json()
    assert signature_count(pkg) == 1
    assert len(res["signers"]) == 1


def test_bug_verify_with_unusable_state_dir_raises_raw_oserror(
    tmp_path: Path, sealed: Path, release_key: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify() records nothing, yet it creates and locks the rollback state directory
    (secpack.transport.state.VersionState._locked) and lets the OSError escape when it
    cannot: a library caller gets FileNotFoundError/NotADirectoryError instead of a
    SecpackError, and the CLI reports output.io for a read-only check."""
    from secpack.api.verify import verify
    from secpack.errors import SecpackError
    from secpack.sign.policy import policy_from_keys

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("SECPACK_STATE_DIR", str(blocker / "state"))
    policy = policy_from_keys([("release", release_key.public.read_bytes())])
    try:
        verify(str(sealed), policy)
    except SecpackError:
        pass  # a clean refusal with a stable code would be acceptable
    except OSError as exc:
        pytest.fail(f"verify() let a raw {type(exc).__name__} escape: {exc}")


def test_bug_sign_with_output_never_duplicates_a_signer(
    tmp_path: Path, sealed: Path, release_key: KeyPair
) -> None:
    """Regression: `sign -o COPY` with a key that had already signed appended a second
    signature by that key to the copy."""
    copy = tmp_path / "copy.spk"
    res = ok("sign", sealed, "--key", release_key.private, "-o", copy, "--json").json()
    assert res["added"] is False
    assert copy.read_bytes() == sealed.read_bytes()
    assert signature_count(copy) == signature_count(sealed)


def _with_entries(pkg: Path, dest: Path, extra: list[tuple[str, bytes]]) -> None:
    """A copy of ``pkg`` whose signature section also holds ``extra`` entries."""
    from secpack.api.signing import _rewrite
    from secpack.format.sections import SignatureEntry

    with FileSource(str(pkg)) as src:
        header = read_header(src, DEFAULT_LIMITS)
        entries = [*header.signatures, *(SignatureEntry(t, d) for t, d in extra)]
        _rewrite(src, header, entries, str(dest), in_place=False)


def test_malformed_signature_entries_are_listed_and_can_be_removed(
    tmp_path: Path, sealed: Path, release_key: KeyPair, keys: KeyRing
) -> None:
    """Entries no reader can parse (a failed keyless signing, a tool's bug): a bad
    sigstore bundle never counts for verify, and a malformed COSE_Sign1 makes a
    reader refuse the package (FORMAT.md §8). Either way signatures lists them as
    malformed beside the good ones, sign and unsign still work, and unsign
    --malformed removes them, which makes the package whole again."""
    pkg = tmp_path / "junk.spk"
    _with_entries(sealed, pkg, [("sigstore-bundle", b"{}"), ("cose-sign1", b"\xd2\x84junk")])
    fails("sig.malformed", "verify", pkg, "--trust", release_key.public)
    # The public view lists them too, rather than failing on them.
    sigs = ok("inspect", pkg, "--json").json()["signatures"]
    assert [s["alg"] for s in sigs][1:] == [None, "malformed"]
    listed = ok("signatures", pkg, "--trust", release_key.public, "--json").json()["signatures"]
    assert [(s["alg"], s["trusted"]) for s in listed] == [
        ("ed25519", True),
        ("malformed", False),
        ("malformed", False),
    ]
    assert all(s["key_id"] is None for s in listed[1:])
    qa = keys.signing("qa", "ecdsa-p256")
    ok("sign", pkg, "--key", qa.private, "-q")
    qa_id = ok("signatures", pkg, "--json").json()["signatures"][-1]["key_id"]
    ok("unsign", pkg, "--key-id", qa_id, "-q")
    fails("input.invalid", "unsign", pkg)  # neither --key-id nor --malformed
    fails("input.invalid", "unsign", pkg, "--key-id", qa_id, "--malformed")
    assert ok("unsign", pkg, "--malformed", "--json").json()["removed"] == 2
    listed = ok("signatures", pkg, "--json").json()["signatures"]
    assert [s["alg"] for s in listed] == ["ed25519"]
    fails("sig.unknown", "unsign", pkg, "--malformed")
    ok("verify", pkg, "--trust", release_key.public)


def test_sign_and_unsign_into_an_existing_file_do_not_advise_a_missing_force(
    tmp_path: Path, sealed: Path, keys: KeyRing
) -> None:
    # The message used to end "(use --force to replace it)": sign has no --force.
    taken = tmp_path / "taken.spk"
    taken.write_bytes(b"keep me")
    qa = keys.signing("qa", "ecdsa-p256")
    res = fails("output.exists", "sign", sealed, "--key", qa.private, "-o", taken)
    assert "--force" not in res.stderr
    kid = ok("signatures", sealed, "--json").json()["signatures"][0]["key_id"]
    res = fails("output.exists", "unsign", sealed, "--key-id", kid, "-o", taken)
    assert "--force" not in res.stderr
    assert taken.read_bytes() == b"keep me"


def _near_full_section(sealed: Path) -> list[tuple[str, bytes]]:
    """Entries of at most 1 MiB each that bring the section to 60 bytes short of
    the readers' 4 MiB."""
    from secpack.format.sections import SignatureEntry, build_signature_section

    with FileSource(str(sealed)) as src:
        own = read_header(src, DEFAULT_LIMITS).signatures
    extra = [("x-other", b"\0" * (1 << 20))] * 3 + [("x-other", b"")]
    size = len(build_signature_section([*own, *(SignatureEntry(t, d) for t, d in extra)]))
    room = DEFAULT_LIMITS.max_signature_bytes - 60 - size
    extra[-1] = ("x-other", b"\0" * room)  # its length prefix grows by 4 bytes, within the 60
    return extra


@pytest.mark.parametrize("full", ["64-signatures", "4-mib-section"])
def test_sign_refuses_a_signature_that_readers_would_refuse(
    tmp_path: Path, sealed: Path, keys: KeyRing, full: str
) -> None:
    """A full signature section stays as it was: the signature that would take it
    past the readers' limits (65 entries, or over 4 MiB) made a package that no
    verb read, unsign included."""
    pkg = tmp_path / "full.spk"
    # With the seal's own signature, 64 entries: the most readers take.
    entries = [("x-other", b"")] * 63 if full == "64-signatures" else _near_full_section(sealed)
    _with_entries(sealed, pkg, entries)
    before = pkg.read_bytes()
    ok("signatures", pkg)
    qa = keys.signing("qa", "ecdsa-p256")
    res = fails("input.invalid", "sign", pkg, "--key", qa.private)
    assert "secpack unsign" in res.stderr
    assert pkg.read_bytes() == before
    ok("signatures", pkg)


def test_sign_replaces_its_own_signature_where_that_no_longer_verifies(
    tmp_path: Path, sealed: Path, keys: KeyRing
) -> None:
    """Signing again with a key whose signature in the package is damaged replaces
    that signature: sign used to say "already signed" and leave the package
    failing verify."""
    from secpack.format.sections import SignatureEntry

    qa = keys.signing("qa", "ecdsa-p256")
    pkg = tmp_path / "p.spk"
    ok("sign", sealed, "--key", qa.private, "-o", pkg, "-q")
    ok("verify", pkg, "--trust", qa.public)
    with FileSource(str(pkg)) as src:
        header = read_header(src, DEFAULT_LIMITS)
    own, theirs = header.signatures
    damaged = theirs.data[:-1] + bytes([theirs.data[-1] ^ 1])  # the signature's last byte
    broken = tmp_path / "broken.spk"
    from secpack.api.signing import _rewrite

    with FileSource(str(pkg)) as src:
        _rewrite(src, header, [own, SignatureEntry(theirs.type, damaged)], str(broken), False)
    fails("integrity", "verify", broken, "--trust", qa.public)
    res = ok("sign", broken, "--key", qa.private, "--json").json()
    assert res["added"] is True and res["signatures"] == 2
    ok("verify", broken, "--trust", qa.public)
    # Signed and valid: a second sign adds nothing.
    assert ok("sign", broken, "--key", qa.private, "--json").json()["added"] is False


def test_an_empty_output_path_is_refused_not_taken_for_the_working_directory(
    tmp_path: Path, sealed: Path, release_key: KeyPair, keys: KeyRing
) -> None:
    # os.path.abspath("") is the working directory: `-o "$UNSET"` said it "exists",
    # and open into an empty working directory would have written there.
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    qa = keys.signing("qa", "ecdsa-p256")
    plain = tmp_path / "plain.spk"
    ok("seal", model, "-o", plain, "--sign-key", release_key.private, "--no-encrypt", "-q")
    for args in (
        ("seal", model, "-o", "", "--sign-key", release_key.private, "--no-encrypt"),
        ("open", plain, "-o", "", "--trust", release_key.public),
        ("sign", sealed, "--key", qa.private, "-o", ""),
        ("keygen", "signing", "-o", ""),
    ):
        res = fails("input.invalid", *args)
        assert "output path is empty" in res.stderr, args


@pytest.mark.parametrize("kid", ["e0ad", "sha256:1234567", "zzzzzzzz", ""])
def test_unsign_says_a_key_id_too_short_or_not_hex_is_one(
    tmp_path: Path, sealed: Path, kid: str
) -> None:
    pkg = tmp_path / "p.spk"
    pkg.write_bytes(sealed.read_bytes())
    res = fails("input.invalid", "unsign", pkg, "--key-id", kid)
    assert "at least 8 hex digits" in res.stderr
    assert pkg.read_bytes() == sealed.read_bytes()


def test_a_full_signature_section_is_refused_before_anything_is_signed(
    tmp_path: Path, sealed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keyless signature leaves a certificate and a public log entry behind: with
    no room for it, nothing is signed at all."""
    from secpack.api.signing import add_signature
    from secpack.errors import SecpackError
    from secpack.recipes.keys import generate_signing
    from secpack.sign import cose

    pkg = tmp_path / "full.spk"
    _with_entries(sealed, pkg, [("x-other", b"")] * 63)

    def never(*args: object) -> bytes:
        raise AssertionError("signed although the section was full")

    monkeypatch.setattr(cose, "sign_manifest", never)
    with pytest.raises(SecpackError) as err:
        add_signature(str(pkg), generate_signing("ed25519"))
    assert err.value.code == "input.invalid"
