"""Several secpack processes at once.

- 8 loaders open and load the same package together, sharing one rollback state
  directory: every array comes back exact and the state file, rewritten under its
  ``fcntl`` lock, ends up valid JSON that lost no update.
- 8 ``open`` commands write 8 outputs, and 8 ``seal`` commands write 8 packages,
  at the same time: every result is complete and correct.
- 8 writers of the *same* destination: one wins, the others fail cleanly, nothing
  is clobbered and no temporary is left.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    SECPACK,
    KeyPair,
    assert_same_tree,
    build_model,
    clean_env,
    fails,
    model_tensors,
)

N = 8
MID_SCALE = 1 << 15  # 2.75 MiB of tensors: decoding takes long enough to overlap


@dataclass(frozen=True)
class Proc:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"{' '.join(self.argv)} -> {self.returncode}\n{self.stdout}\n{self.stderr}"


def run_together(
    argvs: Sequence[Sequence[str | os.PathLike[str]]],
    env: Mapping[str, str],
    barrier: bool = False,
    timeout: float = 180,
) -> list[Proc]:
    """Start every command at once and wait for all of them. With ``barrier``, each
    child first prints one line and waits for one on stdin, so that all of them are
    past their start-up before any is let go."""
    procs = []
    for argv in argvs:
        procs.append(
            subprocess.Popen(
                [os.fspath(a) for a in argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=dict(env),
            )
        )
    try:
        if barrier:
            for p in procs:
                assert p.stdout is not None
                line = p.stdout.readline()
                assert line == "ready\n", p.communicate(timeout=timeout)
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
        results = []
        for argv, p in zip(argvs, procs, strict=True):
            out, err = p.communicate(timeout=timeout)
            results.append(Proc(tuple(map(os.fspath, argv)), p.returncode, out, err))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def secpack_cmd(*args: str | os.PathLike[str]) -> list[str | os.PathLike[str]]:
    return [SECPACK, *args]


def succeeded(res: Proc) -> bool:
    assert "Traceback" not in res.stderr, str(res)
    return res.returncode == 0


def policy(*trusted: KeyPair) -> Any:
    from secpack.sign.policy import policy_from_keys

    return policy_from_keys([(str(k.public), k.public.read_bytes()) for k in trusted])


def kid_hex(key: KeyPair) -> str:
    from secpack.recipes.keys import key_id, load_public_pem

    return key_id(load_public_pem(key.public.read_bytes(), str(key.public))).hex()


def library_seal(
    source: Path, output: Path, release_key: KeyPair, server_key: KeyPair, **kwargs: Any
) -> Path:
    from secpack.api.keyfiles import load_recipient, load_signing_key
    from secpack.api.seal import seal

    seal(
        str(source),
        str(output),
        sign_keys=[load_signing_key(str(release_key.private))],
        recipients=[(None, load_recipient(str(server_key.public)))],
        **kwargs,
    )
    return output


def state_doc(state_dir: Path) -> dict[str, Any]:
    """The rollback state file: valid JSON of the documented shape, and nothing but
    the file, its lock and the audit log in the directory (no temporary left over).
    The audit log, written by the same concurrent processes, must verify."""
    from secpack.audit.log import verify_log

    names = sorted(os.listdir(state_dir))
    assert names == sorted(
        {"versions.json", "versions.lock"} | ({"audit.jsonl", "audit.jsonl.head"} & set(names))
    ), names
    if "audit.jsonl" in names:
        assert verify_log(str(state_dir / "audit.jsonl")) is None
    doc = json.loads((state_dir / "versions.json").read_text())
    assert doc["format"] == 1 and isinstance(doc["packages"], dict), doc
    packages: dict[str, Any] = doc["packages"]
    return packages


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("concurrency")


@pytest.fixture(scope="module")
def mid_model(work: Path) -> Path:
    return build_model(work / "mid", scale=MID_SCALE)


@pytest.fixture(scope="module")
def mid_package(work: Path, mid_model: Path, release_key: KeyPair, server_key: KeyPair) -> Path:
    return library_seal(mid_model, work / "mid.spk", release_key, server_key, name="mid")


# --- many loaders, one package, one state file ---------------------------------------------

LOADER = r"""
import hashlib, json, random, sys, warnings
import secpack
import secpack.api.loader

