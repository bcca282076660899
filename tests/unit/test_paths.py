"""Package path rules: what may be written, and what collides."""

from __future__ import annotations

import pytest

from secpack.format.paths import collision_key, path_problem


@pytest.mark.parametrize(
    "path",
    ["config.json", "sub/deep/x.bin", ".gitattributes", "1_Pooling/config.json", "模型/权重.bin"],
)
def test_accepted(path: str) -> None:
    assert path_problem(path, 4096) is None


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd",
        "../up",
        "a/../../up",
        "a//b",
        "./a",
        "a/.",
        "a\\b",
        "C:evil",
        "nul\x00byte",
        "tab\there",
        "e\u0301",
        "x" * 256,
        "a/" + "y" * 300,
        "trailing.",
        "space ",
        "\udcff",
        "a" * 5000,
    ],
)
def test_refused(path: str) -> None:
    assert path_problem(path, 4096) is not None


def test_collisions() -> None:
    assert collision_key("Config.JSON") == collision_key("config.json")
    assert collision_key("\u00c5") == collision_key("A\u030a".lower())
    assert collision_key("straße") == collision_key("STRASSE")
    assert collision_key("a/b") != collision_key("a/c")
