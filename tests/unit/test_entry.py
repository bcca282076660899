"""The console script's first frame (secpack.entry)."""

from __future__ import annotations

import pytest

import secpack.cli
from secpack import entry


@pytest.mark.parametrize(("given", "seen"), [(None, "1"), ("4", "4")])
def test_the_cli_keeps_openblas_to_one_thread_unless_told(
    monkeypatch: pytest.MonkeyPatch, given: str | None, seen: str
) -> None:
    if given is None:
        monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", given)
    got: list[str | None] = []

    def fake_main() -> None:
        import os

        got.append(os.environ.get("OPENBLAS_NUM_THREADS"))
        raise SystemExit(0)

    monkeypatch.setattr(secpack.cli, "main", fake_main)
    with pytest.raises(SystemExit):
        entry.main()
    assert got == [seen]