package, identity, trust, extras, seed = sys.argv[1:]
extras = json.loads(extras)
warnings.simplefilter("ignore")  # BF16 without ml_dtypes comes back as uint16: fine here
print("ready", flush=True)
sys.stdin.readline()
with secpack.open_package(package, identity=identity, trust=[trust]) as pkg:
    arrays = pkg.state_dict()
    result = {
        "tensors": {
            name: [list(a.shape), hashlib.sha256(a.tobytes()).hexdigest()]
            for name, a in arrays.items()
        },
        "config": hashlib.sha256(pkg.read_file("config", "config.json")).hexdigest(),
        "others": [],
    }
random.Random(int(seed)).shuffle(extras)
for path in extras:
    with secpack.open_package(path, identity=identity, trust=[trust]) as pkg:
        pkg.state_dict()
        result["others"].append([pkg.name, pkg.version])
print(json.dumps(result), flush=True)
"""


def test_eight_loaders_share_a_package_and_a_state_file(
    work: Path,
    tmp_path: Path,
    model_dir: Path,
    mid_model: Path,
    mid_package: Path,
    release_key: KeyPair,
    server_key: KeyPair,
) -> None:
    """Eight processes load the same package at the same moment, then eight small
    packages (each a new name in the state file) in a different order each, all
    with one SECPACK_STATE_DIR: 72 locked read-modify-writes of one file."""
    tiny = [
        library_seal(
            model_dir,
            tmp_path / f"tiny-{i}.spk",
            release_key,
            server_key,
            name=f"tiny-{i}",
            version=i + 1,
        )
        for i in range(N)
    ]
    state = tmp_path / "shared-state"
    argvs = [
        [
            sys.executable,
            "-c",
            LOADER,
            mid_package,
            server_key.private,
            release_key.public,
            json.dumps([str(p) for p in tiny]),
            str(seed),
        ]
        for seed in range(N)
    ]
    results = run_together(argvs, clean_env({"SECPACK_STATE_DIR": str(state)}), barrier=True)

    want = {
        name: [list(t.shape), hashlib.sha256(t.data).hexdigest()]
        for name, t in model_tensors(MID_SCALE).items()
    }
    config = hashlib.sha256((mid_model / "config.json").read_bytes()).hexdigest()
    for res in results:
        assert succeeded(res), str(res)
        got = json.loads(res.stdout.strip().splitlines()[-1])
        assert got["tensors"] == want
        assert got["config"] == config
        assert sorted(map(tuple, got["others"])) == [(f"tiny-{i}", i + 1) for i in range(N)]

    kid = kid_hex(release_key)
    expected = {"mid": {kid: 1}} | {f"tiny-{i}": {kid: i + 1} for i in range(N)}
    assert state_doc(state) == expected


STATE_WRITER = r"""
import sys
from secpack.transport.state import VersionState

state, me, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
for k in range(rounds):
    # A name of its own (lost if another writer's stale copy wins) and one shared name.
    VersionState(state).check(f"p{me}-{k}", [bytes([me]) * 32], k + 1, record=True, allow_downgrade=False)
    VersionState(state).check("shared", [bytes([me]) * 32], k + 1, record=True, allow_downgrade=False)
