"""Keyless signatures: real sigstore bundles verified offline, and a full keyless
sign -> verify round trip against a local Fulcio/Rekor (@sigstore/mock)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secpack.errors import IntegrityError, SecpackError
from secpack.sign.keyless import SigstoreSigner, verify_artifact_bundle, verify_dsse_bundle

ROOT = Path(__file__).resolve().parents[1]
KEYS = ROOT / "keys-example"
# Shared, read-only test material next to the project (never copied into it).
SHARED = Path(os.environ.get("SECPACK_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data" / "sigstore"
MOCK = SHARED / "tools" / "sigstore-mock"

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} is absent")

GITHUB_OAUTH = "https://github.com/login/oauth"
BEACON = (
    "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/"
    ".github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main"
)
ACTIONS = "https://token.actions.githubusercontent.com"


# --- real bundles, offline -------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize(
    ("artifact", "bundle", "identity"),
    [
        ("bundle_v3.txt", "bundle_v3.txt.sigstore", "william@yossarian.net"),
        ("staging-rekor-v2.txt", "staging-rekor-v2.txt.sigstore.json", "jku@goto.fi"),
    ],
)
def test_real_staging_bundles_verify_offline(artifact: str, bundle: str, identity: str) -> None:
    root = str(DATA / "trusted_root.staging.json")
    data = (DATA / bundle).read_bytes()
    content = (DATA / artifact).read_bytes()
    signer = SigstoreSigner(identity, GITHUB_OAUTH)
    verify_artifact_bundle(data, content, signer, root)
    flipped = bytes([content[0] ^ 1]) + content[1:]
    with pytest.raises(IntegrityError):
        verify_artifact_bundle(data, flipped, signer, root)
    with pytest.raises(IntegrityError):
        verify_artifact_bundle(
            data, content, SigstoreSigner("mallory@example.com", GITHUB_OAUTH), root
        )
    # The production root does not vouch for staging certificates.
    with pytest.raises(IntegrityError):
        verify_artifact_bundle(data, content, signer, str(DATA / "trusted_root.production.json"))


@needs_data
def test_real_staging_dsse_bundle_and_subject() -> None:
    root = str(DATA / "trusted_root.staging.json")
    data = (DATA / "a.dsse.staging-rekor-v2.txt.sigstore.json").read_bytes()
    signer = SigstoreSigner(BEACON, ACTIONS)
    payload_type, payload = verify_dsse_bundle(data, signer, root)
    assert payload_type == "application/vnd.in-toto+json"
    assert b"a0cfc71271d6e278e57cd332ff957c3f7043fdda354c4cbb190a30d56efa01bf" in payload
    with pytest.raises(IntegrityError):
        verify_dsse_bundle(data, SigstoreSigner(BEACON, "https://accounts.google.com"), root)


@needs_data
def test_real_production_model_signing_bundle() -> None:
    data = (DATA / "model_signing" / "v1.1.0-sigstore" / "model.sig").read_bytes()
    signer = SigstoreSigner("stefanb@us.ibm.com", "https://sigstore.verify.ibm.com/oauth2")
    root = str(DATA / "trusted_root.production.json")
    _, payload = verify_dsse_bundle(data, signer, root)
    assert b"https://model_signing/signature/v1.0" in payload
    # One changed byte in the signed statement is refused.
    doc = json.loads(data)
    statement = bytearray(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    statement[len(statement) // 2] ^= 0x01
    doc["dsseEnvelope"]["payload"] = base64.b64encode(bytes(statement)).decode()
    with pytest.raises(SecpackError):
        verify_dsse_bundle(json.dumps(doc).encode(), signer, root)
    with pytest.raises(IntegrityError):
        verify_dsse_bundle(data, signer, str(DATA / "trusted_root.staging.json"))


# --- the local mock: keyless round trip ------------------------------------------------------

IDENTITY = "https://github.com/example/models/.github/workflows/release.yml@refs/heads/main"


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local Fulcio + CT log + Rekor on 127.0.0.1, stopped by PID afterwards."""
    if not MOCK.is_dir():
        pytest.skip(f"{MOCK} is absent")
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are needed for the sigstore mock")
    work = tmp_path_factory.mktemp("sigstore-mock") / "mock"
    shutil.copytree(MOCK, work, ignore=shutil.ignore_patterns("node_modules"))
    install = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--silent"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if install.returncode != 0:
        pytest.skip(f"npm install failed: {install.stderr[-400:]}")
    config = work / "trust_config.json"
    server = subprocess.Popen(
        ["node", "mock_server.js", str(config), "1", "0"],
        cwd=work,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("READY"), line
        yield config
    finally:
        server.terminate()
        server.wait(timeout=30)


def _token(identity: str = IDENTITY, issuer: str = ACTIONS) -> str:
    import jwt

    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": identity,
        "aud": "sigstore",
        "iat": now,
        "exp": now + 600,
        "repository": "example/models",
        "ref": "refs/heads/main",
        "workflow": "release",
        "sha": "0" * 40,
        "event_name": "push",
    }
    return jwt.encode(claims, key="local-test-only-not-a-secret-0000000000", algorithm="HS256")


