"""Trust policies: the shipped files parse, and bad policies are refused by code."""

from __future__ import annotations

from pathlib import Path

import pytest

from secpack.api.keyfiles import resolve_policy
from secpack.errors import PolicyError, SecpackError
from secpack.recipes.keys import generate_signing, public_pem
from secpack.sign.policy import Policy, parse_duration

ROOT = Path(__file__).resolve().parents[2]


def _keys(tmp: Path, *names: str) -> None:
    (tmp / "keys").mkdir(exist_ok=True)
    for n in names:
        (tmp / "keys" / n).write_bytes(public_pem(generate_signing("ed25519").public_key()))


def test_dev_policy_trusts_the_example_key() -> None:
    policy = resolve_policy([], str(ROOT / "policies" / "dev.toml"))
    assert len(policy.keys) == 1 and policy.threshold == 1


@pytest.mark.parametrize("name", ["default.toml", "strict.toml"])
def test_shipped_policies_parse_once_keys_exist(tmp_path: Path, name: str) -> None:
    text = (ROOT / "policies" / name).read_text()
    (tmp_path / name).write_text(text)
    _keys(tmp_path, "release.pub", "release-a.pub", "release-b.pub", "release-c.pub")
    policy = resolve_policy([], str(tmp_path / name))
    if name == "strict.toml":
        assert policy.threshold == 2 and policy.require_expires and policy.max_age == 90 * 86400
        assert policy.limits.max_signatures == 16
        assert policy.required_components == ("config", "weights")


def test_default_policy_without_its_key_is_an_error() -> None:
    with pytest.raises(SecpackError) as err:
        resolve_policy([], str(ROOT / "policies" / "default.toml"))
    assert err.value.code == "input.missing"


@pytest.mark.parametrize(
    "text",
    [
        "version = 2\n[trust]\nkeys = ['keys/a.pub']",
        "version = 1",
        "version = 1\n[trust]\nkeys = []",
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\nthreshold = 2",
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\nthreshold = 0",
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\nalgorithms = ['rsa']",
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\nsurprise = 1",
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\n[limits]\nmax_signatures = -1",
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\n[limits]\nmax_everything = 1",
        # Loaded, these failed every package later, in a decoder's words.
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\n[limits]\nmax_cbor_depth = 18446744073709551615",
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\n[limits]\nmax_tensor_ndim = 65",
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\n[limits]\nmax_total_plain = 9223372036854775808",
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\n[freshness]\nmax_age = 'soon'",
        # Past 4300 digits int() fails with Python's own message; past 12 it is refused.
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\n[freshness]\nmax_age = '" + "9" * 5000 + "d'",
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\n[rollback]\nstate_dir = 1",
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\n[rollback]\nstate_dir = \"a\\u0000b\"",
        'version = 1\n[trust]\nkeys = ["keys/a.pub\\u0000"]',
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\ntrusted_root = \"\\u0000\"",
        "version = 1\n[trust]\nkeys = 'keys/a.pub'",
        # A trusted root that is not there, or not a file.
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\ntrusted_root = 'missing.json'",
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\ntrusted_root = 'keys'",
        "version = 1\n[trust\n",
        "version = true\n[trust]\nkeys = ['keys/a.pub']",
        "version = 1.0\n[trust]\nkeys = ['keys/a.pub']",
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\n[components]\nrequired = [1, {a = 1}]",
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\n[components]\nrequired = ['']",
        "version = 1\nx = " + "[" * 50_000 + "]" * 50_000,  # nested past the parser's stack
        "version = 1\nx = " + "{a = " * 50_000 + "1" + "}" * 50_000,
    ],
)
def test_bad_policies(tmp_path: Path, text: str) -> None:
    _keys(tmp_path, "a.pub")
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(PolicyError) as err:
        resolve_policy([], str(tmp_path / "p.toml"))
    assert err.value.code == "policy.invalid"


def test_a_long_duration_is_refused_in_the_policy_s_words(tmp_path: Path) -> None:
    _keys(tmp_path, "a.pub")
    number = "9" * 5000
    (tmp_path / "p.toml").write_text(
        f"version = 1\n[trust]\nkeys = ['keys/a.pub']\n[freshness]\nmax_age = '{number}d'"
    )
    with pytest.raises(PolicyError) as err:
        resolve_policy([], str(tmp_path / "p.toml"))
    assert "freshness.max_age" in err.value.detail and "at most 12 digits" in err.value.detail
    assert len(err.value.detail) < 400  # the value is cut, not echoed whole