"""


def test_state_file_loses_no_update_under_contention(tmp_path: Path) -> None:
    """Eight processes record 25 new names and 25 versions of one shared name each:
    every one of the 400 updates must survive (a missing entry is a lost update)."""
    rounds = 25
    state = tmp_path / "state"
    argvs = [
        [sys.executable, "-c", STATE_WRITER, str(state), str(me), str(rounds)] for me in range(N)
    ]
    for res in run_together(argvs, clean_env(), barrier=True):
        assert succeeded(res), str(res)
    packages = state_doc(state)
    expected: dict[str, dict[str, int]] = {
        f"p{me}-{k}": {(bytes([me]) * 32).hex(): k + 1} for me in range(N) for k in range(rounds)
    }
    expected["shared"] = {(bytes([me]) * 32).hex(): rounds for me in range(N)}
    assert packages == expected


# --- many writers, distinct destinations ---------------------------------------------------


def test_eight_opens_to_eight_outputs(
    tmp_path: Path,
    mid_model: Path,
    mid_package: Path,
    release_key: KeyPair,
    server_key: KeyPair,
) -> None:
    state = tmp_path / "shared-state"
    outs = [tmp_path / "out" / f"o{i}" for i in range(N)]
    outs[0].parent.mkdir()
    argvs = [
        secpack_cmd(
            "open",
            mid_package,
            "-o",
            out,
            "--identity",
            server_key.private,
            "--trust",
            release_key.public,
            "--quiet",
        )
        for out in outs
    ]
    for res in run_together(argvs, clean_env({"SECPACK_STATE_DIR": str(state)})):
        assert succeeded(res), str(res)
    assert sorted(os.listdir(outs[0].parent)) == sorted(o.name for o in outs)
    for out in outs:
        assert_same_tree(mid_model, out)
    assert state_doc(state) == {"mid": {kid_hex(release_key): 1}}


def test_eight_seals_to_eight_outputs(
    tmp_path: Path,
    mid_model: Path,
    release_key: KeyPair,
    server_key: KeyPair,
) -> None:
    """Four encrypted and four sign-only packages, all sealed at once; each verifies
    and opens to the model byte for byte, and the sign-only ones (reproducible with
    SOURCE_DATE_EPOCH) are byte-identical to each other."""
    from secpack.api.extract import extract
    from secpack.api.keyfiles import load_identity
    from secpack.api.verify import verify

    outdir = tmp_path / "packages"
    outdir.mkdir()
    pkgs = [outdir / f"p{i}.spk" for i in range(N)]
    argvs = []
    for i, pkg in enumerate(pkgs):
        mode = ["--recipient", server_key.public] if i % 2 else ["--no-encrypt"]
        argvs.append(
            secpack_cmd(
                "seal", mid_model, "-o", pkg, "--sign-key", release_key.private, *mode, "--quiet"
            )
        )
    env = clean_env({"SOURCE_DATE_EPOCH": "1700000000"})
    for res in run_together(argvs, env):
        assert succeeded(res), str(res)
    assert sorted(os.listdir(outdir)) == sorted(p.name for p in pkgs)

    trusted = policy(release_key)
    identity = load_identity(str(server_key.private))
    for pkg in pkgs:
        verify(str(pkg), trusted)
        out = tmp_path / f"{pkg.stem}-opened"
        extract(str(pkg), str(out), identities=[identity], policy=trusted)
        assert_same_tree(mid_model, out)
    plain = {pkgs[i].read_bytes() for i in range(0, N, 2)}
    assert len(plain) == 1


# --- many writers, one destination ---------------------------------------------------------


def seal_argv(
    source: Path, dest: Path, release_key: KeyPair, server_key: KeyPair, *extra: str
) -> list[str | os.PathLike[str]]:
    return secpack_cmd(
        "seal",
        source,
        "-o",
        dest,
        "--sign-key",
        release_key.private,
        "--recipient",
        server_key.public,
        "--quiet",
        *extra,
    )


@pytest.mark.parametrize("force", [False, True], ids=["no-force", "force"])
def test_eight_seals_to_one_output(
    tmp_path: Path,
    mid_model: Path,
    release_key: KeyPair,
    server_key: KeyPair,
    force: bool,
) -> None:
    """Without --force exactly one seal wins and the others fail with output.exists;
    with it every seal succeeds and the last rename wins. Either way the result is
    one complete package and no temporary of any writer is left."""
    from secpack.api.extract import extract
    from secpack.api.keyfiles import load_identity
    from secpack.api.verify import verify

    outdir = tmp_path / "one"
    outdir.mkdir()
    dest = outdir / "model.spk"
    extra = ("--force",) if force else ()
    argvs = [seal_argv(mid_model, dest, release_key, server_key, *extra) for _ in range(N)]
    results = run_together(argvs, clean_env())
    winners = [res for res in results if succeeded(res)]
    if force:
        assert len(winners) == N, [str(r) for r in results]
    else:
        assert len(winners) == 1, [str(r) for r in results]
        for res in results:
            if res.returncode != 0:
                assert res.stderr.startswith("error[output.exists]"), str(res)
    assert os.listdir(outdir) == [dest.name]
    verify(str(dest), policy(release_key))
    out = tmp_path / "opened"
    extract(
        str(dest),
        str(out),
        identities=[load_identity(str(server_key.private))],
        policy=policy(release_key),
    )
    assert_same_tree(mid_model, out)


def test_eight_opens_to_one_output(
    tmp_path: Path,
    mid_model: Path,
    mid_package: Path,
    release_key: KeyPair,
    server_key: KeyPair,
) -> None:
    outdir = tmp_path / "one"
    outdir.mkdir()
    dest = outdir / "model"
    argv = secpack_cmd(
        "open",
        mid_package,
        "-o",
        dest,
        "--identity",
        server_key.private,
        "--trust",
        release_key.public,
        "--quiet",
    )
    results = run_together([argv] * N, clean_env({"SECPACK_STATE_DIR": str(tmp_path / "st")}))
    winners = [res for res in results if succeeded(res)]
    assert len(winners) == 1, [str(r) for r in results]
    for res in results:
        if res.returncode != 0:
            assert res.stderr.startswith("error[output.exists]"), str(res)
    assert os.listdir(outdir) == [dest.name]
    assert_same_tree(mid_model, dest)


def test_losing_the_race_for_an_output_directory_is_output_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secpack.errors import OutputError
    from secpack.transport import atomic

    dest = tmp_path / "model"
    target = atomic.AtomicDirectory(str(dest)).__enter__()
    (Path(target.tmp) / "mine.txt").write_text("mine")
    real_rename = os.rename

    def rival_renames_first(src: str, dst: str) -> None:
        # A second `secpack open` to the same output completes at this very moment.
        os.mkdir(dst)
        (Path(dst) / "rival.txt").write_text("rival")
        real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rival_renames_first)
    with pytest.raises(OutputError) as err:
        target.commit()
    monkeypatch.undo()
    target.abort()
    assert os.listdir(tmp_path) == ["model"]  # the rival's output, untouched
    assert os.listdir(dest) == ["rival.txt"]
    assert err.value.code == "output.exists", err.value


# --- a state file that is JSON but not an object -------------------------------------------


@pytest.mark.parametrize("content", ["[]", "null", "1", '"x"'])
def test_state_file_that_is_not_an_object_fails_closed(
    content: str, sealed: Path, release_key: KeyPair, _isolated_state: Path
) -> None:
    (_isolated_state / "versions.json").write_text(content)
    fails("state.corrupt", "verify", sealed, "--trust", release_key.public)


def _ed25519_keys(where: Path, n: int) -> list[Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    paths = []
    for i in range(n):
        key = ed25519.Ed25519PrivateKey.generate()
        path = where / f"signer{i}.key"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        paths.append(path)
    return paths


def test_signers_at_once_lose_no_signature_and_keep_the_mode(
    tmp_path: Path, mid_package: Path
) -> None:
    """In-place sign locks the package from its read to its replacement, and reads
    the replacement if another signer got there first: with six at once, every
    signature is there at the end. A private (0600) package stays private."""
    pkg = tmp_path / "p.spk"
    pkg.write_bytes(mid_package.read_bytes())
    pkg.chmod(0o600)
    before = run_together([secpack_cmd("signatures", pkg, "--json")], clean_env())[0]
    count = len(json.loads(before.stdout)["signatures"])
    keys = _ed25519_keys(tmp_path, 6)
    results = run_together(
        [secpack_cmd("sign", pkg, "--key", k) for k in keys], clean_env(), barrier=False
    )
    assert all(succeeded(r) for r in results)
    after = run_together([secpack_cmd("signatures", pkg, "--json")], clean_env())[0]
    assert len(json.loads(after.stdout)["signatures"]) == count + 6
    assert pkg.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".p.spk")) == []
