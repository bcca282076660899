"""Fixtures shared by the end-to-end tests: throwaway keys made with
``secpack keygen``, a model directory, and a package sealed from it.

Session-scoped fixtures hand out paths that tests must treat as read-only;
a test that changes a package works on its own copy. Every test gets its own
rollback-protection state directory.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# `import helpers` must work whatever import mode pytest uses for this directory.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from helpers import KeyPair, KeyRing, build_model, ok


@pytest.fixture(scope="session", autouse=True)
def _session_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The same for what module and session fixtures seal and open before any
    test's own directory is set (their audit records went to the user's log)."""
    state = tmp_path_factory.mktemp("session-state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SECPACK_STATE_DIR", str(state))
        patch.delenv("SECPACK_POLICY", raising=False)
        yield state


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Rollback-protection state (versions seen per package and signer) and the
    audit log go to a fresh directory per test, never the user's own, in this
    process and in every `secpack` subprocess (helpers.clean_env copies the
    environment). A patcher of its own: a test's ``monkeypatch.undo()`` (which
    takes back the test's patches) must not take this back with them."""
    state = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SECPACK_STATE_DIR", str(state))
        patch.delenv("SECPACK_POLICY", raising=False)
        yield state


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    return KeyRing(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def release_key(keys: KeyRing) -> KeyPair:
    """The trusted Ed25519 signing key."""
    return keys.signing("release")


@pytest.fixture(scope="session")
def server_key(keys: KeyRing) -> KeyPair:
    """The X25519 recipient that may open every component."""
    return keys.recipient("server")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory (see helpers.build_model); read-only for tests."""
    return build_model(tmp_path_factory.mktemp("model") / "m")


@pytest.fixture(scope="session")
def sealed(
    tmp_path_factory: pytest.TempPathFactory,
    model_dir: Path,
    release_key: KeyPair,
    server_key: KeyPair,
) -> Path:
    """``model_dir`` sealed with the CLI: signed by release_key, encrypted to server_key."""
    out = tmp_path_factory.mktemp("sealed") / "model.spk"
    ok(
        "seal",
        model_dir,
        "-o",
        out,
        "--sign-key",
        release_key.private,
        "--recipient",
        server_key.public,
        "--quiet",
        subprocess_=True,
    )
    return out
