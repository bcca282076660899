"""Package path rules: what may be written, and what collides."""

from __future__ import annotations

import tracemalloc

import pytest

from secpack.errors import SchemaError
from secpack.format.contents import check_paths
from secpack.format.paths import collision_key, path_problem


@pytest.mark.parametrize(
    "path",
    [
        "config.json",
        "sub/deep/x.bin",
        ".gitattributes",
        "1_Pooling/config.json",
        "模型/权重.bin",
        "a/" * 63 + "x",  # 64 elements
    ],
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
        "a/" * 64 + "x",  # 65 elements
        "a/" * 1500 + "x",
    ],
)
def test_refused(path: str) -> None:
    assert path_problem(path, 4096) is not None


def test_collisions() -> None:
    assert collision_key("Config.JSON") == collision_key("config.json")
    assert collision_key("\u00c5") == collision_key("A\u030a".lower())
    assert collision_key("straße") == collision_key("STRASSE")
    assert collision_key("a/b") != collision_key("a/c")


def _refusal(paths: list[str]) -> str | None:
    try:
        check_paths(paths)
    except SchemaError as exc:
        assert exc.code == "schema.invalid"
        return exc.detail
    return None


def test_file_and_directory_clash_in_either_order() -> None:
    assert _refusal(["a/b/c", "a/b"]) == "'a/b' is both a file and a directory"
    assert _refusal(["a/b", "a/b/c"]) == "'a/b' is both a file and a directory"
    assert _refusal(["A/b/c", "a/B"]) == "'a/B' is both a file and a directory"
    assert "collide" in (_refusal(["x/Config.json", "x/config.json"]) or "")
    assert _refusal(["a/b/c", "a/b/d", "a/bc", "b"]) is None


def test_deep_paths_are_checked_in_linear_memory() -> None:
    # 2000 paths of 64 elements and 4 KB each: as prefix strings, their directories
    # were 260 MB; as (parent, element) nodes they are a few bytes per element.
    paths = [f"{i:04}/" + "/".join([f"{i:04}" + "e" * 58] * 62) + "/x" for i in range(2000)]
    assert all(len(p) > 3900 and path_problem(p, 4096) is None for p in paths)
    tracemalloc.start()
    try:
        check_paths(paths)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 48 << 20
    assert _refusal([*paths, paths[7].rsplit("/", 3)[0]]) is not None
