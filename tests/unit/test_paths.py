"""Package path rules: what may be written, and what collides."""

from __future__ import annotations

import dataclasses
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from secpack.errors import SchemaError
from secpack.format.contents import check_paths, parse_contents
from secpack.format.limits import DEFAULT_LIMITS
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
        # Names that merely contain a Windows device name are files there.
        "CONFIG.json",
        "console.txt",
        "nul_count.bin",
        "com10.txt",
        "lpt0",
        "COM0.bin",
        "auxiliary/aux_loss.bin",
        "sub/CON_/x",
        "xNUL.txt",
        " CON",  # Windows drops trailing spaces only
        "com\u2074",  # superscript four: not a port digit
        # Beside C1, Latin-1 is ordinary text.
        "no\u00a0break.txt",
        "caf\u00e9.json",
        "\u00ff.bin",
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


_DEVICES = ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"] + [
    f"{port}{digit}" for port in ("COM", "LPT") for digit in "123456789\u00b9\u00b2\u00b3"
]


def _mixed(name: str) -> str:
    return "".join(c.lower() if i % 2 else c for i, c in enumerate(name))


# (path, the element refused), {} standing for the device name.
_SPELLINGS = [
    ("{}", "{}"),
    ("{}.txt", "{}.txt"),
    ("{}.tar.gz", "{}.tar.gz"),
    ("{} .json", "{} .json"),  # Windows drops the spaces before the dot
    ("sub/{}", "{}"),
    ("{}/config.json", "{}"),  # as a directory element
    ("a/{}.bin/b", "{}.bin"),
]


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("case", [str.upper, str.lower, str.title, _mixed])
@pytest.mark.parametrize(("path", "element"), _SPELLINGS)
def test_windows_device_names_are_refused(
    device: str, case: Callable[[str], str], path: str, element: str
) -> None:
    name = case(device)
    assert path_problem(path.format(name), 4096) == (
        f"path element {element.format(name)!r} is a reserved device name on Windows"
    )


@pytest.mark.parametrize("path", ["CON ", "nul.", "sub/aux  /x"])
def test_device_names_with_a_trailing_space_or_dot_are_refused_too(path: str) -> None:
    assert path_problem(path, 4096) == "path element ends with a space or a dot"


@pytest.mark.parametrize("ch", ["\x00", "\x1b", "\x7f", "\x80", "\x85", "\x9b", "\x9f"])
def test_control_characters_are_refused_c0_and_c1_alike(ch: str) -> None:
    assert path_problem(f"sub/a{ch}b.txt", 4096) == f"control character U+{ord(ch):04X} in path"


def _contents(path: str) -> dict[str, object]:
    file = {"path": path, "size": 1, "mode": 0o644, "format": "raw", "segments": [0, 1]}
    return {"files": [file], "tensors": []}


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("NUL.txt", "path element 'NUL.txt' is a reserved device name on Windows"),
        ("sub/com1/x.json", "path element 'com1' is a reserved device name on Windows"),
        ("a\x85b", "control character U+0085 in path"),
        ("\x9b31mred", "control character U+009B in path"),
    ],
)
def test_readers_refuse_such_contents(path: str, why: str) -> None:
    with pytest.raises(SchemaError) as err:
        parse_contents(_contents(path), [1], DEFAULT_LIMITS)
    assert err.value.code == "schema.invalid"
    assert err.value.detail == f"contents.files[0].path {path!r}: {why}"


def test_readers_accept_names_that_merely_contain_a_device_name() -> None:
    for path in ("CONFIG.json", "console.txt", "nul_count.bin", "com10.txt", "lpt0"):
        assert parse_contents(_contents(path), [1], DEFAULT_LIMITS).files[0].path == path


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
    # were 260 MB; the check keeps little more than the paths themselves.
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


def test_many_short_deep_paths_are_checked_near_their_own_size() -> None:
    # 20 000 files, each at the bottom of a chain of its own 64 deep: 2.6 MB of
    # paths. A node per directory (1.26 million of them) took 152 MiB here,
    # and at the format's 100 000 files a package of 106 KB made 1.2 GB.
    paths = [f"c{i:05}/" + "d/" * 62 + "f" for i in range(20_000)]
    tracemalloc.start()
    try:
        dirs = check_paths(paths)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dirs == 20_000 * 63
    assert peak < 16 << 20, peak


@pytest.mark.parametrize(
    ("paths", "dirs"),
    [
        ([], 0),
        (["a"], 0),
        (["a/b/x", "a/b/y", "a/c/z", "ab/q"], 4),  # a, a/b, a/c, ab
        (["a-b/y", "a/x", "a/z", "a.b/c/d"], 4),  # "-" and "." sort before "/"
        # Two directories where case matters, as open creates them.
        (["x/A/b", "x/a/c"], 3),
        # Keys that decompose to more elements (U+2100 is "a/c" in NFKD) count as
        # written.
        (["\u2100/b", "x/y"], 2),
    ],
)
def test_the_directories_paths_make_are_counted_once(paths: list[str], dirs: int) -> None:
    assert check_paths(paths) == dirs


def test_open_refuses_to_create_more_directories_than_max_dirs(tmp_path: Path) -> None:
    """Counted by name as written (case apart), over everything open writes; the
    loader, which creates none, reads the package under the same policy."""
    from helpers import EXAMPLE_KEYS, seal_example

    import secpack
    from secpack.api.extract import extract
    from secpack.sign.policy import policy_from_keys

    root = tmp_path / "m"
    for k, top in enumerate(("Ab", "aB", "ab")):
        (root / top / "d").mkdir(parents=True)
        (root / top / "d" / f"f{k}").write_text(top)
    pkg = tmp_path / "p.spk"
    seal_example(root, pkg, encrypt=False)
    trusted = policy_from_keys([("k", (EXAMPLE_KEYS / "signing-ed25519.key.pub").read_bytes())])
    tight = dataclasses.replace(trusted, limits=dataclasses.replace(DEFAULT_LIMITS, max_dirs=5))
    with pytest.raises(SchemaError) as err:
        extract(str(pkg), str(tmp_path / "out"), identities=[], policy=tight)
    assert err.value.code == "schema.invalid"
    assert err.value.detail.startswith("6 directories, more than 5")
    assert not (tmp_path / "out").exists()
    with secpack.open_package(pkg, policy=tight) as p:
        assert p.read_file("files", "aB/d/f1") == b"aB"
    exact = dataclasses.replace(trusted, limits=dataclasses.replace(DEFAULT_LIMITS, max_dirs=6))
    extract(str(pkg), str(tmp_path / "out"), identities=[], policy=exact)
    assert (tmp_path / "out" / "Ab" / "d" / "f0").read_text() == "Ab"


def test_seal_refuses_input_of_more_directories_than_readers_take() -> None:
    from secpack.errors import InputError
    from secpack.package.plan import InputFile
    from secpack.transport.inputs import refuse_collisions

    files = [InputFile(f"{k}/a/b/c", 1, 0o644) for k in range(3)]
    refuse_collisions(files, limits=dataclasses.replace(DEFAULT_LIMITS, max_dirs=9))
    with pytest.raises(InputError) as err:
        refuse_collisions(files, limits=dataclasses.replace(DEFAULT_LIMITS, max_dirs=8))
    assert err.value.code == "input.invalid"
    assert "9 directories" in err.value.detail