def test_a_relative_state_dir_is_relative_to_the_policy_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _keys(tmp_path, "a.pub")
    (tmp_path / "p.toml").write_text(
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\n[rollback]\nstate_dir = 'state'"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    policy = resolve_policy([], str(tmp_path / "p.toml"))
    assert policy.state_dir == str(tmp_path / "state")
    # Empty names the default, as it always did.
    (tmp_path / "p.toml").write_text(
        "version = 1\n[trust]\nkeys = ['keys/a.pub']\n[rollback]\nstate_dir = ''"
    )
    assert resolve_policy([], str(tmp_path / "p.toml")).state_dir is None


def test_no_trust_anchor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SECPACK_POLICY", raising=False)
    with pytest.raises(PolicyError) as err:
        resolve_policy([], None)
    assert err.value.code == "policy.none"


def test_policy_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECPACK_POLICY", str(ROOT / "policies" / "dev.toml"))
    assert resolve_policy([], None).threshold == 1


def test_trust_and_policy_together_is_refused() -> None:
    with pytest.raises(PolicyError):
        resolve_policy(
            [str(ROOT / "keys-example" / "signing-ed25519.key.pub")],
            str(ROOT / "policies" / "dev.toml"),
        )


def test_a_recipient_key_cannot_be_trusted_for_signing(tmp_path: Path) -> None:
    # key.invalid, as for any other key file that cannot serve as a trust anchor.
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key")
    for key, why in (
        (ROOT / "keys-example" / "recipient-x25519.key.pub", "X25519"),
        (garbage, "PEM"),
    ):
        with pytest.raises(SecpackError) as err:
            resolve_policy([str(key)], None)
        assert err.value.code == "key.invalid" and why in err.value.detail


def test_empty_policy_is_misuse() -> None:
    with pytest.raises(PolicyError):
        Policy(keys={})


@pytest.mark.parametrize(("text", "seconds"), [("90d", 7776000), ("12h", 43200), ("2w", 1209600)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration("999999999999w") == 999999999999 * 604800
    for bad in ("0d", " 1d", "1d ", "\uff11d", "1 d", "d", "1y", "1" * 13 + "s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_a_rollback_state_nested_past_the_parser_is_state_corrupt(tmp_path: Path) -> None:
    from secpack.transport.state import VersionState

    state = VersionState(str(tmp_path))
    (tmp_path / "versions.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(SecpackError) as err, state._locked():
        pass
    assert err.value.code == "state.corrupt"


def test_a_rollback_state_that_cannot_be_stored_is_state_io(tmp_path: Path) -> None:
    from secpack.transport.state import VersionState

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for directory in (blocker, blocker / "state"):
        state = VersionState(str(directory))
        # A check that records nothing (verify) refuses it too: taken as "nothing
        # seen", it passed a version that open then refused as a rollback.
        for record in (False, True):
            with pytest.raises(SecpackError) as err:
                state.check("m", [b"k"], 2, record=record, allow_downgrade=False)
            assert err.value.code == "state.io"
            # The refusal says how to get going again (a read-only container meets it first).
            assert "SECPACK_STATE_DIR" in err.value.detail
            assert "protect = false" in err.value.detail
    assert blocker.read_text() == ""
    # A directory not made yet holds no state: a check that records nothing
    # creates nothing and passes.
    absent = VersionState(str(tmp_path / "not-yet"))
    assert absent.check("m", [b"k"], 2, record=False, allow_downgrade=False) is None
    assert not (tmp_path / "not-yet").exists()


# An Ed25519 key encrypted with the passphrase "right" (a test key, made for this
# test). "wrong-197" decrypts it to a valid CBC padding by chance (about one wrong
# passphrase in 256 does), and the garbage inside fails to parse instead.
_LUCKY_PADDING = b"""-----BEGIN ENCRYPTED PRIVATE KEY-----
MIGjMF8GCSqGSIb3DQEFDTBSMDEGCSqGSIb3DQEFDDAkBBDjQZ4fESHB4wbFKkZZ
AUwiAgIIADAMBggqhkiG9w0CCQUAMB0GCWCGSAFlAwQBKgQQigpD3a5w9gKXj5rE
O+t1EARAdSx+2Xq+ysewkG4mxgFusifxCZQioqTEM02h4BEZDAF0hTWXAvsTE8Pe
wwHl0KWUIEFO25zuS2CkjAeWL84wuQ==
-----END ENCRYPTED PRIVATE KEY-----
"""


def test_every_wrong_passphrase_is_key_passphrase() -> None:
    from secpack.recipes.keys import load_private_pem

    assert load_private_pem(_LUCKY_PADDING, b"right", "k") is not None
    for wrong in (b"wrong-197", b"wrong-0", b"right!"):
        with pytest.raises(SecpackError) as err:
            load_private_pem(_LUCKY_PADDING, wrong, "k")
        assert err.value.code == "key.passphrase", wrong


def test_a_key_file_holds_one_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from secpack.api.keyfiles import load_recipient, load_signing_key
    from secpack.sign.policy import policy_from_keys

    keys = Path(__file__).resolve().parents[2] / "keys-example"
    two = (keys / "signing-ed25519.key.pub").read_bytes() + (
        keys / "signing-p256.key.pub"
    ).read_bytes()
    with pytest.raises(SecpackError) as err:
        policy_from_keys([("two.pub", two)])
    assert err.value.code == "key.invalid"
    both = tmp_path / "both.pub"
    both.write_bytes(
        (keys / "recipient-x25519.key.pub").read_bytes()
        + (keys / "other-recipient-x25519.key.pub").read_bytes()
    )
    with pytest.raises(SecpackError) as err:
        load_recipient(str(both))
    assert err.value.code == "key.invalid"
    # `openssl ecparam -genkey` writes the curve's parameters before the key: one key.
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    params = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    (tmp_path / "ec.pem").write_bytes(params + pem)
    assert isinstance(load_signing_key(str(tmp_path / "ec.pem")), ec.EllipticCurvePrivateKey)


@pytest.mark.parametrize("window", [1 << 31, (1 << 31) + 1, 1 << 40])
def test_a_zstd_window_limit_past_what_zstd_decodes_still_reads_packages(
    tmp_path: Path, window: int
) -> None:
    """libzstd decodes windows of up to 2 GiB; a policy that allows more (any
    positive integer is a valid limit) made every frame fail to decode."""
    import dataclasses

    import numpy as np
    from helpers import EXAMPLE_KEYS, seal_example
    from safetensors.numpy import save_file

    import secpack
    from secpack.sign.policy import policy_from_keys

    root = tmp_path / "m"
    root.mkdir()
    (root / "config.json").write_text('{"a": 1}' * 100)
    save_file({"w": np.arange(4096, dtype=np.float32)}, str(root / "model.safetensors"))
    pkg = tmp_path / "p.spk"
    seal_example(root, pkg, encrypt=False)
    policy = policy_from_keys([("k", (EXAMPLE_KEYS / "signing-ed25519.key.pub").read_bytes())])
    wide = dataclasses.replace(
        policy, limits=dataclasses.replace(policy.limits, max_zstd_window=window)
    )
    with secpack.open_package(pkg, policy=wide) as p:
        assert p.read_file("config", "config.json") == b'{"a": 1}' * 100
        assert (p.state_dict("weights")["w"] == np.arange(4096, dtype=np.float32)).all()


def test_a_passphrase_that_is_not_utf8_is_the_variables_own_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taken as the bytes the environment holds: it was a UnicodeEncodeError,
    reported with Python's codec message, and such a key could not be used."""
    import os

    from secpack.api.keyfiles import load_signing_key, passphrase_from_env
    from secpack.recipes.keys import private_pem

    secret = b"\xff\xfe-not-utf8"
    monkeypatch.setenv("SECPACK_TEST_PASS", os.fsdecode(secret))
    assert passphrase_from_env("SECPACK_TEST_PASS") == secret
    key = generate_signing("ed25519")
    path = tmp_path / "k.pem"
    path.write_bytes(private_pem(key, secret))
    path.chmod(0o600)
    loaded = load_signing_key(str(path), passphrase_from_env("SECPACK_TEST_PASS"))
    assert public_pem(loaded.public_key()) == public_pem(key.public_key())


def test_every_limit_at_its_ceiling_loads_and_reads_packages(tmp_path: Path) -> None:
    from dataclasses import fields

    from helpers import EXAMPLE_KEYS, build_model, seal_example

    from secpack.api.verify import verify
    from secpack.format.limits import Limits
    from secpack.sign import policy_file

    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "a.pub").write_bytes(
        (EXAMPLE_KEYS / "signing-ed25519.key.pub").read_bytes()
    )
    ceilings = {
        f.name: policy_file._LIMIT_CEILINGS.get(f.name, policy_file._LIMIT_CEILING)
        for f in fields(Limits)
    }
    table = "\n".join(f"{k} = {v}" for k, v in ceilings.items())
    (tmp_path / "p.toml").write_text(
        f"version = 1\n[trust]\nkeys = ['keys/a.pub']\n[rollback]\nprotect = false\n"
        f"[limits]\n{table}\n"
    )
    policy = resolve_policy([], str(tmp_path / "p.toml"))
    assert policy.limits.max_cbor_depth == policy.limits.max_total_plain == 2**63 - 1
    model = build_model(tmp_path / "m", scale=8)
    seal_example(model, tmp_path / "m.spk", encrypt=False)
    report = verify(str(tmp_path / "m.spk"), policy)
    assert report.manifest.name == "m"


def test_one_keyless_identity_listed_twice_is_one_signer(tmp_path: Path) -> None:
    (tmp_path / "root.json").write_text("{}")  # parsed only when a bundle is checked
    entry = (
        "[[trust.sigstore]]\nidentity = 'https://ci.example/{who}'\n"
        "issuer = 'https://issuer.example'\nrepository = '{repo}'\n"
    )
    head = "version = 1\n[trust]\ntrusted_root = 'root.json'\nthreshold = 2\n"
    same = head + entry.format(who="a", repo="one") + entry.format(who="a", repo="two")
    (tmp_path / "same.toml").write_text(same)
    with pytest.raises(PolicyError) as err:
        resolve_policy([], str(tmp_path / "same.toml"))
    assert err.value.code == "policy.invalid" and "threshold 2 with 1" in err.value.detail
    other = head + entry.format(who="a", repo="one") + entry.format(who="b", repo="one")
    (tmp_path / "other.toml").write_text(other)
    assert resolve_policy([], str(tmp_path / "other.toml")).threshold == 2
