from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_state_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Rollback-protection state goes to a per-test directory, never the user's own."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("SECPACK_STATE_DIR", str(state))
    monkeypatch.delenv("SECPACK_POLICY", raising=False)
    return state