@pytest.fixture(scope="module")
def keyless_package(mock: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from secpack.api.keyfiles import load_signing_key
    from secpack.api.seal import seal
    from secpack.api.signing import add_keyless_signature

    root = tmp_path_factory.mktemp("keyless")
    model = root / "m"
    model.mkdir()
    (model / "config.json").write_text('{"a": 1}')
    (model / "w.bin").write_bytes(bytes(range(256)) * 64)
    pkg = root / "m.spk"
    seal(
        str(model),
        str(pkg),
        encrypt=False,
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
    )
    report = add_keyless_signature(str(pkg), token=_token(), trust_config=str(mock))
    assert report.added and IDENTITY in (report.identity or "")
    return pkg


def _policy(
    mock: Path, *signers: SigstoreSigner, threshold: int = 1, keys: tuple[str, ...] = ()
) -> Any:
    from sigstore.models import ClientTrustConfig

    from secpack.sign.policy import Policy, policy_from_keys

    root = mock.parent / "trusted_root.json"
    if not root.exists():
        config = ClientTrustConfig.from_json(mock.read_text())
        root.write_text(config.trusted_root._inner.to_json())
    key_map = policy_from_keys([(k, (KEYS / k).read_bytes()) for k in keys]).keys if keys else {}
    return Policy(
        keys=key_map, sigstore=signers, trusted_root=str(root), threshold=threshold, rollback=False
    )


def test_keyless_round_trip(mock: Path, keyless_package: Path) -> None:
    from secpack.api.verify import verify

    report = verify(str(keyless_package), _policy(mock, SigstoreSigner(IDENTITY, ACTIONS)))
    assert [s.alg for s in report.signers] == ["sigstore"]
    assert IDENTITY in (report.signers[0].identity or "")
    # GitHub claims can be required too.
    strict = SigstoreSigner(IDENTITY, ACTIONS, repository="example/models", ref="refs/heads/main")
    verify(str(keyless_package), _policy(mock, strict))


@pytest.mark.parametrize(
    "signer",
    [
        SigstoreSigner(IDENTITY.replace("example", "evil"), ACTIONS),
        SigstoreSigner(IDENTITY, "https://accounts.google.com"),
        SigstoreSigner(IDENTITY, ACTIONS, repository="evil/models"),
    ],
    ids=["wrong-identity", "wrong-issuer", "wrong-repository"],
)
def test_other_identities_are_refused(
    mock: Path, keyless_package: Path, signer: SigstoreSigner
) -> None:
    from secpack.api.verify import verify

    with pytest.raises(SecpackError) as err:
        verify(str(keyless_package), _policy(mock, signer))
    assert err.value.code == "sig.untrusted"


def test_production_root_refuses_a_mock_signed_package(keyless_package: Path) -> None:
    from secpack.api.verify import verify
    from secpack.sign.policy import Policy

    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent")
    production = Policy(
        keys={},
        sigstore=(SigstoreSigner(IDENTITY, ACTIONS),),
        trusted_root=str(DATA / "trusted_root.production.json"),
        rollback=False,
    )
    with pytest.raises(SecpackError) as err:
        verify(str(keyless_package), production)
    assert err.value.code == "sig.untrusted"


def test_flipped_byte_is_refused(mock: Path, keyless_package: Path, tmp_path: Path) -> None:
    from secpack.api.verify import verify

    policy = _policy(mock, SigstoreSigner(IDENTITY, ACTIONS))
    data = bytearray(keyless_package.read_bytes())
    for offset in (40, len(data) // 2):
        bad = tmp_path / f"bad-{offset}.spk"
        flipped = bytearray(data)
        flipped[offset] ^= 0x01
        bad.write_bytes(bytes(flipped))
        with pytest.raises(SecpackError):
            verify(str(bad), policy)


def test_bundle_transplanted_onto_another_package_is_refused(
    mock: Path, keyless_package: Path, tmp_path: Path
) -> None:
    """verify_dsse does not check the statement's subject: secpack does."""
    from secpack.api.seal import seal
    from secpack.api.verify import verify
    from secpack.format.limits import DEFAULT_LIMITS
    from secpack.format.sections import SignatureEntry
    from secpack.package import assemble
    from secpack.package.reader import read_header
    from secpack.transport.spkfile import FileSource

    with FileSource(str(keyless_package)) as src:
        bundle = next(
            e for e in read_header(src, DEFAULT_LIMITS).signatures if e.type == "sigstore-bundle"
        )
    other_model = tmp_path / "other"
    other_model.mkdir()
    (other_model / "x.bin").write_bytes(b"different")
    other = tmp_path / "other.spk"
    seal(str(other_model), str(other), encrypt=False, name="m")
    with FileSource(str(other)) as src:
        header = read_header(src, DEFAULT_LIMITS)
    data = other.read_bytes()[: header.layout.sigs_off] + assemble.signature_tail(
        [SignatureEntry(bundle.type, bundle.data)]
    )
    other.write_bytes(data)
    with pytest.raises(SecpackError) as err:
        verify(str(other), _policy(mock, SigstoreSigner(IDENTITY, ACTIONS)))
    assert err.value.code == "integrity"


def test_two_of_three_mixes_keys_and_keyless(
    mock: Path, keyless_package: Path, tmp_path: Path
) -> None:
    from secpack.api.verify import verify

    keyless = SigstoreSigner(IDENTITY, ACTIONS)
    two_of_three = _policy(
        mock, keyless, threshold=2, keys=("signing-ed25519.key.pub", "signing-p256.key.pub")
    )
    report = verify(str(keyless_package), two_of_three)
    assert sorted(s.alg for s in report.signers) == ["ed25519", "sigstore"]
    one_key_only = dataclasses.replace(two_of_three, sigstore=(SigstoreSigner(IDENTITY, "x"),))
    with pytest.raises(SecpackError) as err:
        verify(str(keyless_package), one_key_only)
    assert err.value.code == "sig.threshold"


def test_signatures_listing_and_unsign(mock: Path, keyless_package: Path, tmp_path: Path) -> None:
    from secpack.api.signing import list_signatures, remove_signature

    policy = _policy(mock, SigstoreSigner(IDENTITY, ACTIONS), keys=("signing-ed25519.key.pub",))
    listing = list_signatures(str(keyless_package), policy)
    assert [(s.type, s.trusted) for s in listing] == [
        ("cose-sign1", True),
        ("sigstore-bundle", True),
    ]
    assert listing[0].signed_at is not None and listing[1].signed_at is not None
    copy = tmp_path / "copy.spk"
    kid = listing[1].key_id
    assert kid is not None
    assert remove_signature(str(keyless_package), kid.hex()[:16], str(copy)) == 1
    assert [s.type for s in list_signatures(str(copy))] == ["cose-sign1"]
    prefix = keyless_package.read_bytes()
    assert copy.read_bytes()[:100] == prefix[:100]
    with pytest.raises(SecpackError) as err:
        remove_signature(str(copy), "00000000", str(tmp_path / "again.spk"))
    assert err.value.code == "sig.unknown"


@pytest.mark.parametrize("signatures", ["two", "none", "empty"])
def test_an_envelope_without_exactly_one_signature_is_malformed_and_removable(
    mock: Path, keyless_package: Path, tmp_path: Path, signatures: str
) -> None:
    # sigstore refuses such an envelope only when it is first used: this was an
    # escaping InvalidEnvelope (`internal`) in verify, and unsign --malformed kept it.
    from helpers import fails, ok

    from secpack.api.verify import verify
    from secpack.format.limits import DEFAULT_LIMITS
    from secpack.format.sections import SignatureEntry
    from secpack.package import assemble
    from secpack.package.reader import read_header
    from secpack.transport.spkfile import FileSource

    with FileSource(str(keyless_package)) as src:
        header = read_header(src, DEFAULT_LIMITS)
    entries = list(header.signatures)
    doc = json.loads(entries[1].data)
    one = doc["dsseEnvelope"]["signatures"]
    doc["dsseEnvelope"]["signatures"] = {
        "two": one * 2,
        "none": [],
        "empty": [{**one[0], "sig": ""}],
    }[signatures]
    entries[1] = SignatureEntry(entries[1].type, json.dumps(doc).encode())
    bad = tmp_path / "bad.spk"
    body = keyless_package.read_bytes()[: header.layout.sigs_off]
    bad.write_bytes(body + assemble.signature_tail(entries))
    policy = _policy(mock, SigstoreSigner(IDENTITY, ACTIONS))
    with pytest.raises(SecpackError) as err:
        verify(str(bad), policy)
    assert err.value.code == "sig.malformed"
    listed = ok("signatures", bad, "--json").json()["signatures"]
    assert [s["alg"] for s in listed] == ["ed25519", "malformed"], listed
    ok("unsign", bad, "--malformed", "-q")
    assert [s["type"] for s in ok("signatures", bad, "--json").json()["signatures"]] == [
        "cose-sign1"
    ]
    fails("sig.untrusted", "verify", bad, "--trust", KEYS / "untrusted-ed25519.key.pub")


def test_ci_sign_prints_one_line(mock: Path, keyless_package: Path, tmp_path: Path) -> None:
    from helpers import run_cli

    pkg = tmp_path / "ci.spk"
    shutil.copyfile(keyless_package, pkg)
    res = run_cli(
        "ci",
        "sign",
        pkg,
        "--trust-config",
        mock,
        env={"SIGSTORE_ID_TOKEN": _token(), "GITHUB_RUN_ID": "4242"},
    )
    assert res.returncode == 0, str(res)
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and "run 4242" in lines[0] and IDENTITY in lines[0]
    assert Path(f"{pkg}.sigstore.json").is_file()
    assert (
        hashlib.sha256(pkg.read_bytes()).digest()
        != hashlib.sha256(keyless_package.read_bytes()).digest()
    )


def test_ci_sign_can_leave_the_bundle_out(
    mock: Path, keyless_package: Path, tmp_path: Path
) -> None:
    """The bundle is written by default; --no-export-bundle leaves it out and still
    signs the package."""
    from helpers import run_cli

    pkg = tmp_path / "ci.spk"
    shutil.copyfile(keyless_package, pkg)
    env = {"SIGSTORE_ID_TOKEN": _token(), "GITHUB_RUN_ID": "5"}
    res = run_cli("ci", "sign", pkg, "--trust-config", mock, "--no-export-bundle", env=env)
    assert res.returncode == 0, str(res)
    assert not Path(f"{pkg}.sigstore.json").exists()
    assert pkg.read_bytes() != keyless_package.read_bytes()


def test_ci_sign_json_and_a_missing_package_before_any_token(
    mock: Path, keyless_package: Path, tmp_path: Path
) -> None:
    from helpers import run_cli

    pkg = tmp_path / "ci.spk"
    shutil.copyfile(keyless_package, pkg)
    env = {"SIGSTORE_ID_TOKEN": _token(), "GITHUB_RUN_ID": "77"}
    res = run_cli("ci", "sign", pkg, "--trust-config", mock, "--json", env=env)
    assert res.returncode == 0, str(res)
    report = json.loads(res.stdout)
    assert report["ok"] is True and IDENTITY in report["signer"] and report["run"] == "77"
    assert report["added"] is True and report["bundle"] == f"{pkg}.sigstore.json"
    # No package: that is the error, not the missing identity token.
    no_token = {"SIGSTORE_ID_TOKEN": "", "GITHUB_ACTIONS": ""}
    for args in (("--json",), ()):
        res = run_cli("ci", "sign", tmp_path / "absent.spk", *args, env=no_token)
        assert res.returncode != 0 and res.error_code == "input.missing", str(res)
    # Nor is a --trust-config that does not exist, or that sigstore refuses.
    res = run_cli("ci", "sign", pkg, "--trust-config", tmp_path / "absent.json", env=no_token)
    assert res.returncode != 0 and res.error_code == "input.missing", str(res)
    (tmp_path / "empty.json").write_text("{}")
    res = run_cli("ci", "sign", pkg, "--trust-config", tmp_path / "empty.json", env=no_token)
    assert res.returncode != 0 and res.error_code == "input.invalid", str(res)


def test_no_token_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from secpack.sign.keyless import identity_token

    monkeypatch.delenv("SIGSTORE_ID_TOKEN", raising=False)
    for var in ("GITHUB_ACTIONS", "ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SecpackError) as err:
        identity_token(None, interactive=False)
    assert err.value.code == "sigstore.token"


def test_the_keyless_signature_verifies_with_sigstores_own_cli(
    mock: Path, keyless_package: Path, tmp_path: Path
) -> None:
    """The recipe in docs/CI.md: the manifest cut out of the package with od, tail
    and head, and the exported bundle, checked by the `sigstore` CLI alone. Its
    statement's subject is the manifest's SHA-256; the manifest holds the digest
    of every stored byte."""
    import sys

    from secpack.api.signing import add_keyless_signature

    pkg = tmp_path / "m.spk"
    shutil.copyfile(keyless_package, pkg)
    bundle = add_keyless_signature(str(pkg), token=_token(), trust_config=str(mock)).bundle
    assert bundle
    (tmp_path / "m.spk.sigstore.json").write_bytes(bundle)
    cut = subprocess.run(
        [
            "sh",
            "-c",
            "M=$(od -An -tu1 -j12 -N4 m.spk | awk '{print $1*16777216+$2*65536+$3*256+$4}')"
            ' && tail -c +33 m.spk | head -c "$M" > m.manifest',
        ],
        cwd=tmp_path,
        check=True,
    )
    assert cut.returncode == 0
    from secpack.api.inspect import inspect

    digest = hashlib.sha256((tmp_path / "m.manifest").read_bytes()).hexdigest()
    assert inspect(str(pkg)).manifest_digest.hex() == digest

    def sigstore(identity: str, artifact: str = "m.manifest") -> subprocess.CompletedProcess[str]:
        cli = Path(sys.executable).with_name("sigstore")
        return subprocess.run(
            [str(cli), "--trust-config", str(mock), "verify", "identity", artifact,
             "--bundle", "m.spk.sigstore.json", "--cert-identity", identity,
             "--cert-oidc-issuer", ACTIONS],
            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    done = sigstore(IDENTITY)
    assert done.returncode == 0, done.stderr
    assert "OK: m.manifest" in done.stderr + done.stdout
    assert sigstore(IDENTITY + "x").returncode != 0
    (tmp_path / "other").write_bytes((tmp_path / "m.manifest").read_bytes() + b"\0")
    assert sigstore(IDENTITY, "other").returncode != 0
