"""Fixtures shared by the end-to-end tests: throwaway keys made with
``secpack keygen``, a model directory, and a package sealed from it.

Session-scoped fixtures hand out paths that tests must treat as read-only;
a test that changes a package works on its own copy. Every test gets its own
rollback-protection state directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# `import helpers` must work whatever import mode pytest uses for this directory.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from helpers import KeyPair, KeyRing, build_model, ok


@pytest.fixture(autouse=True)
def _isolated_state(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Rollback-protection state (versions seen per package and signer) goes to a
    fresh directory per test, never the user's own, in this process and in every
    `secpack` subprocess (helpers.clean_env copies the environment)."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("SECPACK_STATE_DIR", str(state))
    monkeypatch.delenv("SECPACK_POLICY", raising=False)
    return state


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
